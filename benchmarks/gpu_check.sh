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
"$PY" benchmarks/training_throughput.py --device cuda --batch 128 --batches 20
"$PY" benchmarks/training_throughput.py --device cpu --threads 16 --batch 32 --batches 4
