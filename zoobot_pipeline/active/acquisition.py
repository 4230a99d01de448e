"""Acquisition functions: how much the model would learn from volunteers' votes on each galaxy of a catalogue batch.

Computed from the per-question columns that scoring writes (``{question}_mutual_information``,
``{question}_entropy``, ``{question}_probability_asked``), in float64:

- ``mutual_information`` (BALD, Walmsley et al. 2020): ``sum_q w_q * MI_q * P(asked_q)``; with unit weights this is
  the catalogue's own ``acquisition`` column.
- ``entropy``: ``sum_q w_q * H_q * P(asked_q)`` with ``H_q`` the predictive entropy.
- ``random``: uniform in [0, 1) from a BLAKE2b hash of ``(seed, id_str)``, so a galaxy's score never depends on which
  batch or file it is read in (the baseline in the label-efficiency experiment).

Per-question weights (default 1, keyed by question name) let a science team target a question, e.g. bars. The
question with the largest weighted term is the one "driving" a galaxy's score (``top_question``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "ACQUISITION_FUNCTIONS", "ASKED_SUFFIX", "ENTROPY_SUFFIX", "MI_SUFFIX", "catalogue_questions", "entropy",
    "mutual_information", "question_terms", "random", "required_columns", "resolve_weights", "score",
    "top_question",
]

ACQUISITION_FUNCTIONS = ("mutual_information", "entropy", "random")
MI_SUFFIX = "_mutual_information"
ENTROPY_SUFFIX = "_entropy"
ASKED_SUFFIX = "_probability_asked"
_SUFFIX = {"mutual_information": MI_SUFFIX, "entropy": ENTROPY_SUFFIX}

Batch = pa.RecordBatch | pa.Table


def catalogue_questions(schema: pa.Schema) -> list[str]:
    """Names of the questions that have a ``{question}_mutual_information`` column, in column order."""
    return [name[: -len(MI_SUFFIX)] for name in schema.names if name.endswith(MI_SUFFIX)]


def _check_function(function: str) -> None:
    if function not in ACQUISITION_FUNCTIONS:
        raise ValueError(f"unknown acquisition function {function!r}; use one of {', '.join(ACQUISITION_FUNCTIONS)}")


def required_columns(function: str, questions: Sequence[str]) -> list[str]:
    """Catalogue columns that ``function`` reads (``id_str`` always)."""
    _check_function(function)
    if function == "random":
        return ["id_str"]
    suffix = _SUFFIX[function]
    return ["id_str", *(f"{q}{suffix}" for q in questions), *(f"{q}{ASKED_SUFFIX}" for q in questions)]


def resolve_weights(questions: Sequence[str], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-question weights in ``questions`` order: 1 unless given; unknown names and negative weights are errors."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(questions))
    if unknown:
        raise ValueError(f"weights name unknown question(s) {', '.join(unknown)}; the catalogue has "
                         f"{', '.join(questions) or 'no per-question columns'}")
    bad = {q: w for q, w in weights.items() if not np.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights must be finite and non-negative, got {bad}")
    return np.array([float(weights.get(q, 1.0)) for q in questions], dtype=np.float64)


def _column(batch: Batch, name: str) -> np.ndarray:
    if name not in batch.schema.names:
        raise KeyError(f"catalogue batch has no column {name!r}")
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def question_terms(batch: Batch, quantity: str, questions: Sequence[str] | None = None,
                   weights: Mapping[str, float] | None = None) -> np.ndarray:
    """``(n, Q)`` float64 terms ``w_q * value_q * P(asked_q)`` for ``quantity`` ``mutual_information`` or
    ``entropy``; nulls become NaN."""
    if quantity not in _SUFFIX:
        raise ValueError(f"per-question quantity must be one of {', '.join(_SUFFIX)}, got {quantity!r}")
    questions = list(questions) if questions is not None else catalogue_questions(batch.schema)
    w = resolve_weights(questions, weights)
    terms = np.empty((batch.num_rows, len(questions)), dtype=np.float64)
    for j, q in enumerate(questions):
        terms[:, j] = _column(batch, f"{q}{_SUFFIX[quantity]}") * _column(batch, f"{q}{ASKED_SUFFIX}") * w[j]
    return terms


def mutual_information(batch: Batch, weights: Mapping[str, float] | None = None,
                       questions: Sequence[str] | None = None) -> np.ndarray:
    """BALD score per row: ``sum_q w_q * MI_q * P(asked_q)``."""
    return question_terms(batch, "mutual_information", questions, weights).sum(axis=1)


def entropy(batch: Batch, weights: Mapping[str, float] | None = None,
            questions: Sequence[str] | None = None) -> np.ndarray:
    """Predictive-entropy score per row: ``sum_q w_q * H_q * P(asked_q)``."""
    return question_terms(batch, "entropy", questions, weights).sum(axis=1)


def random(batch: Batch | Sequence[str], seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) score per ``id_str`` from BLAKE2b of ``(seed, id_str)``: the same galaxy and seed always give
    the same score, whatever else is in the batch."""
    ids = batch.column("id_str").to_pylist() if isinstance(batch, pa.RecordBatch | pa.Table) else list(batch)
    key = str(int(seed)).encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, id_str in enumerate(ids):
        digest = hashlib.blake2b(str(id_str).encode(), digest_size=8, key=key).digest()
        out[i] = (int.from_bytes(digest, "little") >> 11) * 2.0**-53
    return out


def top_question(terms: np.ndarray) -> np.ndarray:
    """Index of the question with the largest weighted term in each row of ``(n, Q)`` ``terms``."""
    return np.argmax(terms, axis=1)


def score(batch: Batch, function: str, questions: Sequence[str], weights: Mapping[str, float] | None = None,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, top)`` for ``function``: ``top`` indexes ``questions`` (-1 for ``random``, no question drives it)."""
    _check_function(function)
    if function == "random":
        return random(batch, seed), np.full(batch.num_rows, -1, dtype=np.int64)
    terms = question_terms(batch, function, questions, weights)
    top = top_question(terms) if len(questions) else np.full(batch.num_rows, -1, dtype=np.int64)
    return terms.sum(axis=1), top
