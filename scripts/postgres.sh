#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the storage tests.
#   scripts/postgres.sh start DIR   -> prints the SQLAlchemy URL of an empty database
#   scripts/postgres.sh stop DIR
# Installs Debian's postgresql package when it is missing (needs root or sudo).
set -euo pipefail
action=$1
dir=$2
port=${LEGEND_TEST_PG_PORT:-55432}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

case "$action" in
  start)
    if [ -z "$(bin_dir)" ]; then
      as_root apt-get update -qq >&2
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    bin=$(bin_dir)
    mkdir -p "$dir"
    run=()
    # The server refuses to run as root: run it as the postgres user.
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run=(runuser -u postgres --); fi
    "${run[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE legend_test" >/dev/null
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/legend_test"
    ;;
  stop)
    bin=$(bin_dir)
    run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
esac
