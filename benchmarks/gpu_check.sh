#!/usr/bin/env bash
# GPU host checks, within 8 minutes: CUDA parity of the PyTorch backend, GPU training throughput, then scoring end to
# end from FITS with the model on the GPU and 1, 4 and 16 preprocessing threads (target: >= 5000 galaxies/s per GPU).
# Each step has its own time limit and the script goes on after a failed step; it exits non-zero if any step failed,
# and at once, with the reason, where no GPU is visible (it never hangs waiting for one).
#
# On the project's lent GPU machine (no network, its own python3 with torch): carry wheels of the few pure-Python
# packages it lacks in .whl/ and a small release in .bench-release/ (see benchmarks/README.md); elsewhere run it in the
# project's venv with PYTHON=.venv/bin/python and RELEASE=<a release made with `zoobot-pipeline simulate`>.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or failing); run it on a GPU host" >&2
  exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: could not install the carried wheels" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY=${PYTHON:-python3}
RELEASE=${RELEASE:-.bench-release}
export PYTHONUNBUFFERED=1
failed=()
step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, record a failure and go on
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s)"
  local start=$SECONDS
  if ! timeout --kill-after=10 "$limit" "$@"; then
    failed+=("$name")
    echo "=== $name FAILED after $((SECONDS - start)) s"
  else
    echo "=== $name done in $((SECONDS - start)) s"
  fi
}
step versions 60 "$PY" -c "import torch, timm, onnxruntime as o, numba; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'timm', timm.__version__, 'numba', numba.__version__, 'onnxruntime', o.__version__, \
o.get_available_providers())"
step cuda-parity 120 "$PY" benchmarks/cuda_check.py
step training-gpu 90 "$PY" benchmarks/training_throughput.py --device cuda --batch 128 --batches 10
if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  step onnxruntime-cuda 150 "$PY" benchmarks/scoring_throughput.py --release "$RELEASE" --device cuda --batch 64 \
    --epochs 1 --prep-workers 16
  step onnxruntime-tensorrt 150 "$PY" benchmarks/scoring_throughput.py --release "$RELEASE" --device tensorrt \
    --batch 64 --epochs 1 --prep-workers 16
else
  echo "=== onnxruntime has no CUDA provider here (what users see:)"
  "$PY" -c "from zoobot_pipeline.runtime.session import check_device; check_device('cuda')" 2>&1 | tail -1
fi
step end-to-end-gpu 240 "$PY" benchmarks/gpu_end_to_end.py --release "$RELEASE" --copies 25 --epochs 1 \
  --prep-workers 1,4,16 --batch 256 --precision fp16
if ((${#failed[@]})); then
  echo "gpu_check: failed steps: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_check: all steps passed"
