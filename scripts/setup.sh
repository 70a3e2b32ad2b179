# Sourced by run.sh and test.sh: create .venv if missing and install the project into it.
# Reinstalls only when pyproject.toml changed since the last install.
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
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
