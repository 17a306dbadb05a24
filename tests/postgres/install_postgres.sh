#!/usr/bin/env bash
# PostgreSQL from Debian for the tests that need a real server (tests/postgres_server.py starts a throwaway
# cluster of its own per test session; nothing uses the package's default cluster). Idempotent: does nothing when
# a server binary is there. Installing needs root (CI and the dev machines are root).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "the Postgres tests need a PostgreSQL server: run \`sudo apt-get install -y postgresql\` once" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/postgres
