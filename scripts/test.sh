#!/usr/bin/env bash
# Set up everything (with test extras and chromium) and run the whole test suite: JS unit tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
if node -e "process.exit(require('./js/package.json').scripts?.test ? 0 : 1)"; then
  echo "== JS unit tests"
  (cd js && npm test --silent)
fi
echo "== pytest"
.venv/bin/python -m pytest -q -ra "$@"
