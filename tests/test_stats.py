"""The shared maths against independent computations: scipy's Dirichlet-Multinomial, math.lgamma, brute force."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.stats import spearmanr

from zoobot_pipeline import stats
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import (
    acquisition_score,
    class_entropy,
    class_mutual_information,
    dirichlet_multinomial_log_prob,
    dirichlet_multinomial_nll,
    expected_fractions,
    n_vote_outcomes,
    population_concentrations,
    predictive_entropy,
    question_mutual_information,
    schema_vote_information,
    vote_information,
    vote_outcomes,
    weighted_question_terms,
)


def _lgamma_log_prob(votes: np.ndarray, alpha: np.ndarray) -> float:
    """The formula of DESIGN.md written out with math.lgamma, one galaxy at a time."""
    n, big_a = votes.sum(), alpha.sum()
    return (math.lgamma(n + 1) + math.lgamma(big_a) - math.lgamma(n + big_a)
            + sum(math.lgamma(k + a) - math.lgamma(a) - math.lgamma(k + 1) for k, a in zip(votes, alpha, strict=True)))


def _mixture(alpha_samples: np.ndarray, n_volunteers: int) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's full pmf over all outcomes from scipy, and their mixture: (S, n_outcomes), (n_outcomes,)."""
    outcomes = vote_outcomes(n_volunteers, alpha_samples.shape[-1])
    pmfs = np.array([scipy_stats.dirichlet_multinomial.pmf(outcomes, a, n_volunteers) for a in alpha_samples])
    return pmfs, pmfs.mean(axis=0)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_log_prob_matches_scipy_and_lgamma():
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0.3, 80, size=(50, 4))
    votes = rng.multinomial(37, rng.dirichlet(np.ones(4), size=50))
    ours = dirichlet_multinomial_log_prob(votes, alpha)
    reference = np.array([scipy_stats.dirichlet_multinomial.logpmf(v, a, v.sum()) for v, a in zip(votes, alpha,
                                                                                                     strict=True)])
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    np.testing.assert_allclose(ours, [_lgamma_log_prob(v, a) for v, a in zip(votes, alpha, strict=True)], rtol=1e-12)


def test_log_prob_edge_cases():
    alpha = np.array([[2.0, 3.0], [1.0, 1.0], [50.0, 0.5]])
    zero_votes = np.zeros((3, 2))
    assert np.array_equal(dirichlet_multinomial_log_prob(zero_votes, alpha), np.zeros(3))
    # one volunteer: a categorical with p = a / A
    one = np.array([[1, 0], [0, 1], [0, 1]])
    np.testing.assert_allclose(np.exp(dirichlet_multinomial_log_prob(one, alpha)), [0.4, 0.5, 0.5 / 50.5])
    # a whole pmf sums to one
    outcomes = vote_outcomes(12, 3)
    alpha3 = np.broadcast_to([0.7, 4.0, 19.0], outcomes.shape)
    assert np.exp(dirichlet_multinomial_log_prob(outcomes, alpha3)).sum() == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        dirichlet_multinomial_log_prob(one, alpha[:, :1])
    with pytest.raises(ValueError, match="non-negative"):
        dirichlet_multinomial_log_prob(-one, alpha)
    with pytest.raises(ValueError, match="positive"):
        dirichlet_multinomial_log_prob(one, alpha * 0)


def test_nll_over_a_tree_is_per_question_and_zero_when_unasked():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(1)
    alpha = rng.uniform(1, 101, size=(6, schema.n_answers))
    votes = rng.integers(0, 12, size=(6, schema.n_answers))
    bar = schema.question("bar-dr5")
    votes[2, bar.slice] = 0
    nll = dirichlet_multinomial_nll(votes, alpha, schema)
    assert nll.shape == (6, len(schema.questions))
    assert nll[2, bar.index] == 0.0
    for g in range(6):
        for q in schema.questions:
            expected = 0.0 if votes[g, q.slice].sum() == 0 else -_lgamma_log_prob(votes[g, q.slice], alpha[g, q.slice])
            assert nll[g, q.index] == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="schema 'decals_dr5' has 34"):
        dirichlet_multinomial_nll(votes[:, :10], alpha[:, :10], schema)


def test_expected_fractions_normalise_per_question_and_average_mc_samples():
    schema = get_schema("gz2")
    rng = np.random.default_rng(2)
    samples = rng.uniform(1, 101, size=(5, 4, schema.n_answers))
    fractions = expected_fractions(samples, schema)
    assert fractions.shape == (5, schema.n_answers)
    for q in schema.questions:
        np.testing.assert_allclose(fractions[:, q.slice].sum(axis=1), 1.0)
        per_sample = samples[..., q.slice] / samples[..., q.slice].sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(fractions[:, q.slice], per_sample.mean(axis=1))
    np.testing.assert_allclose(expected_fractions(samples[:, 0], schema), expected_fractions(samples[:, :1], schema))


def test_vote_outcomes_enumerate_every_split_once():
    outcomes = vote_outcomes(7, 4)
    assert len(outcomes) == comb(10, 3) == n_vote_outcomes(7, 4)
    assert np.all(outcomes.sum(axis=1) == 7) and np.all(outcomes >= 0)
    assert len({tuple(row) for row in outcomes}) == len(outcomes)
    assert n_vote_outcomes(40, 6) == 1_221_759


@pytest.mark.parametrize(("n_answers", "n_volunteers"), [(2, 40), (3, 12), (4, 6)])
def test_exact_information_matches_brute_force_enumeration(n_answers, n_volunteers):
    rng = np.random.default_rng(n_answers)
    alpha = rng.uniform(0.5, 60, size=(5, 4, n_answers))
    mi, entropy = vote_information(alpha, n_volunteers, method="exact")
    assert np.array_equal(mi, question_mutual_information(alpha, n_volunteers, method="exact"))
    assert np.array_equal(entropy, predictive_entropy(alpha, n_volunteers, method="exact"))
    for g in range(len(alpha)):
        pmfs, mixture = _mixture(alpha[g], n_volunteers)
        assert entropy[g] == pytest.approx(_entropy(mixture), rel=1e-9)
        assert mi[g] == pytest.approx(_entropy(mixture) - np.mean([_entropy(p) for p in pmfs]), rel=1e-8, abs=1e-12)


def test_information_edge_cases():
    rng = np.random.default_rng(3)
    same = np.repeat(rng.uniform(1, 30, size=(4, 1, 3)), 5, axis=1)
    np.testing.assert_allclose(question_mutual_information(same, 40), 0.0, atol=1e-10)
    one_sample = rng.uniform(1, 30, size=(4, 1, 3))
    np.testing.assert_allclose(question_mutual_information(one_sample, 40), 0.0, atol=1e-10)
    assert np.all(question_mutual_information(rng.uniform(1, 30, (3, 5, 2)), 0) == 0)
    # one volunteer: the Jensen-Shannon divergence of the categoricals a/A, bounded by log S
    alpha = rng.uniform(1, 30, size=(6, 3, 4))
    p = alpha / alpha.sum(axis=-1, keepdims=True)
    js = [_entropy(p[g].mean(axis=0)) - np.mean([_entropy(row) for row in p[g]]) for g in range(6)]
    np.testing.assert_allclose(question_mutual_information(alpha, 1), js, rtol=1e-10)
    # far-apart samples approach the log S bound, never exceed it
    extreme = np.array([[[100.0, 1.0], [1.0, 100.0]]])
    assert math.log(2) - 0.01 < question_mutual_information(extreme, 40)[0] <= math.log(2) + 1e-12
    with pytest.raises(ValueError, match=r"\(n, S, k\)"):
        question_mutual_information(alpha[0], 40)
    with pytest.raises(ValueError, match="positive"):
        question_mutual_information(-alpha, 40)
    with pytest.raises(ValueError, match="unknown method"):
        question_mutual_information(alpha, 40, method="guess")


def _dropout_like(n: int, k: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    base = np.clip(rng.dirichlet(np.ones(k), size=n) * rng.uniform(3, 100, size=(n, 1)), 1, 101)[:, None, :]
    return np.clip(base * np.exp(rng.normal(0, spread, size=(n, 5, k))), 1, 101)


@pytest.mark.parametrize(("n_answers", "n_volunteers"), [(3, 40), (4, 25)])
def test_sampled_estimator_error_against_exact_enumeration(n_answers, n_volunteers):
    """The stated accuracy of the default estimator (32 draws per sample): see benchmarks/mutual_information.py."""
    rng = np.random.default_rng(10 + n_answers)
    alpha = _dropout_like(300, n_answers, 0.2, rng)
    exact = question_mutual_information(alpha, n_volunteers, method="exact")
    sampled = question_mutual_information(alpha, n_volunteers, method="sampled")
    relative = np.abs(sampled - exact) / exact
    assert np.median(relative) < 0.08
    assert abs(sampled.mean() - exact.mean()) < 0.02 * exact.mean()
    assert spearmanr(exact, sampled).statistic > 0.98
    exact_h = predictive_entropy(alpha, n_volunteers, method="exact")
    sampled_h = predictive_entropy(alpha, n_volunteers, method="sampled")
    assert np.median(np.abs(sampled_h - exact_h) / exact_h) < 0.02


def test_sampled_estimator_is_deterministic_and_independent_of_chunking(monkeypatch):
    alpha = _dropout_like(200, 5, 0.3, np.random.default_rng(4))
    first = question_mutual_information(alpha, 40, seed=7)
    assert np.array_equal(first, question_mutual_information(alpha, 40, seed=7))
    assert not np.array_equal(first, question_mutual_information(alpha, 40, seed=8))
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1)
    assert np.array_equal(first, question_mutual_information(alpha, 40, seed=7))


def test_per_galaxy_seeds_make_each_galaxys_estimate_its_own():
    schema = get_schema("decals_dr5")
    alpha = _dropout_like(60, schema.n_answers, 0.3, np.random.default_rng(11))
    seeds = np.random.default_rng(12).integers(0, 2**63, size=60, dtype=np.uint64) * np.uint64(2)  # > 2**63 too
    whole = schema_vote_information(alpha, schema, seed=seeds)
    order = np.random.default_rng(13).permutation(60)[:25]  # another subset, another order, other neighbours
    part = schema_vote_information(alpha[order], schema, seed=seeds[order])
    np.testing.assert_array_equal(part.mutual_information, whole.mutual_information[order])
    np.testing.assert_array_equal(part.predictive_entropy, whole.predictive_entropy[order])
    bar = schema.question("bar-dr5").index  # sampled (3 answers): a galaxy's own seed decides its estimate
    reseeded = schema_vote_information(alpha, schema, seed=seeds + np.uint64(1)).mutual_information[:, bar]
    assert np.all(reseeded != whole.mutual_information[:, bar])
    by_position = schema_vote_information(alpha[order], schema, seed=0).mutual_information
    assert not np.array_equal(by_position, schema_vote_information(alpha, schema, seed=0).mutual_information[order])
    for bad in (-1, 1.5, seeds[:10], -np.ones(60, dtype=np.int64)):
        with pytest.raises(ValueError, match="seed"):
            schema_vote_information(alpha, schema, seed=bad)


def test_auto_method_enumerates_small_spaces_and_samples_large_ones():
    rng = np.random.default_rng(5)
    binary = _dropout_like(20, 2, 0.3, rng)
    np.testing.assert_array_equal(question_mutual_information(binary, 40),
                                  question_mutual_information(binary, 40, method="exact"))
    six = _dropout_like(20, 6, 0.3, rng)
    np.testing.assert_array_equal(question_mutual_information(six, 40),
                                  question_mutual_information(six, 40, method="sampled"))


def test_schema_level_information_per_question():
    schema = get_schema("decals_dr5")
    alpha = _dropout_like(15, schema.n_answers, 0.2, np.random.default_rng(6))
    mi, entropy = schema_vote_information(alpha, schema)
    assert mi.shape == entropy.shape == (15, len(schema.questions))
    assert np.all(mi >= 0) and np.all(entropy >= mi)
    first = schema.questions[0]  # a single question draws as question 0 of a tree
    np.testing.assert_array_equal(mi[:, 0], question_mutual_information(alpha[..., first.slice], 40))
    for q in schema.questions:  # each question on its own streams: within the estimator's error of enumeration
        exact = question_mutual_information(alpha[..., q.slice], 40, method="exact")
        np.testing.assert_allclose(mi[:, q.index], exact, rtol=0.5, atol=2e-3, err_msg=q.name)
    with pytest.raises(ValueError, match=r"\(n, S, A\)"):
        schema_vote_information(alpha[:, 0], schema)


def test_population_concentrations_recover_a_constant_population():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(9)
    true_alpha = rng.uniform(0.5, 6.0, schema.n_answers)
    votes = np.zeros((4000, schema.n_answers), dtype=np.int64)
    for q in schema.questions:
        p = rng.dirichlet(true_alpha[q.slice], size=len(votes))
        votes[:, q.slice] = np.array([rng.multinomial(40, row) for row in p])
    votes[:500, schema.question("bar-dr5").slice] = 0  # unasked: must not pull the estimate
    fitted = population_concentrations(votes, schema)
    for q in schema.questions:
        np.testing.assert_allclose(fitted[q.slice] / fitted[q.slice].sum(),
                                   true_alpha[q.slice] / true_alpha[q.slice].sum(), atol=0.02)
        assert fitted[q.slice].sum() == pytest.approx(true_alpha[q.slice].sum(), rel=0.15)
        asked = votes[votes[:, q.slice].sum(axis=1) > 0][:, q.slice]
        best = dirichlet_multinomial_log_prob(asked, np.broadcast_to(fitted[q.slice], asked.shape)).sum()
        for scale in (0.9, 1.1):
            worse = np.broadcast_to(fitted[q.slice] * scale, asked.shape)
            assert dirichlet_multinomial_log_prob(asked, worse).sum() < best


def test_class_entropy_and_mutual_information_match_a_direct_computation():
    rng = np.random.default_rng(11)
    probabilities = rng.dirichlet(np.ones(4), size=(30, 6))
    probabilities[0, :, 3] = 0.0  # a class no sample believes in: 0 log 0 = 0
    probabilities[0] /= probabilities[0].sum(axis=-1, keepdims=True)
    probabilities[1] = probabilities[1, 0]  # the samples agree: nothing to learn
    mean = probabilities.mean(axis=1)
    np.testing.assert_allclose(class_entropy(mean), [_entropy(row) for row in mean], rtol=1e-12)
    expected = [_entropy(mean[g]) - np.mean([_entropy(s) for s in probabilities[g]]) for g in range(30)]
    mi = class_mutual_information(probabilities)
    np.testing.assert_allclose(mi, np.maximum(expected, 0.0), rtol=1e-9, atol=1e-15)
    assert mi[1] == pytest.approx(0.0, abs=1e-12) and np.all(mi >= 0)
    assert class_entropy(np.array([1.0, 0.0])) == 0.0
    with pytest.raises(ValueError, match=r"\(n, S, C\)"):
        class_mutual_information(mean)


def test_acquisition_score_weighs_each_question_by_the_chance_it_is_asked():
    rng = np.random.default_rng(12)
    values, asked = rng.random((25, 4)), rng.random((25, 4))
    weights = np.array([2.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(weighted_question_terms(values, asked, weights),
                               [[weights[q] * values[g, q] * asked[g, q] for q in range(4)] for g in range(25)],
                               rtol=1e-15)
    np.testing.assert_allclose(acquisition_score(values, asked, weights),
                               [sum(weights[q] * values[g, q] * asked[g, q] for q in range(4)) for g in range(25)],
                               rtol=1e-12)
    # unit weights are the default, bit for bit; a missing value stays missing
    np.testing.assert_array_equal(acquisition_score(values, asked), acquisition_score(values, asked, np.ones(4)))
    values[3, 2] = np.nan
    assert np.isnan(acquisition_score(values, asked)[3]) and np.isfinite(acquisition_score(values, asked)[4])
    with pytest.raises(ValueError, match="must both be"):
        weighted_question_terms(values, asked[:, :3])
    with pytest.raises(ValueError, match="4 question weights"):
        acquisition_score(values, asked, np.ones(3))
