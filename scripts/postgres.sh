#!/usr/bin/env bash
# A private PostgreSQL for the registry tests: prints its URL on stdout and nothing else.
#
#   export LORAOPS_TEST_PG_URL="$(bash scripts/postgres.sh)"
#
# Idempotent: a cluster already running on the port is reused. Installs the Debian package when
# the binaries are missing and we are root. Where PostgreSQL cannot be had: in CI (CI=true) it
# fails (exit 1) with the reason, so the run fails; elsewhere it warns loudly on stderr, prints
# nothing and exits 0, and the PostgreSQL tests skip. The cluster is for tests only: loopback,
# trust auth, no fsync.
set -euo pipefail

PORT="${LORAOPS_PG_PORT:-54329}"
DATA="${LORAOPS_PG_DIR:-/tmp/loraops-pg}"
DB=loraops_test
URL="postgresql+psycopg://postgres@127.0.0.1:${PORT}/${DB}"
PG_ROOT="${LORAOPS_PG_ROOT:-/usr/lib/postgresql}"   # where Debian puts the server binaries

skip() {
    if [[ "${CI:-}" == "true" ]]; then
        printf '\n!!! scripts/postgres.sh: %s\n!!! CI=true: the PostgreSQL registry tests must run; failing.\n\n' "$1" >&2
        exit 1
    fi
    printf '\n!!! scripts/postgres.sh: %s\n!!! The PostgreSQL registry tests will be SKIPPED.\n\n' "$1" >&2
    exit 0
}
trap 'skip "a step failed unexpectedly (line $LINENO)"' ERR

bindir() {  # newest server install; Debian keeps it off PATH
    local d
    d="$(ls -d "${PG_ROOT}"/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; return; fi
    command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

BIN="$(bindir || true)"
if [[ -z "$BIN" ]]; then
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        skip "PostgreSQL is not installed and cannot be installed here (needs root and apt-get)"
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 \
        || skip "apt-get install postgresql failed"
    BIN="$(bindir || true)"
    [[ -n "$BIN" ]] || skip "postgresql installed but initdb not found"
fi

# initdb and postgres refuse to run as root: run them as the postgres user when we are root.
AS=()
if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DATA" postgres
    AS=(runuser -u postgres --)
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    mkdir -p "$DATA"
    if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$DATA"; fi
    chmod 700 "$DATA"
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        "${AS[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null \
            || skip "initdb failed"
    fi
    "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null \
        || skip "PostgreSQL did not start (see $DATA/server.log)"
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
if [[ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
    "${PSQL[@]}" -c "CREATE DATABASE $DB" >&2 || skip "could not create database $DB"
fi
echo "$URL"
