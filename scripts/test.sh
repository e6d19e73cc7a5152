#!/usr/bin/env bash
# The whole test suite: everything on SQLite, then the storage tests on a real PostgreSQL
# server started on loopback for the run (skipped, with a note, where none can be had).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"

pg_dir=$(mktemp -d /tmp/legend-pg.XXXXXX)
trap 'scripts/postgres.sh stop "$pg_dir"' EXIT
if url=$(scripts/postgres.sh start "$pg_dir"); then
  echo "storage tests on PostgreSQL ($url)"
  LEGEND_TEST_PG_URL=$url python -m pytest -q tests/test_store.py tests/test_exports.py\
    tests/test_concurrency.py tests/test_review_agreement.py tests/test_cache_integrity.py\
    tests/test_block_cache.py tests/test_pair_keys.py tests/test_margins_layout.py\
    tests/test_reviewed_pairs.py
else
  echo "PostgreSQL could not be started here: storage tests ran on SQLite only" >&2
  [ -n "${CI:-}" ] && exit 1
fi
