"""Exclude galaxies by the model's own answers, so that volunteers' clicks are not spent on what is not a galaxy.

A filter is ``ANSWER OP THRESHOLD`` with ``OP`` one of ``>=``, ``>``, ``<=``, ``<``, e.g.
``smooth-or-featured-dr5_artifact>=0.5``. ``ANSWER`` is an answer label of the catalogue's decision tree (the
filter reads its expected vote fraction, ``{answer}_fraction``: within its question, so conditional on the question
being asked) or a class of a classifier's catalogue (its probability, ``p_{class}``). A galaxy matching any filter is
excluded. Names are checked against the catalogue's columns, and the error lists the valid ones.

Answers that say "not a galaxy" in the built-in trees (:data:`NOT_GALAXY_ANSWERS`):

- ``decals_dr5``, ``decals_dr8``, ``desi``, ``gz2``: the first question's ``artifact`` answer ("star, artifact or bad
  zoom"), e.g. ``smooth-or-featured-dr5_artifact``; these trees have no separate star answer.
- ``euclid``: the first question's ``problem`` answer (``smooth-or-featured-euclid_problem``: star, artefact or bad
  zoom). ``problem-euclid_star`` and ``problem-euclid_artifact`` (and the ``artifact-euclid`` answers) tell the kinds
  apart, but their fractions are conditional on ``problem`` being answered: filter on ``problem`` first.
"""

from __future__ import annotations

import contextlib
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zoobot_pipeline.catalogue import CLASS_PREFIX, FRACTION_SUFFIX
from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = [
    "NOT_GALAXY_ANSWERS", "AnswerFilter", "answer_columns", "filter_columns", "not_galaxy_filters",
    "parse_answer_filters",
]

NOT_GALAXY_ANSWERS = {
    "decals_dr5": ("smooth-or-featured-dr5_artifact",),
    "decals_dr8": ("smooth-or-featured-dr8_artifact",),
    "desi": ("smooth-or-featured_artifact",),
    "gz2": ("smooth-or-featured-gz2_artifact",),
    "euclid": ("smooth-or-featured-euclid_problem",),
}
"""Per built-in tree, the answers whose expected vote fraction says "star or artefact" (see the module docstring)."""

_OPERATORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_PATTERN = re.compile(r"^\s*(?P<answer>[^<>=\s]+)\s*(?P<op>>=|<=|>|<)\s*(?P<value>\S+)\s*$")


@dataclass(frozen=True)
class AnswerFilter:
    """Exclude galaxies whose ``answer`` value ``op`` ``threshold`` (see the module docstring)."""

    answer: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.answer}{self.op}{self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> AnswerFilter:
        """``ANSWER OP THRESHOLD`` (``OP``: ``>=``, ``>``, ``<=``, ``<``; a finite threshold) as a filter."""
        match = _PATTERN.match(text) if isinstance(text, str) else None
        threshold = float("nan")
        if match:
            with contextlib.suppress(ValueError):
                threshold = float(match["value"])
        if match is None or not np.isfinite(threshold):
            raise ZoobotPipelineError(f"exclude-answer {text!r}: expected ANSWER OP THRESHOLD with OP one of "
                                      ">=, >, <=, <, e.g. smooth-or-featured-dr5_artifact>=0.5")
        return cls(match["answer"], match["op"], threshold)

    def matches(self, values: np.ndarray) -> np.ndarray:
        """Whether each value meets the condition (NaN never does)."""
        return _OPERATORS[self.op](values, self.threshold)


def parse_answer_filters(filters: Iterable[str | AnswerFilter]) -> list[AnswerFilter]:
    """Filters from strings (or filters), in order, without repeats."""
    parsed = [f if isinstance(f, AnswerFilter) else AnswerFilter.parse(f) for f in filters]
    return list(dict.fromkeys(parsed))


def answer_columns(schema: pa.Schema) -> dict[str, str]:
    """The answers a catalogue can be filtered on, with the column each reads: decision-tree answer labels
    (``{answer}_fraction``) and classifier classes (``p_{class}``)."""
    answers = {name.removesuffix(FRACTION_SUFFIX): name for name in schema.names if name.endswith(FRACTION_SUFFIX)}
    answers |= {name.removeprefix(CLASS_PREFIX): name for name in schema.names if name.startswith(CLASS_PREFIX)}
    return answers


def filter_columns(filters: Sequence[AnswerFilter], schema: pa.Schema, where: str) -> list[str]:
    """The column each filter reads in a catalogue of ``schema`` (``where``: the file, for the error naming an unknown
    answer and listing the valid ones)."""
    answers = answer_columns(schema)
    unknown = [f.answer for f in filters if f.answer not in answers]
    if unknown:
        valid = ", ".join(answers) or "none (no {answer}_fraction or p_{class} columns)"
        raise ZoobotPipelineError(f"{where}: exclude-answer names unknown answer(s) {', '.join(unknown)}; the "
                                  f"catalogue's answers are {valid}")
    return [answers[f.answer] for f in filters]


def not_galaxy_filters(schema_name: str, threshold: float = 0.5) -> list[AnswerFilter]:
    """``answer >= threshold`` for each "not a galaxy" answer of a built-in tree (:data:`NOT_GALAXY_ANSWERS`)."""
    if schema_name not in NOT_GALAXY_ANSWERS:
        raise ZoobotPipelineError(f"no star/artefact answers known for tree {schema_name!r}; known trees: "
                                  f"{', '.join(NOT_GALAXY_ANSWERS)}")
    return [AnswerFilter(answer, ">=", float(threshold)) for answer in NOT_GALAXY_ANSWERS[schema_name]]
