#!/usr/bin/env bash
# GPU host checks: CUDA paths of the PyTorch backend, then GPU training/inference timings.
# On the project's lent GPU machine (no network, its own python3 with torch): carry wheels of the few pure-Python
# packages it lacks in .whl/ (see benchmarks/README.md); elsewhere run it inside the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
"$PY" benchmarks/cuda_check.py
# Training rows: NCHW and channels_last fp32, then --precision bf16 and fp16 (autocast + gradient scaler) on CUDA
"$PY" benchmarks/training_throughput.py --device cuda --batch 128 --batches 20
"$PY" benchmarks/training_throughput.py --device cpu --threads 16 --batch 32 --batches 4
# Scoring: onnxruntime on the GPU (CUDA, then TensorRT, with fp16) when onnxruntime-gpu is installed; otherwise the
# message users get, then CPU onnxruntime on 16 threads next to torch eager on the GPU. RELEASE: a release directory
# made beforehand (the GPU machine has no GalSim), e.g. `zoobot-pipeline simulate --out .bench-release --galaxies 400
# --tiles 2 --tile-size 1024`, carried with the run.
RELEASE=${RELEASE:-.bench-release}
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  "$PY" benchmarks/scoring_throughput.py --release "$RELEASE" --device cuda --batch 64 --epochs 3
  "$PY" benchmarks/scoring_throughput.py --release "$RELEASE" --device tensorrt --batch 64 --epochs 3 || true
else
  "$PY" -c "from zoobot_pipeline.runtime.session import check_device; check_device('cuda')" || true
  "$PY" benchmarks/scoring_throughput.py --release "$RELEASE" --device cpu --torch-device cuda --threads 16 \
    --batch 32 --epochs 3
fi
