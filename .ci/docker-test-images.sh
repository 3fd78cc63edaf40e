#!/usr/bin/env bash
# Makes the base images the Docker runtime tests use, locally: no registry can be reached, so
# nothing is pulled. Each image is cached by its tag; pass an image name (busybox, python,
# node) to make only that one, or nothing for all three. Needs root for apt and debootstrap.
#
#   kraken-test/busybox:latest  FROM scratch + Debian's static busybox (sh, httpd, ...)
#   kraken-test/python:latest   a debootstrap'd bookworm root with python3, docker-imported
#   kraken-test/node:latest     a debootstrap'd bookworm root with nodejs, docker-imported
set -euo pipefail

SUITE="${KRAKEN_TEST_SUITE:-bookworm}"

log() { printf 'docker-test-images: %s\n' "$*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The first Debian mirror configured for apt (deb822 .sources files or one-line lists).
debian_mirror() {
    local m=""
    if [ -n "${KRAKEN_TEST_MIRROR:-}" ]; then
        echo "$KRAKEN_TEST_MIRROR"
        return
    fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        m=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [ -n "$m" ] && { echo "$m"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [ -n "$m" ] && { echo "$m"; return; }
    done
    echo "http://deb.debian.org/debian"
}

is_static() { file -L "$1" 2>/dev/null | grep -q 'statically linked'; }

make_busybox() {
    local tag=kraken-test/busybox:latest
    if have_image "$tag"; then log "$tag cached"; return; fi
    command -v file >/dev/null || apt_install file
    if [ ! -x /bin/busybox ] || ! is_static /bin/busybox; then
        log "installing busybox-static"
        apt_install busybox-static
    fi
    local ctx
    ctx=$(mktemp -d)
    cp /bin/busybox "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/etc", "/root"]
RUN ["/bin/busybox", "sh", "-c", "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group"]
ENV PATH=/bin
CMD ["/bin/sh"]
DOCKERFILE
    log "building $tag"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" --label io.kraken.test=true "$ctx" >/dev/null
    rm -rf "$ctx"
}

# make_rootfs TAG PACKAGE: debootstrap a minimal root with PACKAGE and import it as TAG.
make_rootfs() {
    local tag=$1 pkg=$2
    if have_image "$tag"; then log "$tag cached"; return; fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root mirror
    root=$(mktemp -d)
    mirror=$(debian_mirror)
    log "debootstrap $SUITE with $pkg from $mirror (a few minutes)"
    if ! debootstrap --variant=minbase --include="$pkg" "$SUITE" "$root" "$mirror" >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2
        rm -rf "$root" "$root.log"
        return 1
    fi
    # Keep the image small: package caches and lists are not needed to run.
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/usr/share/doc" "$root/usr/share/man"
    log "importing $tag"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
    rm -rf "$root" "$root.log"
}

main() {
    local want=("$@")
    [ ${#want[@]} -eq 0 ] && want=(busybox python node)
    for w in "${want[@]}"; do
        case "$w" in
            busybox) make_busybox ;;
            python) make_rootfs kraken-test/python:latest python3 ;;
            node) make_rootfs kraken-test/node:latest nodejs ;;
            *) log "unknown image $w (busybox, python, node)"; exit 2 ;;
        esac
    done
}

main "$@"
