"""Acquisition functions: how much the model would learn from volunteers' votes on each galaxy of a catalogue batch.

A registry of named functions, computed in float64 from the columns that scoring writes (names:
:mod:`zoobot_pipeline.catalogue`). For a decision tree's catalogue, from the per-question columns
``{question}_mutual_information``, ``{question}_entropy`` and ``{question}_probability_asked``:

- ``mutual_information`` (BALD, Walmsley et al. 2020): ``sum_q w_q * MI_q * P(asked_q)``
  (:func:`zoobot_pipeline.stats.acquisition_score`); with unit weights this is the catalogue's own ``acquisition``
  column.
- ``entropy``: ``sum_q w_q * H_q * P(asked_q)`` with ``H_q`` the predictive entropy.

For a finetuned model's catalogue:

- ``class_mutual_information`` (classifiers): BALD over the classes, the catalogue's ``mutual_information`` column
  (entropy of the mean class probabilities minus the mean entropy over the MC-dropout samples; 0 for every galaxy
  when the catalogue was scored with one sample, ``mc_samples`` 0 or 1).
- ``predictive_std`` (regressors): ``sum_o w_o * std_o`` over the outputs ``o`` with ``{o}_std`` the standard
  deviation over MC-dropout samples (the predictive spread; a regressor predicts no noise, so this is its epistemic
  part). The weights, keyed by output name, also put outputs of different units on one scale.

For any catalogue:

- ``random``: uniform in [0, 1) from a BLAKE2b hash of ``(seed, id_str)``, so a galaxy's score never depends on which
  batch or file it is read in (the baseline in the label-efficiency experiment).

A function names the kind of catalogue it scores (``task``: ``dirichlet``, ``classification``, ``regression``, or
None for any); :func:`catalogue_task` tells the kind of a catalogue from its columns.

Per-question weights (default 1, keyed by question name; by output name for a regressor) let a science team target a
question, e.g. bars. The question with the largest weighted term is the one "driving" a galaxy's score
(``top_question``).

More functions rank under their own name once registered; a function gets a batch holding ``id_str`` and the columns
it declares, the catalogue's questions, their weights (an array in question order) and the seed, and returns its
scores (higher: more wanted) or ``(scores, top)``::

    def strong_bars(batch, questions, weights, seed):
        return batch.column("bar-dr5_strong_fraction").to_numpy(zero_copy_only=False)

    register_acquisition("strong_bars", strong_bars, columns=["bar-dr5_strong_fraction"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zoobot_pipeline.catalogue import (
    CLASS_PREFIX,
    ENTROPY,
    MUTUAL_INFORMATION,
    PREDICTED,
    PROBABILITY_ASKED,
    QUESTION_QUANTITIES,
    STD_SUFFIX,
    catalogue_questions,
    question_column,
    std_column,
)
from zoobot_pipeline.errors import ZoobotPipelineError, check_name
from zoobot_pipeline.io import blake2b64
from zoobot_pipeline.stats import weighted_question_terms

__all__ = [
    "ACQUISITION_FUNCTIONS", "CATALOGUE_TASKS", "AcquisitionFunction", "available_acquisitions", "catalogue_task",
    "catalogue_targets", "entropy", "get_acquisition", "mutual_information", "question_terms", "random",
    "register_acquisition", "regression_outputs", "required_columns", "resolve_weights", "score", "top_question",
]

Batch = pa.RecordBatch | pa.Table
Scorer = Callable[[Batch, Sequence[str], np.ndarray, int], np.ndarray | tuple[np.ndarray, np.ndarray]]
RANDOM = "random"
CLASS_MUTUAL_INFORMATION = "class_mutual_information"
PREDICTIVE_STD = "predictive_std"
ACQUISITION_FUNCTIONS = (MUTUAL_INFORMATION, ENTROPY, RANDOM, CLASS_MUTUAL_INFORMATION, PREDICTIVE_STD)
"""The built-in acquisition functions (:func:`available_acquisitions` lists every registered one)."""
CATALOGUE_TASKS = ("dirichlet", "classification", "regression")
"""Kinds of catalogue (the model package's task)."""


@dataclass(frozen=True)
class AcquisitionFunction:
    """A registered acquisition function: ``score(batch, questions, weights, seed)`` returns float scores ``(n,)``,
    or ``(scores, top)`` with ``top`` the index in ``questions`` of the question driving each score (-1: none). It
    reads ``id_str``, ``{question}_{quantity}`` of every question for each quantity of ``per_question``, and
    ``columns``; a ``regression`` function gets the regressor's outputs as its questions and reads their
    ``{output}_std``. ``task``: the kind of catalogue it scores (None: any)."""

    name: str
    score: Scorer
    per_question: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    task: str | None = None


_REGISTRY: dict[str, AcquisitionFunction] = {}


def register_acquisition(name: str, function: Scorer, *, per_question: Iterable[str] = (),
                         columns: Iterable[str] = (), task: str | None = None,
                         replace: bool = False) -> AcquisitionFunction:
    """Make ``function`` available as acquisition ``name`` (see the module docstring); ``per_question`` quantities
    are among ``mutual_information``, ``entropy`` and ``probability_asked`` (and make ``task`` ``dirichlet`` unless
    given). A name already registered is an error unless ``replace``."""
    if not isinstance(name, str) or not name:
        raise ZoobotPipelineError(f"an acquisition function needs a non-empty name, got {name!r}")
    if not callable(function):
        raise ZoobotPipelineError(f"acquisition function {name!r}: {function!r} is not callable")
    if name in _REGISTRY and not replace:
        raise ZoobotPipelineError(f"acquisition function {name!r} is already registered; pass replace=True to "
                                  "replace it")
    quantities = tuple(check_name(q, QUESTION_QUANTITIES, "per-question quantity") for q in per_question)
    if task is None and quantities:
        task = "dirichlet"
    if task is not None:
        check_name(task, CATALOGUE_TASKS, "catalogue task")
    entry = AcquisitionFunction(name, function, quantities, tuple(columns), task)
    _REGISTRY[name] = entry
    return entry


def available_acquisitions() -> tuple[str, ...]:
    """Names of the registered acquisition functions, the built-ins first."""
    return tuple(_REGISTRY)


def get_acquisition(name: str) -> AcquisitionFunction:
    """The acquisition function registered as ``name`` (:class:`~zoobot_pipeline.errors.UnknownNameError` if
    none)."""
    return _REGISTRY[check_name(name, _REGISTRY, "acquisition function")]


def required_columns(function: str, questions: Sequence[str]) -> list[str]:
    """Catalogue columns that ``function`` reads (``id_str`` always); ``questions``: its
    :func:`catalogue_targets`."""
    entry = get_acquisition(function)
    per_question = [question_column(q, quantity) for quantity in entry.per_question for q in questions]
    if entry.task == "regression":
        per_question += [std_column(output) for output in questions]
    return list(dict.fromkeys(["id_str", *per_question, *entry.columns]))


def regression_outputs(schema: pa.Schema) -> list[str]:
    """The outputs of a regressor's catalogue: names with both an ``{output}`` and an ``{output}_std`` column."""
    names = set(schema.names)
    return [name.removesuffix(STD_SUFFIX) for name in schema.names
            if name.endswith(STD_SUFFIX) and name.removesuffix(STD_SUFFIX) in names]


def catalogue_task(schema: pa.Schema) -> str | None:
    """The kind of catalogue (:data:`CATALOGUE_TASKS`) from its columns: per-question mutual information (a
    decision tree), class probabilities with ``mutual_information`` and ``predicted`` (a classifier), or outputs
    with their ``_std`` (a regressor); None if none fits."""
    names = set(schema.names)
    if catalogue_questions(schema):
        return "dirichlet"
    if {MUTUAL_INFORMATION, PREDICTED} <= names and any(n.startswith(CLASS_PREFIX) for n in names):
        return "classification"
    if regression_outputs(schema):
        return "regression"
    return None


def catalogue_targets(function: str, schema: pa.Schema) -> list[str]:
    """What ``function``'s weights and top question refer to in a catalogue of ``schema``: the regressor's outputs
    for a ``regression`` function, otherwise the decision tree's questions (none for other catalogues)."""
    if get_acquisition(function).task == "regression":
        return regression_outputs(schema)
    return catalogue_questions(schema)


def resolve_weights(questions: Sequence[str], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-question weights in ``questions`` order: 1 unless given; unknown names and negative weights are errors."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(questions))
    if unknown:
        raise ZoobotPipelineError(f"weights name unknown question(s) {', '.join(unknown)}; the catalogue has "
                                  f"{', '.join(questions) or 'no questions (or outputs) to weight'}")
    bad = {q: w for q, w in weights.items() if not np.isfinite(w) or w < 0}
    if bad:
        raise ZoobotPipelineError(f"weights must be finite and non-negative, got {bad}")
    return np.array([float(weights.get(q, 1.0)) for q in questions], dtype=np.float64)


def _column(batch: Batch, name: str) -> np.ndarray:
    if name not in batch.schema.names:
        raise ZoobotPipelineError(f"catalogue batch has no column {name!r}")
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _per_question(batch: Batch, quantity: str, questions: Sequence[str]) -> np.ndarray:
    """``(n, Q)`` float64 values of ``{question}_{quantity}``; nulls become NaN."""
    values = np.empty((batch.num_rows, len(questions)), dtype=np.float64)
    for j, q in enumerate(questions):
        values[:, j] = _column(batch, question_column(q, quantity))
    return values


def _terms(batch: Batch, quantity: str, questions: Sequence[str], weights: np.ndarray) -> np.ndarray:
    return weighted_question_terms(_per_question(batch, quantity, questions),
                                   _per_question(batch, PROBABILITY_ASKED, questions), weights)


def question_terms(batch: Batch, quantity: str, questions: Sequence[str] | None = None,
                   weights: Mapping[str, float] | None = None) -> np.ndarray:
    """``(n, Q)`` float64 terms ``w_q * value_q * P(asked_q)`` for ``quantity`` ``mutual_information`` or
    ``entropy`` (questions: by default the batch's); nulls become NaN."""
    check_name(quantity, (MUTUAL_INFORMATION, ENTROPY), "per-question quantity")
    questions = list(questions) if questions is not None else catalogue_questions(batch.schema)
    return _terms(batch, quantity, questions, resolve_weights(questions, weights))


def mutual_information(batch: Batch, weights: Mapping[str, float] | None = None,
                       questions: Sequence[str] | None = None) -> np.ndarray:
    """BALD score per row: ``sum_q w_q * MI_q * P(asked_q)``."""
    return question_terms(batch, MUTUAL_INFORMATION, questions, weights).sum(axis=1)


def entropy(batch: Batch, weights: Mapping[str, float] | None = None,
            questions: Sequence[str] | None = None) -> np.ndarray:
    """Predictive-entropy score per row: ``sum_q w_q * H_q * P(asked_q)``."""
    return question_terms(batch, ENTROPY, questions, weights).sum(axis=1)


def random(batch: Batch | Sequence[str], seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) score per ``id_str`` from BLAKE2b of ``(seed, id_str)``: the same galaxy and seed always give
    the same score, whatever else is in the batch."""
    ids = batch.column("id_str").to_pylist() if isinstance(batch, pa.RecordBatch | pa.Table) else list(batch)
    key = str(int(seed)).encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, id_str in enumerate(ids):
        out[i] = (blake2b64(str(id_str), key=key) >> 11) * 2.0**-53
    return out


def top_question(terms: np.ndarray) -> np.ndarray:
    """Index of the question with the largest weighted term in each row of ``(n, Q)`` ``terms``."""
    return np.argmax(terms, axis=1)


def score(batch: Batch, function: str, questions: Sequence[str], weights: Mapping[str, float] | None = None,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, top)`` of the registered ``function``: float64 scores and, per row, the index in ``questions`` of
    the question driving the score (-1 where none does, as for ``random``)."""
    entry = get_acquisition(function)
    questions = list(questions)
    result = entry.score(batch, questions, resolve_weights(questions, weights), seed)
    scores, top = result if isinstance(result, tuple) else (result, None)
    scores = np.asarray(scores, dtype=np.float64)
    top = np.full(batch.num_rows, -1, dtype=np.int64) if top is None else np.asarray(top, dtype=np.int64)
    if scores.shape != (batch.num_rows,) or top.shape != (batch.num_rows,):
        raise ZoobotPipelineError(f"acquisition function {function!r} returned scores {scores.shape} and top "
                                  f"questions {top.shape} for a batch of {batch.num_rows} rows")
    if np.any((top < -1) | (top >= len(questions))):
        raise ZoobotPipelineError(f"acquisition function {function!r} returned a top question index outside "
                                  f"-1..{len(questions) - 1}")
    return scores, top


def _question_sum(quantity: str) -> Scorer:
    """The built-in ``sum_q w_q * value_q * P(asked_q)`` of ``quantity``, with the question of the largest term."""

    def question_sum(batch: Batch, questions: Sequence[str], weights: np.ndarray,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
        terms = _terms(batch, quantity, questions, weights)
        top = top_question(terms) if len(questions) else np.full(batch.num_rows, -1, dtype=np.int64)
        return terms.sum(axis=1), top

    return question_sum


def _random(batch: Batch, questions: Sequence[str], weights: np.ndarray, seed: int) -> np.ndarray:
    return random(batch, seed)


def _class_mutual_information(batch: Batch, questions: Sequence[str], weights: np.ndarray, seed: int) -> np.ndarray:
    return _column(batch, MUTUAL_INFORMATION)


def _predictive_std(batch: Batch, outputs: Sequence[str], weights: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    terms = np.empty((batch.num_rows, len(outputs)), dtype=np.float64)
    for j, output in enumerate(outputs):
        terms[:, j] = _column(batch, std_column(output)) * weights[j]
    return terms.sum(axis=1), top_question(terms)


register_acquisition(MUTUAL_INFORMATION, _question_sum(MUTUAL_INFORMATION),
                     per_question=(MUTUAL_INFORMATION, PROBABILITY_ASKED))
register_acquisition(ENTROPY, _question_sum(ENTROPY), per_question=(ENTROPY, PROBABILITY_ASKED))
register_acquisition(RANDOM, _random)
register_acquisition(CLASS_MUTUAL_INFORMATION, _class_mutual_information, columns=(MUTUAL_INFORMATION,),
                     task="classification")
register_acquisition(PREDICTIVE_STD, _predictive_std, task="regression")
