#!/usr/bin/env bash
# Builds identity-bench and runs every scenario for 2 seconds with cheap argon2 parameters,
# against SQLite and against Postgres (the server DATABASE_URL names, else the local one).
# Fails when the tool fails or any call fails with a code its scenario does not expect.
# Benchmarks are a command (see BENCHMARKS.md), not a test: no number is checked here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --locked --workspace --bins
bench=${CARGO_TARGET_DIR:-target}/debug/identity-bench

smoke() { # backend, extra flags...
    local backend=$1
    shift
    echo "== identity-bench smoke: $backend"
    "$bench" --backend "$backend" --duration 2 --warmup 0 --users 20 \
        --concurrency 4 --flood-concurrency 4 --storm-concurrency 64 --connections 2 \
        --memory-kib 64 --iterations 1 --parallelism 1 --members 2000 --fail-on-error "$@"
}

smoke sqlite
if [[ -n ${DATABASE_URL:-} ]]; then
    case $DATABASE_URL in
    postgres://* | postgresql://*) smoke postgres --postgres-url "$DATABASE_URL" ;;
    *) echo "DATABASE_URL names no Postgres server: the Postgres smoke run is skipped" ;;
    esac
elif command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    smoke postgres --postgres-url postgres://postgres@127.0.0.1:5432/postgres
else
    echo "no Postgres server: the Postgres smoke run is skipped"
fi
