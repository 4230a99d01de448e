"""What a worker builds from a :class:`~zoobot_pipeline.models.job.TrainingJob`: model, data, loss, parameters.

Each Ray Train worker (or the local process) turns the job into a :class:`TrainingTask` by reading the release and the
labels itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig
from zoobot_pipeline.models.images import LabelledImages, load_images, load_labelled_images
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.labels import finetune_schema, read_finetune_labels
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel, finetune_head, finetune_loss, finetune_param_groups
from zoobot_pipeline.models.torch.model import ZoobotModel, build_model, create_backbone
from zoobot_pipeline.models.torch.train import LossFn, schema_loss

__all__ = ["TrainingTask", "build_finetune_model", "build_task"]


@dataclass
class TrainingTask:
    """What the training loop needs: the model, its data, its loss and (optionally) optimizer parameter groups."""

    model: ZoobotModel | FinetuneModel
    data: LabelledImages
    loss_fn: LossFn
    param_groups: list[dict] | None
    summary: dict[str, Any]


def build_finetune_model(base: str | Path | ModelConfig, config: FinetuneConfig,
                         class_names: Sequence[str] | None = None) -> FinetuneModel:
    """A new head on a pretrained checkpoint's encoder (``base`` a checkpoint directory), or on a randomly
    initialised encoder (``base`` a :class:`ModelConfig`, for from-scratch baselines).

    ``classification`` needs ``class_names`` (2 or more; cross-entropy on logits); ``regression`` has one output per
    label column (MSE); ``dirichlet`` a Dirichlet head over ``config.schema_name``'s answers.
    """
    if isinstance(base, ModelConfig):
        encoder, base_config = create_backbone(base), base
    else:
        pretrained = load_checkpoint(base)
        if not isinstance(pretrained, ZoobotModel):
            raise ZoobotPipelineError(f"{base}: finetuning starts from a pretrained checkpoint, not a finetuned one")
        encoder, base_config = pretrained.encoder, pretrained.config
    schema = finetune_schema(config)
    head = finetune_head(config, encoder.num_features, schema, class_names)
    return FinetuneModel(encoder, head, config, base_config, schema, class_names)


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
