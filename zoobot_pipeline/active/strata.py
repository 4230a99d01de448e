"""Stratified batches: share a queue among the kinds of galaxy the model predicts, in proportion to how many of each
kind are eligible, so that a batch cannot collapse onto one kind the model predicts.

An option, not a default: in the label-efficiency benchmark a power batch of BALD already matched the pool's make-up
by kind, and sharing it by predicted kind bought nothing (-0.9% labels saved against power BALD's 9.5%); the top K of
the true error, shared this way, still collapsed onto featured galaxies the model calls smooth (README, "What the
defaults rest on").

A stratum is a combination of the model's predicted answers (the argmax of the expected vote fractions) to the
questions named in ``stratify_by``, e.g. ``smooth-or-featured-dr5`` and ``disk-edge-on-dr5`` give six strata
(smooth/featured/artifact x edge-on yes/no); for a classifier's catalogue, ``class`` stratifies by the predicted class.
Each stratum gets a share of the batch proportional to its eligible galaxies (largest remainders, ties to the
first stratum; a stratum with fewer candidates than its share passes the rest on), and the batch within a stratum is
the stratum's best by the sampling key: for power sampling, a draw without replacement in proportion to the weight
within the stratum. Streaming: one top-K per stratum and a count per stratum, O(strata x K) memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zoobot_pipeline.catalogue import CLASS_PREFIX, fraction_column
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.schemas import Schema

__all__ = ["CLASS_STRATUM", "Strata", "allocate", "resolve_strata"]

CLASS_STRATUM = "class"
"""The ``stratify_by`` name of a classifier catalogue's predicted class (argmax of its ``p_{class}`` columns)."""


@dataclass(frozen=True)
class Strata:
    """Strata from the predicted answers of ``questions``: ``answers[i]`` names the answers of question ``i``, read
    from ``columns[i]`` (one column per answer, in the same order)."""

    questions: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...]
    columns: tuple[tuple[str, ...], ...]

    @property
    def all_columns(self) -> list[str]:
        """Every column the strata read."""
        return [column for question in self.columns for column in question]

    def codes(self, batch: pa.RecordBatch) -> np.ndarray:
        """Each row's stratum as an integer (mixed radix over the questions' predicted answers); -1 where a column
        it reads is null or NaN."""
        code = np.zeros(batch.num_rows, dtype=np.int64)
        missing = np.zeros(batch.num_rows, dtype=bool)
        for columns in self.columns:
            values = np.stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns],
                              axis=1)
            missing |= np.isnan(values).any(axis=1)
            code = code * len(columns) + np.argmax(np.nan_to_num(values, nan=-np.inf), axis=1)
        code[missing] = -1
        return code

    def name(self, code: int) -> str:
        """A stratum's name, e.g. ``smooth-or-featured-dr5=featured,disk-edge-on-dr5=no``."""
        parts = []
        for question, answers in zip(reversed(self.questions), reversed(self.answers), strict=True):
            code, index = divmod(int(code), len(answers))
            parts.append(f"{question}={answers[index]}")
        return ",".join(reversed(parts))


def resolve_strata(names: Sequence[str], columns: Sequence[str], tree: Schema | None, where: str) -> Strata:
    """The strata of ``names`` (questions of ``tree``, or ``class`` for a classifier) in a catalogue with
    ``columns``; ``where`` (the file) names the catalogue in an error listing what it can be stratified by."""
    names = list(dict.fromkeys(names))
    classes = [c.removeprefix(CLASS_PREFIX) for c in columns if c.startswith(CLASS_PREFIX)]
    questions = {} if tree is None else {q.name: q for q in tree.questions}
    valid = [*questions, *([CLASS_STRATUM] if classes else [])]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ZoobotPipelineError(f"{where}: cannot stratify by {', '.join(unknown)}; this catalogue can be "
                                  f"stratified by {', '.join(valid) or 'nothing (no decision tree or classes)'}")
    answers, read = [], []
    for name in names:
        if name == CLASS_STRATUM:
            answers.append(tuple(classes))
            read.append(tuple(f"{CLASS_PREFIX}{c}" for c in classes))
            continue
        question = questions[name]
        answers.append(tuple(a.name for a in question.answers))
        read.append(tuple(fraction_column(a.label_col) for a in question.answers))
    absent = [c for question in read for c in question if c not in columns]
    if absent:
        raise ZoobotPipelineError(f"{where}: cannot stratify by {', '.join(names)}: column {absent[0]!r} is missing")
    return Strata(tuple(names), tuple(answers), tuple(read))


def allocate(eligible: np.ndarray, capacity: np.ndarray, total: int) -> np.ndarray:
    """How many of ``total`` picks each stratum gets: shares proportional to ``eligible`` by largest remainders (ties
    to the lower index), never more than ``capacity``; what a full stratum cannot take goes to the others in
    proportion. Sums to ``min(total, capacity.sum())``."""
    eligible = np.asarray(eligible, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    given = np.zeros(len(eligible), dtype=np.int64)
    remaining = min(int(total), int(capacity.sum()))
    while remaining > 0:
        weights = np.where(given < capacity, eligible, 0.0)
        if not weights.sum() > 0:
            weights = (given < capacity).astype(np.float64)
        share = remaining * weights / weights.sum()
        add = np.floor(share).astype(np.int64)
        order = np.lexsort((np.arange(len(share)), -(share - add)))
        add[order[: remaining - int(add.sum())]] += 1
        given = np.minimum(given + add, capacity)
        remaining = min(int(total), int(capacity.sum())) - int(given.sum())
    return given
