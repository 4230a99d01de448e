"""Finetuning labels: a CSV or Parquet table of ``id_str`` plus label columns, turned into training targets.

Classification targets are class indices into ``class_names`` (the sorted distinct values of the label column);
regression targets are float columns; Dirichlet targets are vote counts read and validated by ``read_votes``.
Everything here is checked before any training work starts, with errors that name the file and the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.errors import LabelsError
from zoobot_pipeline.io import read_table
from zoobot_pipeline.models.config import FinetuneConfig
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["FinetuneLabels", "LabelsError", "check_overlap", "finetune_schema", "read_finetune_labels"]


@dataclass(frozen=True)
class FinetuneLabels:
    """Targets per galaxy: ``(n,)`` int64 class indices, ``(n, k)`` float32 values or ``(n, A)`` int64 votes."""

    ids: list[str]
    targets: np.ndarray
    class_names: tuple[str, ...] | None

    def select(self, ids: Sequence[str]) -> FinetuneLabels:
        """The rows of ``ids`` (each must be present), in that order."""
        row_of = {id_str: row for row, id_str in enumerate(self.ids)}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise LabelsError(f"{len(missing)} ids have no labels, e.g. {missing[:5]}")
        return FinetuneLabels(list(ids), self.targets[[row_of[i] for i in ids]], self.class_names)


def finetune_schema(config: FinetuneConfig) -> Schema | None:
    """The decision tree of a ``dirichlet`` task, else None."""
    return get_schema(config.schema_name) if config.schema_name is not None else None


def read_finetune_labels(path: str | Path, config: FinetuneConfig,
                         class_names: Sequence[str] | None = None) -> FinetuneLabels:
    """Read the targets of ``config``'s task; rows with an empty (or, for regression, non-finite) label are left out.

    ``class_names`` fixes the classes (e.g. a trained model's); labels outside them are an error.
    """
    path = Path(path)
    schema = finetune_schema(config)
    if schema is not None:
        if config.label_columns and tuple(config.label_columns) != tuple(schema.label_cols):
            raise LabelsError(f"label_columns of a dirichlet task must be schema {schema.name!r}'s label columns")
        votes = read_votes(path, schema)
        return FinetuneLabels(votes.column("id_str").to_pylist(), vote_matrix(votes, schema), None)
    table = read_table(path, LabelsError, "labels")
    missing = [c for c in ("id_str", *config.label_columns) if c not in table.column_names]
    if missing:
        raise LabelsError(f"{path}: missing label columns {missing}; it has {table.column_names}")
    keep = pc.is_valid(table.column("id_str"))
    for col in config.label_columns:
        keep = pc.and_(keep, pc.is_valid(table.column(col)))
    table = table.filter(keep)
    if table.num_rows == 0:
        raise LabelsError(f"{path}: no rows with labels in {list(config.label_columns)}")
    ids = table.column("id_str").cast(pa.string()).to_pylist()
    if len(set(ids)) != len(ids):
        raise LabelsError(f"{path}: duplicate id_str values")
    if config.task == "classification":
        values = [str(v) for v in table.column(config.label_columns[0]).to_pylist()]
        names = tuple(class_names) if class_names is not None else tuple(sorted(set(values)))
        if len(names) < 2:
            raise LabelsError(f"{path}: column {config.label_columns[0]!r} needs at least 2 classes, got {names}")
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise LabelsError(f"{path}: labels {unknown[:5]} are not among the classes {names}")
        return FinetuneLabels(ids, np.array([index[v] for v in values], dtype=np.int64), names)
    columns = []
    for col in config.label_columns:
        array = table.column(col).to_numpy(zero_copy_only=False)
        if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise LabelsError(f"{path}: regression column {col!r} is not numeric ({table.schema.field(col).type})")
        columns.append(array.astype(np.float32))
    values = np.stack(columns, axis=1)
    finite = np.isfinite(values).all(axis=1)
    if not finite.any():
        raise LabelsError(f"{path}: no rows with finite values in {list(config.label_columns)}")
    return FinetuneLabels([i for i, ok in zip(ids, finite, strict=True) if ok], values[finite], None)


def check_overlap(ids: Sequence[str], release_dir: str | Path) -> list[str]:
    """The labelled ``ids`` that are sources of the release (in the given order); an error when there are none."""
    sources = set(Release.open(release_dir).sources.column("id_str").cast(pa.string()).to_pylist())
    common = [i for i in ids if i in sources]
    if not common:
        raise LabelsError(f"none of the {len(ids)} labelled ids (e.g. {list(ids[:3])}) is a source of the "
                          f"release {release_dir}")
    return common
