#!/usr/bin/env bash
# Set up everything on a fresh machine: .venv with torch (CPU wheel 2.13.0 unless a torch is already there),
# the JS bundle, the package in editable mode with what the notebooks need (JupyterLab, Notebook 7, sidecar).
# With --test also the test extras and Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1
SUDO=""; [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null && SUDO="sudo"

if [[ $WITH_TEST == 1 && ! -x /usr/bin/chromium ]]; then
  echo "== installing Debian's chromium (browser tests)"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Never let pip resolve an unpinned torch: that pulls a multi-GB CUDA build.  Pin the CPU wheel on disk.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi

echo "== building the front end (esbuild)"
# npm ci again whenever the lock file changed since the last install (a stale node_modules breaks the build)
(cd js && lock=$(sha256sum package-lock.json | cut -d' ' -f1) \
  && { [[ "$(cat node_modules/.lw-lock 2>/dev/null)" == "$lock" ]] \
       || { npm ci --no-audit --no-fund --loglevel=error && echo "$lock" > node_modules/.lw-lock; }; } \
  && npm run --silent build)

echo "== installing landscape_widgets"
if [[ $WITH_TEST == 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[notebook,test]"
else
  .venv/bin/python -m pip install -q -e ".[notebook]"
fi
.venv/bin/python -c "import torch, landscape_widgets as lw; print('landscape_widgets', lw.__version__, 'torch', torch.__version__)"
