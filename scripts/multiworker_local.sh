#!/usr/bin/env bash
# Multi-worker training on this machine: N workers on 127.0.0.1, each with its TF_CONFIG.
#   scripts/multiworker_local.sh 2 -- train --base mobilenet --alpha 0.25 \
#       --output models/two-workers --distribute multi-worker
# (set-up as scripts/run.sh does it; see transfer/launch.py)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >&2
exec .venv/bin/python -m transfer.launch "$@"
