#!/usr/bin/env bash
# Chromium from Debian for the browser test (tests/ui): Playwright drives this binary and never downloads one.
# Idempotent: does nothing when /usr/bin/chromium is there. Installing needs root (CI and the dev machines are root).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests/ui needs Chromium at /usr/bin/chromium: run \`sudo apt-get install -y chromium\` once" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
/usr/bin/chromium --version 2>/dev/null
