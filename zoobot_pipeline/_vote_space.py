"""Compiled kernels for vote-space entropy and mutual information (see ``zoobot_pipeline.stats``).

Inputs are log-term tables made by ``stats`` with vectorised numpy: ``tables[g, s, i, v] = lgamma(v + a_i) -
lgamma(a_i) - lgamma(v + 1)`` and ``constant[g, s]``, minus the same term for ``sum(a)`` at ``v = N``. The
log-probability of votes ``v`` under sample ``s`` is ``constant[s] + sum_i tables[s, i, v_i]``. Each galaxy runs in
one fused loop, in parallel over galaxies.

The kernels are compiled where the package is installed, for the argument types ``stats`` passes (each kernel's
signatures), and loaded from there by every process: see :mod:`zoobot_pipeline._numba_cache`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types

from zoobot_pipeline._numba_cache import cached_njit

NEGLIGIBLE_LOG_PROB = -50.0
_F8 = types.float64


@cached_njit([(_F8[:, :, ::1], types.int64)], parallel=True)
def log_term_tables(alpha: np.ndarray, n_volunteers: int) -> np.ndarray:
    """``T[g, s, i, v] = lgamma(v + a) - lgamma(a) - lgamma(v + 1)`` for ``v = 0..N`` and ``a = alpha[g, s, i]``.

    ``lgamma(v + a) - lgamma(a) = sum_{j<v} log(j + a)`` and ``lgamma(v + 1) = sum_{j<v} log(j + 1)``: one log per
    entry instead of three lgammas, as a running sum.
    """
    n, n_samples, k = alpha.shape
    log_j1 = np.log(np.arange(1, n_volunteers + 1).astype(np.float64))
    tables = np.empty((n, n_samples, k, n_volunteers + 1))
    for g in prange(n):
        for s in range(n_samples):
            for i in range(k):
                a = alpha[g, s, i]
                running = 0.0
                tables[g, s, i, 0] = 0.0
                for j in range(n_volunteers):
                    running += math.log(j + a) - log_j1[j]
                    tables[g, s, i, j + 1] = running
    return tables


@njit(inline="always")
def _log_prob_all(tables: np.ndarray, constant: np.ndarray, votes: np.ndarray, log_p: np.ndarray) -> float:
    """Log-probability of one vote outcome under every MC sample (written to ``log_p``); returns the largest."""
    n_samples, k = tables.shape[0], tables.shape[1]
    top = -np.inf
    for s in range(n_samples):
        value = constant[s]
        for i in range(k):
            value += tables[s, i, votes[i]]
        log_p[s] = value
        top = max(top, value)
    return top


@cached_njit([(_F8[:, :, :, ::1], _F8[:, ::1], types.Array(types.int64, 2, "C", readonly=True))], parallel=True)
def exact_information(tables: np.ndarray, constant: np.ndarray, outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mutual information, predictive entropy) per galaxy by enumerating every vote outcome.

    ``constant[g, s]`` is minus the normalising term. Outcomes below ``exp(NEGLIGIBLE_LOG_PROB)`` under every sample
    are skipped once their log-probabilities are known: together they move neither result by more than 1e-17.
    """
    n, n_samples = constant.shape
    log_s = math.log(n_samples)
    mi = np.empty(n)
    entropy = np.empty(n)
    for g in prange(n):
        log_p = np.empty(n_samples)
        scaled = np.empty(n_samples)
        acc_mi = 0.0
        acc_h = 0.0
        tables_g = tables[g]
        constant_g = constant[g]
        for o in range(outcomes.shape[0]):
            top = _log_prob_all(tables_g, constant_g, outcomes[o], log_p)
            if top < NEGLIGIBLE_LOG_PROB:
                continue
            total = 0.0
            for s in range(n_samples):
                scaled[s] = math.exp(log_p[s] - top)
                total += scaled[s]
            log_mix = top + math.log(total) - log_s
            scale = math.exp(top)
            for s in range(n_samples):
                acc_mi += scaled[s] * scale * (log_p[s] - log_mix)
            acc_h -= math.exp(log_mix) * log_mix
        mi[g] = acc_mi / n_samples
        entropy[g] = acc_h
    return mi, entropy


@njit(inline="always")
def _fill_zero_probabilities(alpha: np.ndarray, n_volunteers: int, zero: np.ndarray, after: np.ndarray) -> None:
    """``zero[i, n] = P(v_i = 0)`` for ``v_i ~ BetaBinomial(n, a_i, b_i)``; ``after[i] = b_i = a_{i+1} + ... + a_k``.

    ``P(0) = prod_{j<n} (j + b_i) / (j + a_i + b_i)``, built as a running product (no logs).
    """
    k = alpha.shape[0]
    tail = alpha[k - 1]
    after[k - 1] = 0.0
    for i in range(k - 2, -1, -1):
        after[i] = tail
        total = tail + alpha[i]
        zero[i, 0] = 1.0
        for n in range(n_volunteers):
            zero[i, n + 1] = zero[i, n] * (n + tail) / (n + total)
        tail = total


@njit(inline="always")
def _draw_votes(alpha: np.ndarray, zero: np.ndarray, after: np.ndarray, n_volunteers: int, first_uniform: float,
                votes: np.ndarray) -> None:
    """One vote outcome from a Dirichlet-Multinomial, as a chain of beta-binomials sampled by inverse CDF.

    Answer ``i`` gets ``v_i ~ BetaBinomial(n_left, a_i, b_i)`` with ``b_i = a_{i+1} + ... + a_k``: ``P(v = 0)`` from
    ``zero`` and each next probability from the ratio ``(n - v)(v + a) / ((v + 1)(n - v - 1 + b))``. The first answer
    uses ``first_uniform`` (stratified by the caller), the rest fresh uniforms.
    """
    k = alpha.shape[0]
    remaining = n_volunteers
    u = first_uniform
    for i in range(k - 1):
        if remaining == 0:
            votes[i] = 0
            continue
        a = alpha[i]
        b = after[i]
        pmf = zero[i, remaining]
        cdf = pmf
        v = 0
        while u > cdf and v < remaining:
            pmf *= (remaining - v) * (v + a) / ((v + 1.0) * (remaining - v - 1.0 + b))
            v += 1
            cdf += pmf
        votes[i] = v
        remaining -= v
        u = np.random.random()
    votes[k - 1] = remaining


@cached_njit([(_F8[:, :, ::1], _F8[:, :, :, ::1], _F8[:, ::1], types.int64, types.int64[::1])], parallel=True)
def sampled_information(alpha: np.ndarray, tables: np.ndarray, constant: np.ndarray, n_draws: int,
                        streams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mutual information, predictive entropy) estimated from ``n_draws`` vote outcomes drawn from each MC sample.

    The draws are a stratified sample of the mixture ``m = mean_s p_s``. With ``y_s = p_s(v) / m(v)``,
    ``MI = E_m[mean_s (y_s log y_s - y_s + 1)]``: the ``- y_s + 1`` control variate has expectation zero and cancels
    the first-order noise, leaving non-negative terms. Entropy is ``-E_m[log m]``. Galaxy ``g`` draws from its own
    random stream, seeded with ``streams[g]`` (< 2**32): results depend on neither the other galaxies nor threads.
    """
    n, n_samples, k = alpha.shape
    n_volunteers = tables.shape[3] - 1
    log_s = math.log(n_samples)
    mi = np.empty(n)
    entropy = np.empty(n)
    for g in prange(n):
        np.random.seed(streams[g])
        votes = np.empty(k, dtype=np.int64)
        log_p = np.empty(n_samples)
        scaled = np.empty(n_samples)
        zero = np.empty((k, n_volunteers + 1))
        after = np.empty(k)
        acc_mi = 0.0
        acc_h = 0.0
        tables_g = tables[g]
        constant_g = constant[g]
        for s_from in range(n_samples):
            alpha_s = alpha[g, s_from]
            _fill_zero_probabilities(alpha_s, n_volunteers, zero, after)
            for d in range(n_draws):
                first_uniform = (d + np.random.random()) / n_draws
                _draw_votes(alpha_s, zero, after, n_volunteers, first_uniform, votes)
                top = _log_prob_all(tables_g, constant_g, votes, log_p)
                total = 0.0
                for s in range(n_samples):
                    scaled[s] = math.exp(log_p[s] - top)
                    total += scaled[s]
                log_mix = top + math.log(total) - log_s
                to_ratio = n_samples / total
                term = 0.0
                for s in range(n_samples):
                    y = scaled[s] * to_ratio
                    term += y * (log_p[s] - log_mix) - y + 1.0
                acc_mi += term / n_samples
                acc_h -= log_mix
        mi[g] = acc_mi / (n_samples * n_draws)
        entropy[g] = acc_h / (n_samples * n_draws)
    return mi, entropy
