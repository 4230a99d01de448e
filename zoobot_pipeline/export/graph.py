"""What a framework backend hands the exporter: an ONNX file on disk plus this description and a reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from zoobot_pipeline.data.preprocessing import PreprocessingConfig

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "ExportedGraph", "Reference", "Task"]

Task = Literal["dirichlet", "classification", "regression"]
INPUT_NAMES = ("images", "dropout_mask")
OUTPUT_NAMES = ("outputs", "features")
# (images (B, C, H, W), dropout masks (B, S, F)) -> (outputs (B, S, n_outputs), features (B, F)), all float32.
Reference = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ExportedGraph:
    """An exported model: its task and outputs, input preprocessing, head dropout, and the framework's own forward.

    ``reference`` runs the framework model on the same inputs as the ONNX graph (see :data:`Reference`), so the
    exporter can check onnxruntime against it.
    """

    task: Task
    output_names: tuple[str, ...]
    schema: dict[str, Any] | None
    preprocessing: PreprocessingConfig
    n_features: int
    dropout_rate: float
    architecture: str
    framework: dict[str, Any]
    reference: Reference
