"""Stochastic batch acquisition (Kirsch et al., "Stochastic Batch Acquisition", TMLR 2023): numpy only.

Top-K of a per-galaxy score picks many near-identical galaxies (the first batch of the label-efficiency experiment was
47% stars). Instead, draw the batch without replacement with probability proportional to a weight of the score:

- ``power``: ``score ** beta`` (scores must be >= 0; a score of 0 is never drawn before every positive one);
- ``softmax``: ``exp(beta * score)``;
- ``softrank``: ``rank ** -beta``, ``rank`` = 1 + the number of eligible galaxies with a strictly higher score
  (tied galaxies share a rank and so a weight).

``top_k`` is the deterministic ranking (``beta`` unused); ``beta`` -> infinity turns each stochastic mode into it,
and ``beta`` -> 0 into a uniform draw. Without an explicit mode, a function samples by ``power``
(:data:`DEFAULT_SAMPLING`: the label-efficiency benchmark's choice, see ``benchmarks/README.md``).

Drawing K without replacement with probability proportional to ``w`` equals taking the K largest of
``log(w) + G`` (Gumbel-top-K), with ``G`` independent standard Gumbel noise. So the sampler is the ranking's
streaming top-K over a perturbed key (:func:`perturbed_keys`): ``log(score) + G/beta`` (power), ``score + G/beta``
(softmax), ``-log(rank) + G/beta`` (softrank); O(N log K) time and O(K) memory, except that softrank needs every
eligible score to know a galaxy's rank: the ranking reads the catalogue twice, keeping the eligible scores (8 bytes a
galaxy) between the passes. A galaxy's noise comes from a keyed BLAKE2b hash of ``(seed, id_str)``
(:func:`gumbel_noise`), never from its position in a batch, chunk or file, so the drawn batch depends only on the
scores, the seed and ``beta``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoobot_pipeline.errors import ZoobotPipelineError, check_name
from zoobot_pipeline.io import blake2b64

__all__ = [
    "DEFAULT_SAMPLING", "SAMPLINGS", "STOCHASTIC_SAMPLINGS", "STRATEGY_SHORTHANDS", "TOP_K", "check_beta",
    "check_random_fraction", "gumbel_noise", "mix_order", "perturbed_keys", "population_ranks", "random_count",
    "resolve_strategy",
]

TOP_K = "top_k"
STOCHASTIC_SAMPLINGS = ("power", "softmax", "softrank")
SAMPLINGS = (TOP_K, *STOCHASTIC_SAMPLINGS)
"""How a batch is drawn from the scores: ``top_k`` (deterministic) or one of the stochastic modes."""
DEFAULT_SAMPLING = "power"
"""The mode of an acquisition function given without one (``benchmarks/results/active_learning.json``: top-K of
mutual information needed more labels than random; power sampling of it fewer)."""
STRATEGY_SHORTHANDS = {f"{mode}_bald": ("mutual_information", mode) for mode in STOCHASTIC_SAMPLINGS}
"""``power_bald`` etc.: acquisition ``mutual_information`` (BALD) drawn by that sampling mode."""
_GUMBEL_DOMAIN = "gumbel"  # keeps the noise independent of the seeded ``random`` acquisition's hash of the same ids


def resolve_strategy(acquisition: str, sampling: str | None = None) -> tuple[str, str]:
    """``(acquisition function, sampling mode)`` of an acquisition name or shorthand (``power_bald`` is
    ``("mutual_information", "power")``); without ``sampling`` a function samples by :data:`DEFAULT_SAMPLING`, and a
    shorthand with a different explicit ``sampling`` is an error."""
    if sampling is not None:
        check_name(sampling, SAMPLINGS, "sampling mode")
    if acquisition not in STRATEGY_SHORTHANDS:
        return acquisition, sampling or DEFAULT_SAMPLING
    function, mode = STRATEGY_SHORTHANDS[acquisition]
    if sampling not in (None, mode):
        raise ZoobotPipelineError(f"acquisition {acquisition!r} samples by {mode!r}; it cannot be combined with "
                                  f"sampling {sampling!r} (use acquisition {function!r} with sampling {sampling!r})")
    return function, mode


def check_beta(beta: float) -> float:
    """``beta`` as a float if it is finite and > 0, else an error."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ZoobotPipelineError(f"beta must be a finite number > 0, got {beta!r}")
    return value


def check_random_fraction(fraction: float) -> float:
    """``fraction`` as a float if ``0 <= fraction < 1``, else an error."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise ZoobotPipelineError(f"random fraction must be at least 0 and below 1, got {fraction!r}")
    return value


def random_count(top_k: int, fraction: float) -> int:
    """How many of ``top_k`` galaxies are drawn uniformly at random: ``round(fraction * top_k)`` (half to even)."""
    return int(round(check_random_fraction(fraction) * top_k))


def gumbel_noise(ids: Sequence[str], seed: int) -> np.ndarray:
    """Standard Gumbel noise per ``id_str``: ``-log(-log(u))`` with ``u`` in (0, 1) from a BLAKE2b hash keyed by
    ``seed``; the same galaxy and seed always get the same noise."""
    key = f"{_GUMBEL_DOMAIN}:{int(seed)}".encode()
    u = np.fromiter(((blake2b64(str(i), key=key) >> 11) + 0.5 for i in ids), dtype=np.float64, count=len(ids))
    u *= 2.0**-53
    return -np.log(-np.log(u))


def population_ranks(sorted_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank of each of ``scores`` in a population whose scores, ascending, are ``sorted_scores``: 1 + how many are
    strictly higher (ties share the best rank)."""
    higher = len(sorted_scores) - np.searchsorted(sorted_scores, scores, side="right")
    return (higher + 1).astype(np.float64)


def perturbed_keys(scores: np.ndarray, ids: Sequence[str], sampling: str, beta: float, seed: int,
                   ranks: np.ndarray | None = None) -> np.ndarray:
    """Keys whose top K is a draw without replacement in proportion to the ``sampling`` weight of ``scores`` (see
    the module docstring); ``top_k`` returns the scores. ``softrank`` needs the population ``ranks``
    (:func:`population_ranks`); ``power`` needs scores >= 0."""
    scores = np.asarray(scores, dtype=np.float64)
    check_name(sampling, SAMPLINGS, "sampling mode")
    if sampling == TOP_K:
        return scores.copy()
    noise = gumbel_noise(ids, seed) / check_beta(beta)
    if sampling == "softmax":
        return scores + noise
    if sampling == "power":
        if np.any(scores < 0):
            raise ZoobotPipelineError(f"power sampling needs scores >= 0, got {scores[scores < 0][0]}")
        with np.errstate(divide="ignore"):
            return np.log(scores) + noise
    if ranks is None:
        raise ZoobotPipelineError("softrank sampling needs the ranks of the scores in the whole population")
    return -np.log(np.asarray(ranks, dtype=np.float64)) + noise


def mix_order(parts: np.ndarray) -> np.ndarray:
    """The queue order of picks from several parts (``parts``: each pick's part label, e.g. whether it is from the
    random part), each part already in its own order: the parts are interleaved evenly, pick ``i`` of a part of ``n``
    at ``(i + 0.5) / n`` (ties: the lower label first), so every prefix of the queue holds about each part's share.
    Returns indices into ``parts``."""
    parts = np.asarray(parts)
    position = np.empty(len(parts), dtype=np.float64)
    for part in np.unique(parts):
        members = np.flatnonzero(parts == part)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((parts, position))
