"""Torch training-state checkpoints, to resume a run: the model, the optimizer and schedule, the epoch and the history.

The layout is :mod:`zoobot_pipeline.models.training_state`'s: ``optimizer.safetensors`` holds every tensor of the
optimizer's and scheduler's state, ``training_state.json`` the rest of that state (with the tensors' keys in their
place) and the progress. No pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.config import TrainingConfig
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel
from zoobot_pipeline.models.torch.model import ZoobotModel
from zoobot_pipeline.models.training_state import (
    MODEL_DIR,
    OPTIMIZER_FILE,
    STATE_FILE,
    TrainingProgress,
    copy_checkpoint,
)

__all__ = ["MODEL_DIR", "TrainingProgress", "export_model", "load_training_state", "save_training_state"]

_TENSOR, _INT_KEYS = "__tensor__", "__int_keys__"


def _split(value: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """``value`` made JSON-ready: tensors moved into ``tensors`` (replaced by their key), int-keyed dicts tagged."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(value, dict):
        items = {str(k): _split(v, tensors, f"{prefix}.{k}") for k, v in value.items()}
        return {_INT_KEYS: items} if value and all(isinstance(k, int) for k in value) else items
    if isinstance(value, list | tuple):
        return [_split(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_INT_KEYS}:
            return {int(k): _join(v, tensors) for k, v in value[_INT_KEYS].items()}
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_training_state(directory: Path, model: ZoobotModel | FinetuneModel, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, progress: TrainingProgress,
                        preprocessing: PreprocessingConfig, training_config: TrainingConfig,
                        metrics: dict[str, Any]) -> Path:
    """Write everything needed to resume into ``directory`` (which may exist and be empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, directory / MODEL_DIR, preprocessing, training_config, metrics)
    tensors: dict[str, torch.Tensor] = {}
    state = {"optimizer": _split(optimizer.state_dict(), tensors, "optimizer"),
             "scheduler": _split(scheduler.state_dict(), tensors, "scheduler"),
             "progress": progress.__dict__}
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    return directory


def load_training_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainingProgress:
    """Restore model weights, optimizer and schedule in place from ``directory``; returns the saved progress."""
    saved = load_checkpoint(directory / MODEL_DIR)
    model.load_state_dict(saved.state_dict())
    tensors = load_file(str(directory / OPTIMIZER_FILE))
    state = json.loads((directory / STATE_FILE).read_text())
    optimizer.load_state_dict(_join(state["optimizer"], tensors))
    scheduler.load_state_dict(_join(state["scheduler"], tensors))
    return TrainingProgress(**state["progress"])


def export_model(model_dir: Path, out_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Copy the checkpoint ``model_dir`` to ``out_dir`` (atomically; the same directory is fine), replacing its
    metrics with ``metrics`` when given."""
    return copy_checkpoint(model_dir, out_dir, metrics, load_checkpoint, save_checkpoint)
