"""Predictions and evaluation of TensorFlow checkpoints on a release's galaxies, in this process (as the torch
backend's ``inference``; scoring whole releases goes through the ONNX package)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.images import LabelledImages
from zoobot_pipeline.models.predictions import (
    evaluation_images,
    evaluation_labels,
    prediction_images,
    prediction_table,
)
from zoobot_pipeline.models.tensorflow.checkpoint import load_checkpoint
from zoobot_pipeline.models.tensorflow.model import TFModel
from zoobot_pipeline.models.tensorflow.train import model_loss
from zoobot_pipeline.stats import vote_fraction_metrics

__all__ = ["evaluate_checkpoint", "predict_checkpoint"]


def _outputs(model: TFModel, data: LabelledImages, batch_size: int) -> np.ndarray:
    """The model's outputs (dropout off) for every image, float32."""
    if not data.ids:
        raise ValueError("no usable cutouts among the requested galaxies")
    return np.concatenate([model.net(data.images[i:i + batch_size], training=False).numpy()
                           for i in range(0, len(data.ids), batch_size)])


def _checkpoint(checkpoint_dir: str | Path) -> tuple[TFModel, PreprocessingConfig]:
    model = load_checkpoint(checkpoint_dir)
    return model, PreprocessingConfig.model_validate(read_checkpoint_json(checkpoint_dir)["preprocessing"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    return tf.nn.softmax(logits.astype(np.float64), axis=1).numpy().astype(np.float32)


def predict_checkpoint(checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                       batch_size: int = 64) -> pa.Table:
    """See :func:`zoobot_pipeline.models.predict`."""
    model, preprocessing = _checkpoint(checkpoint_dir)
    data = prediction_images(release_dir, ids, preprocessing)
    return prediction_table(data.ids, _outputs(model, data, batch_size), model.task, model.output_names,
                            model.schema, _softmax)


def evaluate_checkpoint(checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                        ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """See :func:`zoobot_pipeline.models.evaluate`."""
    model, preprocessing = _checkpoint(checkpoint_dir)
    label_ids, targets_in = evaluation_labels(labels_path, model.finetune, model.class_names, model.schema, ids)
    data = evaluation_images(release_dir, labels_path, label_ids, targets_in, preprocessing)
    outputs, targets = _outputs(model, data, batch_size), data.targets
    typed = targets if targets.ndim == 1 else targets.astype(np.float32)
    metrics: dict[str, Any] = {"n": float(len(data.ids)), "loss": float(model_loss(model)(outputs, typed))}
    if model.task == "classification":
        metrics["accuracy"] = float((outputs.argmax(axis=1) == targets).mean())
    elif model.task == "regression":
        metrics["rmse"] = float(np.sqrt(np.mean((outputs - targets.reshape(outputs.shape)) ** 2)))
    if model.schema is not None:  # pretrained, or finetuned on a new decision tree
        metrics.update(vote_fraction_metrics(targets, outputs.astype(np.float64), model.schema))
    return metrics
