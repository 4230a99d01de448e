"""TensorFlow training-state checkpoints, to resume a run: the model, the optimizers, the epoch and the history.

The layout is :mod:`zoobot_pipeline.models.training_state`'s: ``optimizer.safetensors`` holds every variable of every
optimizer (iteration count, learning rate when it is not a schedule, first and second moments) under
``"<optimizer index>/<variable index>"``; ``training_state.json`` the progress and the plateau rule's counters
(``plateau``: ``{"best", "bad"}``). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
from safetensors.numpy import load_file, save_file

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.config import TrainingConfig
from zoobot_pipeline.models.tensorflow.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.tensorflow.model import TFModel
from zoobot_pipeline.models.training_state import (
    MODEL_DIR,
    OPTIMIZER_FILE,
    STATE_FILE,
    TrainingProgress,
    copy_checkpoint,
)

__all__ = ["MODEL_DIR", "export_model", "load_training_state", "save_training_state"]


def save_training_state(directory: Path, model: TFModel, optimizers: list[keras.optimizers.Optimizer],
                        progress: TrainingProgress, plateau: dict[str, float], preprocessing: PreprocessingConfig,
                        training_config: TrainingConfig, metrics: dict[str, Any]) -> Path:
    """Write everything needed to resume into ``directory`` (which may exist and be empty); ``plateau`` is the plateau
    rule's ``{"best", "bad"}``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, directory / MODEL_DIR, preprocessing, training_config, metrics)
    arrays = {f"{k}/{i}": np.array(keras.ops.convert_to_numpy(variable), order="C")  # 0-d stays 0-d
              for k, optimizer in enumerate(optimizers) for i, variable in enumerate(optimizer.variables)}
    save_file(arrays, str(directory / OPTIMIZER_FILE))
    (directory / STATE_FILE).write_text(json.dumps({"progress": asdict(progress), "plateau": plateau}, indent=1)
                                        + "\n")
    return directory


def load_training_state(directory: Path, model: TFModel, optimizers: list[keras.optimizers.Optimizer]
                        ) -> tuple[TrainingProgress, dict[str, float]]:
    """Restore model weights and optimizer variables in place from ``directory``; returns the saved progress and
    plateau state. A state that does not fit this run's model or optimizers is an input error naming the file."""
    saved = load_checkpoint(directory / MODEL_DIR)
    if saved.config != model.config or saved.output_names != model.output_names:
        raise ZoobotPipelineError(f"{directory / MODEL_DIR}: a training state of another model "
                                  f"({saved.config.architecture}, {len(saved.output_names)} outputs); this run trains "
                                  f"{model.config.architecture} with {len(model.output_names)} outputs")
    model.net.set_weights(saved.net.get_weights())
    arrays = load_file(str(directory / OPTIMIZER_FILE))
    expected = {f"{k}/{i}": tuple(v.shape) for k, opt in enumerate(optimizers) for i, v in enumerate(opt.variables)}
    found = {key: tuple(array.shape) for key, array in arrays.items()}
    if found != expected:
        raise ZoobotPipelineError(f"{directory / OPTIMIZER_FILE}: optimizer state of another run ({len(found)} "
                                  f"variables; this run's optimizers have {len(expected)}, or their shapes differ)")
    for k, optimizer in enumerate(optimizers):
        for i, variable in enumerate(optimizer.variables):
            variable.assign(arrays[f"{k}/{i}"])
    state = json.loads((directory / STATE_FILE).read_text())
    return TrainingProgress(**state["progress"]), state["plateau"]


def export_model(model_dir: Path, out_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Copy the checkpoint ``model_dir`` to ``out_dir`` (atomically; the same directory is fine), replacing its
    metrics with ``metrics`` when given."""
    return copy_checkpoint(model_dir, out_dir, metrics, load_checkpoint, save_checkpoint)
