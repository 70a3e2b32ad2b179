#!/usr/bin/env bash
# Set up .venv, then the main job, in the current folder: fetch the data, train a classifier,
# evaluate it, predict and explain a validation photo of the first two classes. Arguments go to
# `transfer fetch-data` (e.g. --archive train.zip offline, --archive ~/flowers for your own
# class folders, --data-dir elsewhere); the other steps use the same data folder.
# TRAIN_ARGS overrides the training arguments (default: --base inception).
set -euo pipefail
here=$PWD  # data/ and models/ are made here; relative paths are relative to here
project=$(cd "$(dirname "$0")/.." && pwd)

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "usage: [TRAIN_ARGS=\"--base mobilenet --alpha 0.25\"] ./scripts/run.sh [fetch-data options]"
    echo "(transfer fetch-data --help lists them, once .venv is set up)"
    exit 0
  fi
done

cd "$project"
source scripts/setup.sh
cd "$here"
T="$project/.venv/bin/transfer"
PY="$project/.venv/bin/python"

# the data folder fetch-data writes, read by every later step
data=data
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --data-dir) data="${args[$((i + 1))]:-data}" ;;
    --data-dir=*) data="${args[$i]#--data-dir=}" ;;
  esac
done
# the shell leaves the ~ of --data-dir=~/x as it is; transfer reads it as the home folder
home_of() { "$PY" -c 'import os, sys; print(os.path.expanduser(sys.argv[1]))' "$1"; }
[[ $data == "~"* ]] && data=$(home_of "$data")

echo "== transfer fetch-data $*"
"$T" fetch-data "$@"

read -r -a train_args <<< "${TRAIN_ARGS:---base inception}"
# the bundle training writes: --output, else the latest link of --models-dir (models)
bundle=models/latest
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[$i]}" in
    --output) bundle="${train_args[$((i + 1))]:-}" ;;
    --output=*) bundle="${train_args[$i]#--output=}" ;;
    --models-dir) [[ $bundle == */latest ]] && bundle="${train_args[$((i + 1))]:-models}/latest" ;;
    --models-dir=*) [[ $bundle == */latest ]] && bundle="${train_args[$i]#--models-dir=}/latest" ;;
  esac
done
[[ $bundle == "~"* ]] && bundle=$(home_of "$bundle")
echo "== transfer train --data-dir $data ${train_args[*]}"
status=0
"$T" train --data-dir "$data" "${train_args[@]}" || status=$?
if [[ $status -ne 0 ]]; then
  # offline, the first thing to fail is the download of the base's ImageNet weights
  if [[ $status -eq 1 ]] && "$PY" - "${train_args[@]}" <<'EOF'
import sys
from transfer import bases
args, base, alpha = sys.argv[1:], "inception", 1.0
for i, arg in enumerate(args):
    name, _, value = arg.partition("=")
    value = value or (args[i + 1] if i + 1 < len(args) else "")
    if name == "--base":
        base = value
    elif name == "--alpha":
        alpha = float(value)
    elif name == "--weights" and value != "imagenet":
        sys.exit(1)
spec = bases.get(base)
sys.exit(0 if spec.pretrained and bases.cached_weights(spec, alpha) is None else 1)
EOF
  then
    echo "offline? Put the base's weights into \$KERAS_HOME/models, or train a base whose weights" >&2
    echo "are there, e.g.: TRAIN_ARGS=\"--base mobilenet --alpha 0.25\" ./scripts/run.sh --archive train.zip" >&2
  fi
  exit $status
fi

echo "== transfer evaluate --model $bundle"
"$T" evaluate --model "$bundle" --force

# a photo of each of the first two classes (in name order) of the validation folder
photos=()
while IFS= read -r folder; do
  # sed reads the whole list: "head -n 1" closed the pipe early, sort died of SIGPIPE, and
  # pipefail ended the script after evaluate (exit 141, no message)
  photo=$(find "$folder" -maxdepth 1 -type f ! -name '.*' | LC_ALL=C sort | sed -n 1p)
  [[ -n "$photo" ]] && photos+=("$photo")
  [[ ${#photos[@]} -eq 2 ]] && break
done < <(find "$data/validate" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | LC_ALL=C sort)
if [[ ${#photos[@]} -eq 0 ]]; then
  echo "error: no photo in $data/validate/<class>/ to predict and explain" >&2
  exit 1
fi
echo "== transfer predict --model $bundle ${photos[*]}"
"$T" predict --model "$bundle" "${photos[@]}"

# the heatmap goes into the bundle, not next to the photo: the data folder holds photos only
last="${photos[${#photos[@]}-1]}"
echo "== transfer explain --model $bundle $last --output $bundle/gradcam.png"
"$T" explain --model "$bundle" "$last" --output "$bundle/gradcam.png" --force
