#!/usr/bin/env bash
# Serve the app as `make run` does: on 127.0.0.1 unless LEGEND_ADDRESS says otherwise, with no
# file watcher, refusing to listen beyond loopback without login mode (LEGEND_AUTH_FILE) unless
# LEGEND_ALLOW_OPEN=1. The checks live in legend_core/serve.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m legend_core.app.serve "$@"
