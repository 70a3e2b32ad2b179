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
  .venv/bin/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import transfer, tensorflow, keras" || { echo "install failed" >&2; exit 1; }
  touch "$stamp"
fi
