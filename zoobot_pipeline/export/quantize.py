"""Reduced-precision variants of an exported graph, each with its accuracy measured against fp32.

- ``int8``: onnxruntime static quantization in QDQ format (per-channel int8 weights, uint8 activations), calibrated
  on preprocessed cutouts of real galaxies; the x86 kernels use AVX-512 VNNI where the CPU has it.
- ``fp16``: onnxruntime's float16 converter with float32 inputs and outputs kept, for GPUs.

Accuracy is the difference of the variant's deterministic predictions (dropout off) from fp32's on held-out images:
mean and maximum absolute difference of expected vote fractions (tree), class probabilities or regression values.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from zoobot_pipeline.schemas import Schema
from zoobot_pipeline.stats import expected_fractions

__all__ = ["VARIANTS", "compare_outputs", "quantize_int8", "to_fp16"]

VARIANTS = ("int8", "fp16")


def _feeds(images: np.ndarray, n_features: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        yield {"images": batch, "dropout_mask": np.ones((len(batch), 1, n_features), dtype=np.float32)}


def quantize_int8(fp32_path: Path, out_path: Path, calibration_images: np.ndarray, n_features: int,
                  batch_size: int = 16) -> None:
    """Write a statically quantized int8 (QDQ) copy of ``fp32_path``, calibrated on ``calibration_images``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = _feeds(calibration_images, n_features, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"CalibTensorRangeSymmetric": False})


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write a float16 copy of ``fp32_path`` whose inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save_model(convert_float_to_float16(onnx.load_model(str(fp32_path)), keep_io_types=True), str(out_path))


def _comparable(outputs: np.ndarray, task: str, schema: Schema | None) -> np.ndarray:
    """What users read: expected vote fractions for a tree, probabilities or values otherwise."""
    outputs = outputs[:, 0, :].astype(np.float64)
    return expected_fractions(outputs, schema) if task == "dirichlet" and schema is not None else outputs


def compare_outputs(reference: np.ndarray, variant: np.ndarray, task: str, schema: Schema | None,
                    inputs: str) -> dict[str, Any]:
    """Accuracy record of a variant: mean and max absolute difference from fp32 on deterministic outputs
    ``(B, 1, n_outputs)``; ``inputs`` says what the images were."""
    difference = np.abs(_comparable(variant, task, schema) - _comparable(reference, task, schema))
    quantity = {"dirichlet": "expected vote fraction", "classification": "class probability",
                "regression": "value"}[task]
    return {"quantity": quantity, "mean_abs_diff": float(difference.mean()), "max_abs_diff": float(difference.max()),
            "n_galaxies": int(len(reference)), "inputs": inputs}
