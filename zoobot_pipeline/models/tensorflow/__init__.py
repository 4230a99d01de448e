"""TensorFlow backend (Keras 3 on TensorFlow): Keras encoders + the Dirichlet head, loss, safetensors checkpoints,
local training, finetuning, prediction and ONNX export (tf2onnx). The only part of the package that imports
tensorflow, keras or tf2onnx; it is reached through the registry (``get_backend("tensorflow")``)."""

import importlib.util
import os
import sys

# TensorFlow's C++ start-up chatter (CPU feature notes, oneDNN notices) on stderr is not for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow 2.21 and triton (which torch/torchvision load) each bundle LLVM: loading triton's extension after
# TensorFlow's segfaults the process, the other order works. A process may use both backends (e.g. the tests, or a
# TensorFlow pretrain then a torch one), so where triton is installed it is loaded first (0.3 s), unless TensorFlow is
# already loaded (a Ray Train TensorFlow worker imports it first): then triton must not be loaded at all.
if importlib.util.find_spec("triton") is not None and "tensorflow" not in sys.modules:
    import triton  # noqa: F401
