"""Predictions and evaluation of trained checkpoints on a release's galaxies, in this process.

Images go through the checkpoint's own preprocessing; rejected cutouts get no row. This is for checks and benchmarks
on thousands of galaxies; scoring whole releases goes through the ONNX package and ``zoobot_pipeline.scoring``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.images import LabelledImages
from zoobot_pipeline.models.predictions import (
    evaluation_images,
    evaluation_labels,
    prediction_images,
    prediction_table,
)
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.data import GalaxyDataset
from zoobot_pipeline.models.torch.finetune import FinetuneModel, finetune_loss
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.torch.model import ZoobotModel
from zoobot_pipeline.stats import vote_fraction_metrics

__all__ = ["evaluate_checkpoint", "predict_checkpoint"]


@torch.no_grad()
def _outputs(model: torch.nn.Module, data: LabelledImages, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outputs, targets = [], []
    for images, target in DataLoader(GalaxyDataset(data), batch_size=batch_size):
        outputs.append(model(images))
        targets.append(target)
    if not outputs:
        raise ValueError("no usable cutouts among the requested galaxies")
    return torch.cat(outputs), torch.cat(targets)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def predict_checkpoint(checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                       batch_size: int = 64) -> pa.Table:
    """See :func:`zoobot_pipeline.models.predict`."""
    model = load_checkpoint(checkpoint_dir)
    preprocessing = PreprocessingConfig.model_validate(read_checkpoint_json(checkpoint_dir)["preprocessing"])
    data = prediction_images(release_dir, ids, preprocessing)
    outputs = _outputs(model, data, batch_size)[0].numpy()
    if isinstance(model, FinetuneModel):
        return prediction_table(data.ids, outputs, model.task, model.output_names, model.schema, _softmax)
    return prediction_table(data.ids, outputs, "dirichlet", model.schema.label_cols, model.schema, _softmax)


def evaluate_checkpoint(checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                        ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """See :func:`zoobot_pipeline.models.evaluate`."""
    model: ZoobotModel | FinetuneModel = load_checkpoint(checkpoint_dir)
    preprocessing = PreprocessingConfig.model_validate(read_checkpoint_json(checkpoint_dir)["preprocessing"])
    finetuned = isinstance(model, FinetuneModel)
    label_ids, targets_in = evaluation_labels(labels_path, model.config if finetuned else None,
                                              model.class_names if finetuned else None, model.schema, ids)
    data = evaluation_images(release_dir, labels_path, label_ids, targets_in, preprocessing)
    outputs, targets = _outputs(model, data, batch_size)
    metrics: dict[str, Any] = {"n": float(len(data.ids))}
    if isinstance(model, FinetuneModel):
        metrics["loss"] = float(finetune_loss(model, outputs, targets))
        if model.task == "classification":
            metrics["accuracy"] = float((outputs.argmax(dim=1) == targets).double().mean())
        elif model.task == "regression":
            metrics["rmse"] = float(torch.sqrt(torch.mean((outputs - targets.reshape(outputs.shape)) ** 2)))
    else:
        metrics["loss"] = float(dirichlet_multinomial_loss(targets, outputs, model.schema))
    if model.schema is not None:  # pretrained, or finetuned on a new decision tree
        metrics.update(vote_fraction_metrics(targets.numpy(), outputs.double().numpy(), model.schema))
    return metrics
