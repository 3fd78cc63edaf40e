#!/usr/bin/env bash
# Makes sure a RabbitMQ broker runs on this machine for the AMQP integration tests
# (KRAKEN_AMQP_URL defaults to amqp://127.0.0.1:5672/%2f):
#   - installs Debian's rabbitmq-server when it is missing,
#   - starts it detached when it is not running (or starts its application when the node
#     is up but the application was stopped, e.g. by an interrupted restart test),
#   - waits, at most KRAKEN_RABBITMQ_WAIT seconds (default 60), until it accepts AMQP
#     connections.
# Idempotent: on a machine where the broker already runs it only checks it.
set -euo pipefail

wait_seconds="${KRAKEN_RABBITMQ_WAIT:-60}"

fail() {
  echo "rabbitmq.sh: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    fail "need root (or sudo) to run: $*"
  fi
}

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq.sh: installing rabbitmq-server from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq || fail "apt-get update failed"
  as_root apt-get install -y -qq rabbitmq-server >/dev/null || fail "apt-get install rabbitmq-server failed"
fi

node_up() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
app_running() { as_root rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }
accepting() { as_root rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }

if app_running && accepting; then
  echo "rabbitmq.sh: RabbitMQ is running"
  exit 0
fi

if node_up; then
  echo "rabbitmq.sh: the node is up but its application is stopped; starting it"
  as_root rabbitmqctl -q start_app >/dev/null 2>&1 || true
else
  echo "rabbitmq.sh: starting rabbitmq-server"
  as_root rabbitmq-server -detached || fail "rabbitmq-server -detached failed"
fi

deadline=$((SECONDS + wait_seconds))
until node_up && app_running && accepting; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail "RabbitMQ did not come up within ${wait_seconds} s (see /var/log/rabbitmq/)"
  fi
  sleep 1
done
echo "rabbitmq.sh: RabbitMQ is up after $((SECONDS)) s"
