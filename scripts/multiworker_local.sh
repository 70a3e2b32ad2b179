#!/usr/bin/env bash
# Multi-worker training on this machine: N workers on 127.0.0.1, each with its TF_CONFIG.
#   scripts/multiworker_local.sh 2 -- train --base mobilenet --alpha 0.25 \
#       --output models/two-workers --distribute multi-worker
# (set-up as scripts/run.sh does it, in the repository; the workers run in the folder this
# was started from, so relative paths are the caller's; see transfer/launch.py)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$repo" && source scripts/setup.sh >&2)
TRANSFER_LAUNCH_NAME="$0" exec "$repo/.venv/bin/python" -m transfer.launch "$@"
