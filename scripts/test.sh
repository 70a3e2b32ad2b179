#!/usr/bin/env bash
# Set up (a .venv with the project and its dev extra) and run the checks: ruff, then pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k datasets
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# A browser for the page tests: a system Chromium when there is one, else Playwright's own
# download (which needs its download host; .ci/run installs Debian's chromium instead).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && [[ -z ${TRANSFER_CHROMIUM:-} && ! -x /usr/bin/chromium && ! -f .venv/.playwright-chromium ]]; then
  echo "== python -m playwright install chromium"
  if .venv/bin/python -m playwright install chromium >/dev/null 2>&1; then
    touch .venv/.playwright-chromium
  else
    echo "   Playwright's browser download is unreachable; the browser tests need a system" \
         "Chromium (apt-get install chromium)"
  fi
fi
echo "== ruff"
.venv/bin/ruff check transfer tests scripts
echo "== pytest"
# Two worker processes, each taking whole test files (a file's fixtures are built once): one
# process kept only about 1.1 of CI's 2 cores busy. TRANSFER_TEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -n "${TRANSFER_TEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
