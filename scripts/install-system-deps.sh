#!/usr/bin/env bash
# Installs the system programs the test suite drives for real: a PostgreSQL server, headless Chromium,
# and a docker-compose client (to validate the compose file; no Docker engine).
# Idempotent and quick when both are present. Needs root (CI runs as root) and Debian's apt.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# A compose client validates docker-compose.yml offline (tests/test_deployment_files.py); no engine needed.
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; } || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${need[*]}; install them (Debian: apt-get install ${need[*]})" >&2
  echo "install-system-deps: tests that need them are skipped outside CI" >&2
  exit 0
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
