"""Framework-free parts of predicting and evaluating checkpoints, shared by the backends: which galaxies to predict,
which labels to evaluate against, and the columns of a decision tree's predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.errors import VotesError
from zoobot_pipeline.models.config import FinetuneConfig
from zoobot_pipeline.models.labels import read_finetune_labels
from zoobot_pipeline.schemas import Schema
from zoobot_pipeline.stats import expected_fractions

__all__ = ["evaluation_labels", "prediction_ids", "tree_columns"]


def tree_columns(concentrations: np.ndarray, schema: Schema) -> dict[str, np.ndarray]:
    """``{label}_fraction`` (expected vote fraction) and ``{label}_concentration`` for every answer."""
    fractions = expected_fractions(concentrations, schema)
    columns = {}
    for i, label in enumerate(schema.label_cols):
        columns[f"{label}_fraction"] = fractions[:, i]
        columns[f"{label}_concentration"] = concentrations[:, i]
    return columns


def prediction_ids(release_dir: str | Path, ids: Sequence[str] | None) -> list[str]:
    """``ids`` (default: every source of the release), each checked to be a source of the release."""
    known = Release.open(release_dir).sources.column("id_str").cast(pa.string()).to_pylist()
    if ids is None:
        return known
    missing = sorted(set(ids) - set(known))
    if missing:
        raise ValueError(f"{release_dir}: {len(missing)} requested id_str not in the release, e.g. {missing[:5]}")
    return list(ids)


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
