#!/usr/bin/env bash
# Set up .venv, then the main job: fetch the data, train a classifier, predict on a
# validation photo. Arguments go to `transfer fetch-data` (e.g. --archive train.zip offline).
# TRAIN_ARGS overrides the training arguments (default: --base inception).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
T=.venv/bin/transfer
has() { "$T" "$1" --help >/dev/null 2>&1; }

echo "== transfer fetch-data $*"
"$T" fetch-data "$@"

read -r -a train_args <<< "${TRAIN_ARGS:---base inception}"
if has train; then
  echo "== transfer train ${train_args[*]}"
  "$T" train "${train_args[@]}"
else
  echo "== skipping 'transfer train': not implemented yet"
fi

if has predict; then
  photo=$(find data/validate -type f | sort | head -n 1)
  echo "== transfer predict $photo"
  "$T" predict "$photo"
else
  echo "== skipping 'transfer predict': not implemented yet"
fi
