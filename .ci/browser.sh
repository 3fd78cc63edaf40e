#!/usr/bin/env bash
# Installs what the browser end-to-end test of the web UI needs: Debian's chromium and
# chromium-driver. Does nothing when both are there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium and chromedriver present"
  exit 0
fi
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
chromium --version 2>/dev/null || true
chromedriver --version
