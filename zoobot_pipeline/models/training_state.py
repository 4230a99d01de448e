"""What both backends' training loops share, framework-free: a run's progress, the layout of a training-state
checkpoint, copying a checkpoint with new metrics, and in-process training's session.

A training-state directory holds ``model/`` (a normal checkpoint directory), ``optimizer.safetensors`` (the backend's
optimizer tensors) and ``training_state.json`` (``progress``: a :class:`TrainingProgress`, plus what else the backend
needs, e.g. its scheduler's state). No pickle.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.config import TrainingConfig

__all__ = ["MODEL_DIR", "OPTIMIZER_FILE", "STATE_FILE", "LocalTraining", "TrainingProgress", "copy_checkpoint"]

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"

@dataclass
class TrainingProgress:
    """Where a run stands: the last finished epoch, the best validation loss so far and the per-epoch history."""

    epoch: int = -1
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, epoch: int, train_loss: float, val_loss: float, lr: float, world_size: int) -> dict[str, Any]:
        """Add a finished epoch; returns the metrics its report carries (``improved``: a new best validation loss)."""
        improved = val_loss < self.best_val_loss
        self.epoch = epoch
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr})
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, epoch
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, "world_size": world_size,
                "improved": improved}


def copy_checkpoint(model_dir: Path, out_dir: str | Path, metrics: dict[str, Any] | None,
                    load_checkpoint: Callable[[Path], Any], save_checkpoint: Callable[..., Path]) -> Path:
    """Copy the checkpoint ``model_dir`` to ``out_dir`` with a backend's ``load_checkpoint``/``save_checkpoint``
    (atomically; the same directory is fine), replacing its metrics with ``metrics`` when given."""
    meta = read_checkpoint_json(model_dir)
    training = TrainingConfig.model_validate(meta["training"]) if meta["training"] is not None else None
    preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
    return save_checkpoint(load_checkpoint(model_dir), out_dir, preprocessing, training,
                           metrics if metrics is not None else meta["metrics"])


class LocalTraining:
    """The in-process part of a backend's local session (world size 1): resuming from ``resume_from`` as given, and
    the best model written to ``out_dir`` (by the backend's ``export_model``) whenever validation loss improves."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: str | Path, export_model: Callable[..., Path],
                 resume_from: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self._export_model = export_model

    def restored(self) -> AbstractContextManager[Path | None]:
        """``resume_from`` as given."""
        return nullcontext(self.resume_from)

    def all_sum(self, values: list[float]) -> list[float]:
        """The values themselves."""
        return values

    def report(self, metrics: dict[str, Any], write_state: Callable[[Path], Path]) -> None:
        """Export the model to ``out_dir`` when this epoch improved on the best validation loss."""
        if metrics["improved"]:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".state-{self.out_dir.name}.", dir=self.out_dir.parent) as tmp:
                self._export_model(write_state(Path(tmp)) / MODEL_DIR, self.out_dir)
