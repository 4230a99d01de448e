"""Volunteer vote catalogues: ``id_str`` plus one non-negative integer column per answer, named as the schema's
label columns. Reading validates the columns, the counts and their fit to the tree (:func:`check_tree`: no question
gets more votes than the answer it is asked after); every reader of votes goes through :func:`read_votes`.
``tree_violations`` lists the galaxies that break the tree (``release check`` counts them).
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

__all__ = ["TreeViolation", "VotesError", "check_tree", "read_votes", "tree_violations", "vote_matrix"]


@dataclass(frozen=True)
class TreeViolation:
    """A galaxy whose question got more votes than the answer that leads to it."""

    id_str: str
    question: str
    question_votes: int
    parent_answer: str
    parent_votes: int


def read_votes(path: str | Path, schema: Schema, *, check_tree_counts: bool = True) -> pa.Table:
    """Read and validate a votes catalogue (Parquet or CSV); returns ``id_str`` plus the label columns as int64.

    Refused with a :class:`VotesError` naming the file: missing columns, empty or duplicate ids, counts that are not
    whole and non-negative, and (unless ``check_tree_counts`` is false: ``release check`` counts them instead) votes
    that break the tree (:func:`check_tree`).
    """
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
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0).to_numpy(zero_copy_only=False)
    if blank.any():
        rows = np.flatnonzero(blank)
        raise VotesError(f"{path}: column 'id_str' is empty or blank in {len(rows)} row(s), e.g. row(s) "
                         f"{', '.join(map(str, rows[:5]))}")
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
    votes = pa.table(columns)
    if check_tree_counts:
        check_tree(votes, schema, path)
    return votes


def vote_matrix(votes: pa.Table, schema: Schema) -> np.ndarray:
    """Vote counts as an ``(n, A)`` int64 array in the schema's label-column order."""
    return np.stack([votes.column(c).to_numpy().astype(np.int64) for c in schema.label_cols], axis=1)


def _breaks_tree(counts: np.ndarray, schema: Schema) -> np.ndarray:
    """Per galaxy: whether any question got more votes than the answer it is asked after."""
    broken = np.zeros(len(counts), dtype=bool)
    for question in schema.questions:
        if question.asked_after is not None:
            broken |= counts[:, question.slice].sum(axis=1) > counts[:, question.asked_after.index]
    return broken


def check_tree(votes: pa.Table, schema: Schema, source: str | Path) -> None:
    """Refuse votes that break the tree: a :class:`VotesError` naming ``source`` (the file), how many galaxies break
    it, and the first ones (id, question, its votes, the answer it is asked after and that answer's votes)."""
    broken = _breaks_tree(vote_matrix(votes, schema), schema)
    if not broken.any():
        return
    examples = "; ".join(f"id_str {v.id_str!r}: question {v.question!r} has {v.question_votes} votes but the answer "
                         f"{v.parent_answer!r} it is asked after has {v.parent_votes}"
                         for v in tree_violations(votes, schema, limit=3))
    raise VotesError(f"{source}: {int(broken.sum())} galaxies have more votes on a question than on the answer it is "
                     f"asked after (e.g. {examples}); correct or remove these rows")


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
