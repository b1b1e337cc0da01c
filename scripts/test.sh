#!/usr/bin/env bash
# Set up everything (with test extras and chromium) and run the whole test suite: JS unit tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if node -e "process.exit(require('./js/package.json').scripts?.test ? 0 : 1)"; then
  echo "== JS unit tests"
  (cd js && npm test --silent)
fi
# Two pytest processes: Playwright's sync API keeps an asyncio loop running in the main thread for as long as its
# session-wide browser is open, and the widgets (rightly) treat a running loop as "inside a kernel".
if [[ $# -gt 0 ]]; then  # a chosen subset: one process
  .venv/bin/python -m pytest -q -ra "$@"
  exit
fi
echo "== pytest: library, widgets, notebooks"
.venv/bin/python -m pytest -q -ra --ignore=tests/browser
echo "== pytest: real browser (JupyterLab and offline pages in Debian's chromium)"
.venv/bin/python -m pytest -q -ra tests/browser
