"""Volunteer vote catalogues: ``id_str`` plus one non-negative integer column per answer, named as the schema's
label columns. Reading validates the columns and the counts; ``tree_violations`` checks counts against the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_pipeline.errors import VotesError
from zoobot_pipeline.io import read_table
from zoobot_pipeline.schemas import Schema

__all__ = ["TreeViolation", "VotesError", "read_votes", "tree_violations", "vote_matrix"]


@dataclass(frozen=True)
class TreeViolation:
    """A galaxy whose question got more votes than the answer that leads to it."""

    id_str: str
    question: str
    question_votes: int
    parent_answer: str
    parent_votes: int


def read_votes(path: str | Path, schema: Schema) -> pa.Table:
    """Read and validate a votes catalogue (Parquet or CSV); returns ``id_str`` plus the label columns as int64."""
    path = Path(path)
    table = read_table(path, VotesError, "votes catalogue")
    required = ["id_str", *schema.label_cols]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise VotesError(f"{path}: missing columns for schema {schema.name!r}: {shown}")
    ids = table.column("id_str").cast(pa.string())
    if ids.null_count:
        raise VotesError(f"{path}: column 'id_str' has {ids.null_count} empty values")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        duplicated = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1][:5]
        raise VotesError(f"{path}: duplicate id_str values, e.g. {duplicated}")
    columns = {"id_str": ids}
    for col in schema.label_cols:
        values = table.column(col)
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise VotesError(f"{path}: column {col!r} is empty at row {row}")
        array = values.to_numpy()
        if not np.issubdtype(array.dtype, np.number) or np.any(array != np.round(array)):
            raise VotesError(f"{path}: column {col!r} must hold whole vote counts")
        if np.any(array < 0):
            row = int(np.argmax(array < 0))
            raise VotesError(f"{path}: column {col!r} has a negative count at row {row} (id_str {ids[row]})")
        columns[col] = pa.array(array.astype(np.int64))
    return pa.table(columns)


def vote_matrix(votes: pa.Table, schema: Schema) -> np.ndarray:
    """Vote counts as an ``(n, A)`` int64 array in the schema's label-column order."""
    return np.stack([votes.column(c).to_numpy().astype(np.int64) for c in schema.label_cols], axis=1)


def tree_violations(votes: pa.Table, schema: Schema, limit: int = 20) -> list[TreeViolation]:
    """Galaxies where a question got more votes than the answer it is asked after (first ``limit`` found)."""
    counts = vote_matrix(votes, schema)
    ids = votes.column("id_str").to_pylist()
    found: list[TreeViolation] = []
    for question in schema.questions:
        if question.asked_after is None:
            continue
        totals = counts[:, question.slice].sum(axis=1)
        parent = counts[:, question.asked_after.index]
        for row in np.flatnonzero(totals > parent)[: limit - len(found)]:
            found.append(TreeViolation(ids[row], question.name, int(totals[row]), question.asked_after.label_col,
                                       int(parent[row])))
        if len(found) >= limit:
            break
    return found
