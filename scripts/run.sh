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
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
if ! "$T" train "${train_args[@]}" 2> >(tee "$errors" >&2); then
  sleep 0.2  # let tee finish
  if grep -q "could not be downloaded" "$errors"; then
    echo "offline? Put the base's weights into \$KERAS_HOME/models, or train a base whose weights" >&2
    echo "are there, e.g.: TRAIN_ARGS=\"--base mobilenet --alpha 0.25\" ./scripts/run.sh --archive train.zip" >&2
  fi
  exit 1
fi

echo "== transfer evaluate"
"$T" evaluate --force

cat=$(find data/validate/cats -type f | sort | head -n 1)
dog=$(find data/validate/dogs -type f | sort | head -n 1)
echo "== transfer predict $cat $dog"
"$T" predict "$cat" "$dog"

# the heatmap goes into the bundle, not next to the photo: data/ holds photos only
echo "== transfer explain $dog --output models/latest/gradcam.png"
"$T" explain "$dog" --output models/latest/gradcam.png --force
