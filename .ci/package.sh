#!/usr/bin/env bash
# kraken-core as users get it from crates.io: package it, unpack the archive outside the
# workspace and build it with no features and with each feature alone, then its docs with
# warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo package -p kraken-core --allow-dirty --no-verify
version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="kraken-core"))')
root=$(pwd)
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "target/package/kraken-core-$version.crate" -C "$unpacked"
manifest="$unpacked/kraken-core-$version/Cargo.toml"
# One target dir for all the builds, kept between runs, apart from the workspace's.
export CARGO_TARGET_DIR="$root/target/package-check"
for features in "" amqp docker api discovery test-util; do
  echo "-- kraken-core package, features: ${features:-none}"
  RUSTFLAGS="-D warnings" cargo build --locked --manifest-path "$manifest" --no-default-features ${features:+--features "$features"}
done
unset CARGO_TARGET_DIR

echo "-- kraken-core docs"
RUSTDOCFLAGS="-D warnings" cargo doc -p kraken-core --all-features --no-deps
