"""The devices a model package can be scored on, and the onnxruntime execution providers each one asks for, in order
of preference (without importing onnxruntime)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DEVICES", "PROVIDERS", "Device"]

Device = Literal["cpu", "cuda", "tensorrt"]
DEVICES: tuple[str, ...] = get_args(Device)
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
