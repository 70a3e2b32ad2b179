#!/usr/bin/env bash
# Set up (a .venv with the project and its dev extra) and run the checks: ruff, then pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k datasets
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check transfer tests scripts
echo "== pytest"
.venv/bin/python -m pytest --durations=20 "$@"
