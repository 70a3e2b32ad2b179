# Sourced by run.sh and test.sh: create .venv if missing and install the project into it.
# Reinstalls only when pyproject.toml changed since the last install.
# transfer needs Python 3.11 or later, and TensorFlow 2.21 has wheels up to 3.13: the first of
# python3 and python3.13, 3.12, 3.11 that is one of those (or $PYTHON when set)
supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; }
if [[ -z ${PYTHON:-} ]]; then
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then
      PYTHON=$candidate; break
    fi
  done
fi
if [[ ! -x .venv/bin/python ]]; then
  if [[ -z ${PYTHON:-} ]]; then
    echo "error: transfer needs Python 3.11 to 3.13 (TensorFlow has no wheels for later ones);" \
         "found none (python3: $(python3 --version 2>/dev/null || echo "not installed"));" \
         "set PYTHON=/path/to/python3.x" >&2
    exit 1
  elif ! supported "$PYTHON"; then
    echo "error: PYTHON=$PYTHON is not Python 3.11 to 3.13 (transfer needs 3.11 or later," \
         "TensorFlow 2.21 has wheels up to 3.13)" >&2
    exit 1
  fi
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # a .venv made without pip (Debian without python3-venv stops half-way; uv makes none)
  if ! .venv/bin/python -m ensurepip --upgrade >/dev/null 2>&1; then
    echo "error: .venv has no pip and cannot get one (on Debian: apt-get install python3-venv," \
         "then delete .venv)" >&2
    exit 1
  fi
fi
stamp=.venv/.transfer-installed
if [[ ! -f $stamp ]] || [[ pyproject.toml -nt $stamp ]]; then
  echo "== installing transfer and its dependencies into .venv (TensorFlow is large: a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
  # PYTHONWARNINGS: no setuptools build warnings about the editable install
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".[dev,kaggle]" 2>&1 | grep -v "is ignored" || true
  # transfer.tf imports TensorFlow with its start-up log silenced
  if ! check=$(.venv/bin/python -c "import transfer.tf" 2>&1); then
    echo "$check" >&2; echo "install failed: transfer or TensorFlow does not import" >&2; exit 1
  fi
  touch "$stamp"
fi
