#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium (dashboard browser tests) and
# PostgreSQL (registry tests; scripts/postgres.sh starts it). Idempotent; needs root to install.
set -u
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "WARNING: cannot install ${missing[*]} (need root and apt-get); the tests that need them will SKIP" >&2
  exit 0
fi
echo "installing ${missing[*]} (Debian packages)..." >&2
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
  || echo "WARNING: apt-get install ${missing[*]} failed; the tests that need them will SKIP" >&2
