"""Framework-free parts of predicting and evaluating checkpoints, shared by the backends: which galaxies to predict,
which labels and images to evaluate against, and the table of predictions made of a model's outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.errors import LabelsError, VotesError
from zoobot_pipeline.models.config import FinetuneConfig
from zoobot_pipeline.models.images import LabelledImages, load_images
from zoobot_pipeline.models.labels import read_finetune_labels
from zoobot_pipeline.runtime.package import Task
from zoobot_pipeline.schemas import Schema
from zoobot_pipeline.stats import expected_fractions

__all__ = ["evaluation_images", "evaluation_labels", "prediction_ids", "prediction_images", "prediction_table",
           "tree_columns"]


def tree_columns(concentrations: np.ndarray, schema: Schema) -> dict[str, np.ndarray]:
    """``{label}_fraction`` (expected vote fraction) and ``{label}_concentration`` for every answer."""
    fractions = expected_fractions(concentrations, schema)
    columns = {}
    for i, label in enumerate(schema.label_cols):
        columns[f"{label}_fraction"] = fractions[:, i]
        columns[f"{label}_concentration"] = concentrations[:, i]
    return columns


def prediction_table(ids: Sequence[str], outputs: np.ndarray, task: Task, output_names: Sequence[str],
                     schema: Schema | None, softmax: Callable[[np.ndarray], np.ndarray]) -> pa.Table:
    """The predictions of a model whose outputs (one row per id in ``ids``) are ``outputs``: ``id_str``, then for a
    classification ``predicted`` (the likeliest of ``output_names``, the classes) and ``p_{class}`` (``softmax``, the
    framework's, of the logits); for a regression one column per name in ``output_names``; for a Dirichlet head over
    ``schema`` its :func:`tree_columns`."""
    columns: dict[str, Any] = {"id_str": ids}
    if task == "classification":
        probabilities = softmax(outputs)
        columns["predicted"] = [output_names[i] for i in probabilities.argmax(axis=1)]
        columns.update({f"p_{name}": probabilities[:, i] for i, name in enumerate(output_names)})
    elif task == "regression":
        columns.update({name: outputs[:, i] for i, name in enumerate(output_names)})
    else:
        columns.update(tree_columns(outputs, schema))
    return pa.table(columns)


def prediction_ids(release_dir: str | Path, ids: Sequence[str] | None) -> list[str]:
    """``ids`` (default: every source of the release), each checked to be a source of the release."""
    known = Release.open(release_dir).sources.column("id_str").cast(pa.string()).to_pylist()
    if ids is None:
        return known
    missing = sorted(set(ids) - set(known))
    if missing:
        raise ValueError(f"{release_dir}: {len(missing)} requested id_str not in the release, e.g. {missing[:5]}")
    return list(ids)


def prediction_images(release_dir: str | Path, ids: Sequence[str] | None,
                      preprocessing: PreprocessingConfig) -> LabelledImages:
    """The usable cutouts of :func:`prediction_ids` (rejected ones get no row), preprocessed; targets all 0."""
    ids = prediction_ids(release_dir, ids)
    return load_images(release_dir, ids, np.zeros(len(ids), dtype=np.int64), preprocessing)


def evaluation_labels(labels_path: str | Path, finetune: FinetuneConfig | None, class_names: Sequence[str] | None,
                      schema: Schema | None, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``(ids, targets)`` to evaluate a checkpoint against: a finetuned one's labels (``finetune`` given, classes
    fixed to ``class_names``), or a pretrained one's votes over ``schema``; only ``ids`` when given."""
    if finetune is not None:
        labels = read_finetune_labels(labels_path, finetune, class_names)
        if ids is not None:
            labels = labels.select(ids)
        return labels.ids, labels.targets
    votes = read_votes(labels_path, schema)
    label_ids = votes.column("id_str").to_pylist()
    targets = vote_matrix(votes, schema)
    if ids is not None:
        row_of = {id_str: row for row, id_str in enumerate(label_ids)}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise VotesError(f"{labels_path}: {len(missing)} requested ids have no votes, e.g. {missing[:5]}")
        targets = targets[[row_of[i] for i in ids]]
        label_ids = list(ids)
    return label_ids, targets


def evaluation_images(release_dir: str | Path, labels_path: str | Path, label_ids: Sequence[str],
                      targets: np.ndarray, preprocessing: PreprocessingConfig) -> LabelledImages:
    """The usable cutouts of the labelled galaxies ``label_ids`` (targets: rows of ``targets``) in the release; a
    :class:`~zoobot_pipeline.errors.LabelsError` naming ``labels_path`` if none is usable."""
    data = load_images(release_dir, label_ids, targets, preprocessing)
    if not data.ids:
        raise LabelsError(f"{labels_path}: none of its {len(label_ids)} galaxies has a usable cutout in the release "
                          f"{release_dir} ({data.n_missing} not in the release, {data.n_rejected} rejected)")
    return data
