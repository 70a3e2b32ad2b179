#!/usr/bin/env bash
# Set up .venv, then the main job: fetch the data, train a classifier, evaluate it, predict
# and explain validation photos. Arguments go to `transfer fetch-data` (e.g. --archive
# train.zip offline). TRAIN_ARGS overrides the training arguments (default: --base inception).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
T=.venv/bin/transfer

echo "== transfer fetch-data $*"
"$T" fetch-data "$@"

read -r -a train_args <<< "${TRAIN_ARGS:---base inception}"
echo "== transfer train ${train_args[*]}"
"$T" train "${train_args[@]}"

echo "== transfer evaluate"
"$T" evaluate --force

cat=$(find data/validate/cats -type f | sort | head -n 1)
dog=$(find data/validate/dogs -type f | sort | head -n 1)
echo "== transfer predict $cat $dog"
"$T" predict "$cat" "$dog"

# the heatmap goes into the bundle, not next to the photo: data/ holds photos only
echo "== transfer explain $dog --output models/latest/gradcam.png"
"$T" explain "$dog" --output models/latest/gradcam.png --force
