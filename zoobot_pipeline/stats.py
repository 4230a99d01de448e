"""Framework-free maths shared by every backend: Dirichlet-Multinomial likelihoods, expected vote fractions, the
vote-space entropy and mutual information (BALD) used to pick galaxies for volunteers, the same over a classifier's
classes, and the acquisition score that weighs each question's information by the chance it is asked.

Shapes: ``n`` galaxies, ``S`` MC-dropout samples, ``k`` answers of one question, ``A`` answers of a whole schema.

Vote-space information, one question, ``N`` volunteers: every MC sample ``s`` predicts a Dirichlet-Multinomial
``p_s(votes)`` over the ``C(N + k - 1, k - 1)`` possible vote outcomes; the predictive is their mixture
``m = mean_s p_s``. Predictive entropy is ``H[m]``; the mutual information between votes and model parameters is
``H[m] - mean_s H[p_s] = mean_s KL(p_s || m)`` (Walmsley et al. 2020, MNRAS 491, 1554).

``method="exact"`` enumerates every outcome. ``method="sampled"`` draws ``n_draws`` vote outcomes from each ``p_s``
and averages ``log p_s(v) - log m(v)`` with exact log-probabilities: the KL form has far lower variance than
estimating the two entropies separately, because each term is bounded above by ``log S`` and vanishes when the
samples agree. ``method="auto"`` enumerates while that is no dearer than sampling (``n_outcomes <= S * n_draws``).

Acquisition: ``sum_q w_q * value_q * P(asked_q)``, with ``value_q`` the mutual information (BALD) or predictive
entropy of question ``q`` and ``P(asked_q)`` the probability that volunteers are asked it
(:func:`weighted_question_terms`, :func:`acquisition_score`).

Seeds of the sampled estimate: each galaxy draws from its own random stream, so its values never depend on the other
galaxies of the call, on chunking or on threads. ``seed`` is either one non-negative int (galaxy ``g`` of the call
gets the stream of ``(seed, g)``) or one non-negative integer per galaxy (a galaxy keeps its stream wherever it is
scored, e.g. a hash of its id); question ``q`` of a tree mixes in ``q``, a single question counts as question 0.
"""

from __future__ import annotations

from functools import cache
from itertools import combinations
from math import comb
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from zoobot_pipeline.errors import check_name
from zoobot_pipeline.schemas import Schema

__all__ = [
    "acquisition_score",
    "class_entropy",
    "class_mutual_information",
    "dirichlet_multinomial_log_prob",
    "dirichlet_multinomial_nll",
    "expected_fractions",
    "n_vote_outcomes",
    "population_concentrations",
    "predictive_entropy",
    "question_mutual_information",
    "reliability_bins",
    "schema_vote_information",
    "vote_fraction_metrics",
    "vote_information",
    "vote_outcomes",
    "weighted_question_terms",
    "Reliability",
    "VoteInformation",
]

Method = Literal["auto", "exact", "sampled"]
Seed = int | np.ndarray
DEFAULT_DRAWS = 32
_CHUNK_ELEMENTS = 250_000
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def dirichlet_multinomial_log_prob(votes: np.ndarray, concentrations: np.ndarray) -> np.ndarray:
    """Exact log-probability of vote counts ``(n, k)`` under Dirichlet-Multinomials ``(n, k)``; ``(n,)``.

    A galaxy with no votes for the question gives exactly 0.
    """
    votes = np.asarray(votes, dtype=np.float64)
    alpha = np.asarray(concentrations, dtype=np.float64)
    if votes.shape != alpha.shape:
        raise ValueError(f"votes {votes.shape} and concentrations {alpha.shape} must have the same shape")
    if np.any(votes < 0):
        raise ValueError("vote counts must be non-negative")
    if np.any(~(alpha > 0)):
        raise ValueError("concentrations must be positive and finite")
    from scipy.special import gammaln  # ~0.15 s to import: scoring does not need it

    total = votes.sum(axis=-1)
    alpha_sum = alpha.sum(axis=-1)
    log_prob = (
        gammaln(total + 1)
        + gammaln(alpha_sum)
        - gammaln(total + alpha_sum)
        + np.sum(gammaln(votes + alpha) - gammaln(alpha) - gammaln(votes + 1), axis=-1)
    )
    return np.where(total == 0, 0.0, log_prob)


def dirichlet_multinomial_nll(votes: np.ndarray, concentrations: np.ndarray, schema: Schema) -> np.ndarray:
    """Negative log-likelihood of each question's votes ``(n, A)`` given concentrations ``(n, A)``: ``(n, Q)``.

    Training losses sum this over questions and average over the batch.
    """
    votes = np.asarray(votes)
    concentrations = np.asarray(concentrations)
    _check_answers(votes, schema, "votes")
    _check_answers(concentrations, schema, "concentrations")
    return np.stack(
        [-dirichlet_multinomial_log_prob(votes[..., q.slice], concentrations[..., q.slice]) for q in schema.questions],
        axis=-1,
    )


def expected_fractions(concentrations: np.ndarray, schema: Schema) -> np.ndarray:
    """Expected vote fraction of every answer, ``a_j / sum(a)`` within its question; ``(n, A)``.

    Given MC samples ``(n, S, A)``, the fractions are averaged over the samples.
    """
    alpha = np.asarray(concentrations, dtype=np.float64)
    _check_answers(alpha, schema, "concentrations")
    fractions = np.empty_like(alpha)
    for q in schema.questions:
        block = alpha[..., q.slice]
        fractions[..., q.slice] = block / block.sum(axis=-1, keepdims=True)
    return fractions.mean(axis=1) if fractions.ndim == 3 else fractions


class Reliability(NamedTuple):
    """Reliability of predicted fractions: ``n_bins`` equal-width bins of the predicted value over [0, 1]; per bin
    the number of points and their mean predicted and mean observed value (NaN in an empty bin)."""

    edges: np.ndarray
    count: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray

    @property
    def calibration_error(self) -> float:
        """Count-weighted mean of ``|mean predicted - mean observed|`` over the bins (expected calibration error);
        NaN without points."""
        total = int(self.count.sum())
        if total == 0:
            return float("nan")
        filled = self.count > 0
        gaps = np.abs(self.predicted[filled] - self.observed[filled])
        return float(np.sum(self.count[filled] * gaps) / total)


def reliability_bins(predicted: np.ndarray, observed: np.ndarray, n_bins: int = 10) -> Reliability:
    """Bin ``predicted`` values in [0, 1] into ``n_bins`` equal-width bins (the last one closed) and average the
    ``observed`` values in each (see :class:`Reliability`); a perfectly calibrated model has them equal."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    observed = np.asarray(observed, dtype=np.float64).ravel()
    if predicted.shape != observed.shape:
        raise ValueError(f"predicted {predicted.shape} and observed {observed.shape} must have the same shape")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip((predicted * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=predicted, minlength=n_bins) / count
        mean_observed = np.bincount(index, weights=observed, minlength=n_bins) / count
    return Reliability(edges, count, mean_predicted, mean_observed)


def vote_fraction_metrics(votes: np.ndarray, concentrations: np.ndarray, schema: Schema,
                          n_bins: int = 10) -> dict[str, Any]:
    """How well concentrations ``(n, A)`` (one forward pass, dropout off) predict volunteers' votes ``(n, A)``.

    Per question, over the galaxies asked it (at least one vote): ``n_asked``, ``nll`` (mean Dirichlet-Multinomial
    negative log-likelihood of the votes, :func:`dirichlet_multinomial_nll`) and ``fraction_mae`` (mean absolute error
    of the expected fractions, :func:`expected_fractions`, against the observed vote fractions, averaged over the
    question's answers); None where no galaxy was asked. ``calibration``: :func:`reliability_bins` of every answer's
    predicted fraction against its observed fraction, one point per galaxy asked the question and answer, as lists
    (None in empty bins), with its ``calibration_error``. Returns ``{"questions": {name: {...}}, "calibration":
    {...}}``, ready for JSON.
    """
    votes = np.asarray(votes, dtype=np.float64)
    alpha = np.asarray(concentrations, dtype=np.float64)
    nll = dirichlet_multinomial_nll(votes, alpha, schema)
    predicted = expected_fractions(alpha, schema)
    questions: dict[str, dict[str, float | int | None]] = {}
    all_predicted, all_observed = [], []
    for q in schema.questions:
        block = votes[:, q.slice]
        total = block.sum(axis=1)
        asked = total > 0
        observed = block[asked] / total[asked, None]
        guess = predicted[asked][:, q.slice]
        n_asked = int(asked.sum())
        questions[q.name] = {
            "n_asked": n_asked,
            "nll": float(nll[asked, q.index].mean()) if n_asked else None,
            "fraction_mae": float(np.abs(guess - observed).mean()) if n_asked else None,
        }
        all_predicted.append(guess.ravel())
        all_observed.append(observed.ravel())
    bins = reliability_bins(np.concatenate(all_predicted), np.concatenate(all_observed), n_bins)

    def listed(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in values]

    calibration = {"edges": bins.edges.tolist(), "count": bins.count.tolist(), "predicted": listed(bins.predicted),
                   "observed": listed(bins.observed),
                   "calibration_error": None if np.isnan(bins.calibration_error) else bins.calibration_error}
    return {"questions": questions, "calibration": calibration}


def population_concentrations(votes: np.ndarray, schema: Schema) -> np.ndarray:
    """The best constant model of a vote catalogue ``(n, A)``: concentrations ``(A,)``, question by question.

    Fractions are the population-mean vote fractions of the galaxies asked the question; the total concentration
    maximises the Dirichlet-Multinomial likelihood of their votes. The baseline a trained model must beat.
    """
    from scipy.optimize import minimize_scalar  # scipy.optimize: ~0.3 s, needed here only

    votes = np.asarray(votes)
    _check_answers(votes, schema, "votes")
    alpha = np.empty(schema.n_answers)
    for q in schema.questions:
        asked = votes[votes[:, q.slice].sum(axis=1) > 0][:, q.slice]
        if len(asked) == 0:
            alpha[q.slice] = 1.0
            continue
        fractions = np.clip((asked / asked.sum(axis=1, keepdims=True)).mean(axis=0), 1e-6, None)

        def nll(log_total: float, asked: np.ndarray = asked, fractions: np.ndarray = fractions) -> float:
            return -float(dirichlet_multinomial_log_prob(asked, np.broadcast_to(fractions * np.exp(log_total),
                                                                                 asked.shape)).sum())

        best = minimize_scalar(nll, bounds=(np.log(0.01), np.log(1e5)), method="bounded")
        alpha[q.slice] = fractions * np.exp(best.x)
    return alpha


@cache
def vote_outcomes(n_volunteers: int, n_answers: int) -> np.ndarray:
    """Every way ``n_volunteers`` votes can split over ``n_answers`` answers; ``(C(N+k-1, k-1), k)`` int array."""
    bars = np.array(list(combinations(range(n_volunteers + n_answers - 1), n_answers - 1)), dtype=np.int64)
    bars = bars.reshape(-1, n_answers - 1)
    edges = np.concatenate(
        [np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n_volunteers + n_answers - 1)], axis=1
    )
    outcomes = np.diff(edges, axis=1) - 1
    outcomes.setflags(write=False)
    return outcomes


def n_vote_outcomes(n_volunteers: int, n_answers: int) -> int:
    """``C(N + k - 1, k - 1)``: the size of the vote-outcome space."""
    return comb(n_volunteers + n_answers - 1, n_answers - 1)


class VoteInformation(NamedTuple):
    """Vote-space information in nats: ``(n,)`` arrays for one question, ``(n, n_questions)`` for a tree."""

    mutual_information: np.ndarray
    predictive_entropy: np.ndarray


def vote_information(
    concentrations: np.ndarray,
    n_volunteers: int = 40,
    method: Method = "auto",
    n_draws: int = DEFAULT_DRAWS,
    seed: Seed = 0,
) -> VoteInformation:
    """Mutual information (BALD) and predictive entropy of ``n_volunteers`` votes on one question, from MC samples.

    ``concentrations`` are ``(n, S, k)``; both quantities come from one pass (see the module docstring).
    """
    return VoteInformation(*_vote_space_information(concentrations, n_volunteers, method, n_draws, seed, 0))


def question_mutual_information(
    concentrations: np.ndarray,
    n_volunteers: int = 40,
    method: Method = "auto",
    n_draws: int = DEFAULT_DRAWS,
    seed: Seed = 0,
) -> np.ndarray:
    """Mutual information (BALD) between ``n_volunteers`` votes on one question and the model; ``(n,)`` in nats."""
    return vote_information(concentrations, n_volunteers, method, n_draws, seed).mutual_information


def predictive_entropy(
    concentrations: np.ndarray,
    n_volunteers: int = 40,
    method: Method = "auto",
    n_draws: int = DEFAULT_DRAWS,
    seed: Seed = 0,
) -> np.ndarray:
    """Entropy (nats) of the predicted distribution of ``n_volunteers`` votes on one question, ``(n,)``.

    The prediction is the mixture over MC samples ``(n, S, k)`` of their Dirichlet-Multinomials.
    """
    return vote_information(concentrations, n_volunteers, method, n_draws, seed).predictive_entropy


def schema_vote_information(
    concentrations: np.ndarray,
    schema: Schema,
    n_volunteers: int = 40,
    method: Method = "auto",
    n_draws: int = DEFAULT_DRAWS,
    seed: Seed = 0,
) -> VoteInformation:
    """Per-question mutual information and predictive entropy for MC samples ``(n, S, A)``; each ``(n, Q)``.

    ``seed``: see the module docstring. Not weighted by the probability each question is asked: acquisition does that
    (``schema.probability_asked``).
    """
    alpha = np.asarray(concentrations, dtype=np.float64)
    if alpha.ndim != 3:
        raise ValueError(f"expected MC samples of shape (n, S, A), got {alpha.shape}")
    _check_answers(alpha, schema, "concentrations")
    per_question = [
        _vote_space_information(alpha[..., q.slice], n_volunteers, method, n_draws, seed, q.index)
        for q in schema.questions
    ]
    return VoteInformation(*(np.stack(values, axis=-1) for values in zip(*per_question, strict=True)))


def class_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy in nats of class probabilities over the last axis (``0 log 0 = 0``)."""
    from scipy.special import xlogy

    p = np.asarray(probabilities, dtype=np.float64)
    return -xlogy(p, p).sum(axis=-1)


def class_mutual_information(probabilities: np.ndarray) -> np.ndarray:
    """Mutual information (BALD) between the class and the model from MC samples of class probabilities
    ``(n, S, C)``: entropy of the mean minus the mean entropy, in nats, clipped at 0; ``(n,)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"expected MC samples of class probabilities of shape (n, S, C), got {p.shape}")
    return np.maximum(class_entropy(p.mean(axis=1)) - class_entropy(p).mean(axis=1), 0.0)


def weighted_question_terms(values: np.ndarray, asked: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Each question's acquisition term ``w_q * value_q * P(asked_q)``, float64 ``(n, Q)``, from per-question values
    and probabilities asked ``(n, Q)`` and weights ``(Q,)`` (default 1). NaN (a missing value) stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    asked = np.asarray(asked, dtype=np.float64)
    if values.ndim != 2 or values.shape != asked.shape:
        raise ValueError(f"values {values.shape} and probabilities asked {asked.shape} must both be (n, Q)")
    terms = values * asked
    if weights is None:
        return terms
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (values.shape[1],):
        raise ValueError(f"expected {values.shape[1]} question weights, got shape {weights.shape}")
    return terms * weights


def acquisition_score(values: np.ndarray, asked: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_q w_q * value_q * P(asked_q)`` per galaxy, ``(n,)`` float64 (see :func:`weighted_question_terms`);
    with mutual-information values and unit weights, the catalogue's ``acquisition`` column."""
    return weighted_question_terms(values, asked, weights).sum(axis=1)


def _mix(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """SplitMix64 finaliser of ``a + golden * (b + 1)``, elementwise on wrapping uint64 arrays (``a`` at least 1-d,
    so numpy wraps silently instead of warning as it does for scalars)."""
    x = np.asarray(a, dtype=np.uint64) + _GOLDEN * (np.atleast_1d(np.asarray(b, dtype=np.uint64)) + np.uint64(1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _streams(seed: Seed, n: int, question: int) -> np.ndarray:
    """The seed (< 2**32) of each of ``n`` galaxies' random streams for ``question`` (see the module docstring)."""
    seeds = np.asarray(seed)
    if seeds.ndim == 0:
        if seeds.dtype.kind not in "iu" or int(seeds) < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        keys = _mix(np.full(n, int(seeds), dtype=np.uint64), np.arange(n, dtype=np.uint64))
    else:
        if seeds.shape != (n,) or seeds.dtype.kind not in "iu" or (seeds.dtype.kind == "i" and np.any(seeds < 0)):
            raise ValueError(f"per-galaxy seeds must be {n} non-negative integers, got {seeds.dtype} {seeds.shape}")
        keys = seeds.astype(np.uint64)
    return (_mix(keys, question) >> np.uint64(32)).astype(np.int64)


def _vote_space_information(
    concentrations: np.ndarray, n_volunteers: int, method: Method, n_draws: int, seed: Seed, question: int
) -> tuple[np.ndarray, np.ndarray]:
    """(mutual information, predictive entropy), each ``(n,)``, for one question's MC samples ``(n, S, k)``."""
    alpha = np.ascontiguousarray(concentrations, dtype=np.float64)
    if alpha.ndim != 3:
        raise ValueError(f"expected MC samples of shape (n, S, k), got {alpha.shape}")
    if np.any(~(alpha > 0)) or np.any(~np.isfinite(alpha)):
        raise ValueError("concentrations must be positive and finite")
    if n_volunteers < 0:
        raise ValueError("n_volunteers must be >= 0")
    if n_draws < 1:
        raise ValueError("n_draws must be >= 1")
    # numba: ~0.3 s to import, ~0.5 s more at the first call; the kernels themselves come compiled from numba's cache
    # (written at install time, see _vote_space), else they compile here, 5-10 s
    from zoobot_pipeline._vote_space import exact_information, log_term_tables, sampled_information

    n, n_samples, k = alpha.shape
    if n_volunteers == 0 or k == 1 or n == 0:
        return np.zeros(n), np.zeros(n)
    if check_name(method, get_args(Method), "method") == "auto":
        method = "exact" if n_vote_outcomes(n_volunteers, k) <= n_samples * n_draws else "sampled"
    streams = _streams(seed, n, question)
    mi = np.empty(n)
    entropy = np.empty(n)
    chunk = max(1, _CHUNK_ELEMENTS // (n_samples * k * (n_volunteers + 1)))
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        tables = log_term_tables(alpha[part], n_volunteers)
        constant = -log_term_tables(alpha[part].sum(axis=-1, keepdims=True), n_volunteers)[..., 0, n_volunteers]
        if method == "exact":
            mi[part], entropy[part] = exact_information(tables, constant, vote_outcomes(n_volunteers, k))
        else:
            mi[part], entropy[part] = sampled_information(alpha[part], tables, constant, n_draws, streams[part])
    return np.maximum(mi, 0.0), entropy


def _check_answers(array: np.ndarray, schema: Schema, what: str) -> None:
    if array.shape[-1] != schema.n_answers:
        raise ValueError(
            f"{what} have {array.shape[-1]} answer columns but schema {schema.name!r} has {schema.n_answers}"
        )
