"""A training job (what to train, on what) and the task a worker builds from it: model, data, loss, parameters.

A :class:`TrainingJob` is small and picklable: it is what the driver ships to every Ray Train worker, and each worker
(or the local process) turns it into a :class:`TrainingTask` by reading the release and the labels itself. Paths must
therefore be readable where the workers run (a shared filesystem on a multi-node cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models import FinetuneConfig, ModelConfig, TrainingConfig
from zoobot_pipeline.models.labels import read_finetune_labels
from zoobot_pipeline.models.torch.data import LabelledImages, load_images, load_labelled_images
from zoobot_pipeline.models.torch.finetune import (
    FinetuneModel,
    build_finetune_model,
    finetune_loss,
    finetune_param_groups,
)
from zoobot_pipeline.models.torch.model import ZoobotModel, build_model
from zoobot_pipeline.models.torch.train import LossFn, schema_loss

__all__ = ["TrainingJob", "TrainingTask", "build_task"]


@dataclass(frozen=True)
class TrainingJob:
    """Pretraining (``model`` set) or finetuning (``finetune`` set, from ``base_checkpoint`` or, without one, from a
    fresh ``model`` encoder); ``labels_path`` holds votes for pretraining, finetuning labels otherwise."""

    kind: Literal["pretrain", "finetune"]
    release_dir: str
    labels_path: str
    training: TrainingConfig
    preprocessing: PreprocessingConfig
    model: ModelConfig | None = None
    finetune: FinetuneConfig | None = None
    base_checkpoint: str | None = None


@dataclass
class TrainingTask:
    """What the training loop needs: the model, its data, its loss and (optionally) optimizer parameter groups."""

    model: ZoobotModel | FinetuneModel
    data: LabelledImages
    loss_fn: LossFn
    param_groups: list[dict] | None
    summary: dict[str, Any]


def build_task(job: TrainingJob) -> TrainingTask:
    """Build the model (seeded by ``job.training.seed``) and load its labelled images into memory."""
    torch.manual_seed(job.training.seed)
    if job.kind == "pretrain":
        if job.model is None:
            raise ValueError("a pretraining job needs a model config")
        model: ZoobotModel | FinetuneModel = build_model(job.model)
        data = load_labelled_images(job.release_dir, job.labels_path, model.schema, job.preprocessing)
        loss_fn, groups = schema_loss(model.schema), None
    else:
        if job.finetune is None or (job.base_checkpoint is None and job.model is None):
            raise ValueError("a finetuning job needs a finetune config and a base checkpoint or model config")
        labels = read_finetune_labels(job.labels_path, job.finetune)
        finetuned = build_finetune_model(job.base_checkpoint or job.model, job.finetune, labels.class_names)
        data = load_images(job.release_dir, labels.ids, labels.targets, job.preprocessing)

        def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return finetune_loss(finetuned, outputs, targets)

        groups = finetune_param_groups(finetuned, job.training.lr, job.finetune.lr_decay, job.training.weight_decay)
        model = finetuned
    summary = {"kind": job.kind, "n_labelled": len(data.ids), "n_rejected": data.n_rejected,
               "n_missing": data.n_missing, "release": str(Path(job.release_dir).resolve())}
    if job.base_checkpoint is not None:
        summary["base_checkpoint"] = str(Path(job.base_checkpoint).resolve())
    return TrainingTask(model, data, loss_fn, groups, summary)
