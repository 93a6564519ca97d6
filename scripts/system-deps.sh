#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium (dashboard browser tests) and
# PostgreSQL (registry tests; scripts/postgres.sh starts it). Idempotent; needs root to install.
# When they cannot be installed: in CI (CI=true) exit 1 with the reason, so the run fails; elsewhere
# a loud warning on stderr and exit 0 (the tests that need them then skip).
set -u
PG_ROOT="${LORAOPS_PG_ROOT:-/usr/lib/postgresql}"   # where Debian puts the server binaries
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls "$PG_ROOT"/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

cannot() {
  if [ "${CI:-}" = "true" ]; then
    printf '\n!!! scripts/system-deps.sh: %s\n!!! CI=true: the tests that need %s must run; failing.\n\n' "$1" "${missing[*]}" >&2
    exit 1
  fi
  printf '\n!!! scripts/system-deps.sh: %s\n!!! The tests that need %s will be SKIPPED.\n\n' "$1" "${missing[*]}" >&2
  exit 0
}

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cannot "cannot install ${missing[*]} (needs root and apt-get)"
fi
echo "installing ${missing[*]} (Debian packages)..." >&2
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
  || cannot "apt-get install ${missing[*]} failed"
for p in "${missing[@]}"; do       # installed, but is it where the tests look?
  case $p in
    chromium) command -v chromium >/dev/null 2>&1 || cannot "chromium installed but not on PATH" ;;
    postgresql) ls "$PG_ROOT"/*/bin/initdb >/dev/null 2>&1 || cannot "postgresql installed but initdb not found" ;;
  esac
done
