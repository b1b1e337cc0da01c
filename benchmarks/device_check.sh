#!/usr/bin/env bash
# The GPU benchmarks (batched vs loop vs loss-landscapes, the Hessian benchmark, the widget latencies), as one
# command on a CUDA machine (at most 9.5 minutes of commands).  Needs the wheels a bare GPU image lacks in .whl/
# (git-ignored; copy it along with the checkout):
#   python3 -m pip download --no-deps -d .whl loss-landscapes==3.0.6 pyhessian==0.1
#   python3 -m pip download -d .whl anywidget ipywidgets tqdm scikit-learn threadpoolctl   # interactive.py's widgets
# then, from the checkout root:  bash benchmarks/device_check.sh
# Tables go to stdout and to $OUT (gpu.md, gpu-profile.txt, hessian.md, interactive*.md); paste the tables into
# benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
  echo "(no .whl/: loss-landscapes and PyHessian columns will say why they are missing)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# most important first: the batched-vs-loop table, then where each rule's time goes, then the Hessian timings (six
# minutes and a half at most), then what a widget user waits for after a slider move on CUDA (interactive.py: the
# three small models at 21x21, and the ResNet-20 on 10,000 images at 41x41)
timeout 250 python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu.md"
timeout 50 python3 benchmarks/gpu.py --profile 2>&1 | tee "$OUT/gpu-profile.txt"
timeout 90 python3 benchmarks/hessian.py --device cuda --rounds 3 --epochs 30 2>&1 | tee "$OUT/hessian.md"
timeout 90 python3 benchmarks/interactive.py --device cuda --threads 16 --resolution 21 --models mlp,cnn,gpt2 2>&1 \
  | tee "$OUT/interactive.md"
timeout 90 python3 benchmarks/interactive.py --device cuda --threads 16 --resolution 41 --models resnet20 \
  --resnet-images 10000 2>&1 | tee "$OUT/interactive-resnet20.md"
