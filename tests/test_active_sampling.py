"""Stochastic batch acquisition, answer exclusions, the random fraction and finetuned models' rankings.

The sampler against its target distributions (chi-square of K=1 draws over seeds; inclusion probabilities of K>1 draws
against a Monte-Carlo of sequential sampling without replacement); queues against an independent re-computation
(hashlib Gumbel noise, pandas sorts and greedy walks); independence from the catalogue's file layout and batch size;
classifier and regressor catalogues scored by real tiny packages, against numpy from their MC outputs; CLI errors.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_checks import error_line
from scipy import stats
from test_active_ranking import META, full_sort, independent_scores, write_catalogue, write_with_nan
from typer.testing import CliRunner

from zoobot_pipeline.active import acquisition as acq
from zoobot_pipeline.active import batch_sampling as bs
from zoobot_pipeline.active.exclusions import NOT_GALAXY_ANSWERS, AnswerFilter, not_galaxy_filters
from zoobot_pipeline.active.ranking import rank_catalogue, rank_settings
from zoobot_pipeline.catalogue import catalogue_files
from zoobot_pipeline.cli import app
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.schemas import get_schema

runner = CliRunner()
STOCHASTIC = {"power": 1.5, "softmax": 3.0, "softrank": 1.0}  # sampling mode -> beta used in the tests


def reference_gumbel(ids: list[str], seed: int) -> np.ndarray:
    """Standard Gumbel noise per id straight from hashlib (the documented recipe, written again)."""
    out = []
    for i in ids:
        h = int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=f"gumbel:{seed}".encode()).digest(), "little")
        u = ((h >> 11) + 0.5) / 2.0**53
        out.append(-np.log(-np.log(u)))
    return np.array(out)


def target_weights(scores: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """The sampling weight of each score: score**beta, exp(beta*score) or rank**-beta (rank: 1 + strictly higher)."""
    if mode == "power":
        return scores**beta
    if mode == "softmax":
        return np.exp(beta * (scores - scores.max()))
    ranks = np.array([1 + np.sum(scores > s) for s in scores], dtype=np.float64)
    return ranks**-beta


def sampled_keys(scores: np.ndarray, ids: list[str], mode: str, beta: float, seed: int) -> np.ndarray:
    ranks = bs.population_ranks(np.sort(scores), scores) if mode == "softrank" else None
    return bs.perturbed_keys(scores, ids, mode, beta, seed, ranks)


def test_gumbel_noise_is_standard_gumbel_and_depends_only_on_seed_and_id():
    ids = [f"syn_{i:06d}" for i in range(20_000)]
    noise = bs.gumbel_noise(ids, seed=3)
    np.testing.assert_allclose(noise[:200], reference_gumbel(ids[:200], 3), rtol=1e-12)
    assert stats.kstest(noise, stats.gumbel_r.cdf).pvalue > 1e-3
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(bs.gumbel_noise([ids[i] for i in order], seed=3), noise[order])
    assert abs(np.corrcoef(bs.gumbel_noise(ids, seed=4), noise)[0, 1]) < 0.03
    # independent of the seeded random acquisition of the same ids (which decides the random fraction)
    assert abs(stats.spearmanr(acq.random(ids, seed=3), noise).statistic) < 0.03


@pytest.mark.parametrize("mode", list(STOCHASTIC))
def test_one_draw_follows_the_target_probabilities(mode):
    beta = STOCHASTIC[mode]
    scores = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.2, 1.2, 0.0])
    ids = [f"g{i}" for i in range(len(scores))]
    seeds = 6000
    picks = Counter(int(np.lexsort((ids, -sampled_keys(scores, ids, mode, beta, seed)))[0]) for seed in range(seeds))
    expected = target_weights(scores, mode, beta) / target_weights(scores, mode, beta).sum()
    observed = np.array([picks.get(i, 0) for i in range(len(scores))])
    if mode == "power":
        assert observed[-1] == 0  # a score of 0 has weight 0
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep] * seeds).pvalue > 1e-3, (observed, expected * seeds)
    # the test can fail: the same draws are far from the weights of another beta
    wrong = target_weights(scores, mode, beta * 2)[keep]
    assert stats.chisquare(observed[keep], wrong / wrong.sum() * seeds).pvalue < 1e-6


@pytest.mark.parametrize("mode", list(STOCHASTIC))
def test_batches_include_galaxies_as_sequential_sampling_without_replacement_does(mode):
    beta, k, seeds = STOCHASTIC[mode], 3, 4000
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.6, 2.0])
    ids = [f"g{i}" for i in range(len(scores))]
    included = np.zeros(len(scores))
    for seed in range(seeds):
        included[np.lexsort((ids, -sampled_keys(scores, ids, mode, beta, seed)))[:k]] += 1
    # Monte-Carlo of drawing one at a time in proportion to the weights of the galaxies not yet drawn
    rng = np.random.default_rng(11)
    weights = target_weights(scores, mode, beta)
    reference = np.zeros(len(scores))
    runs = 20_000
    for _ in range(runs):
        left = np.ones(len(scores), dtype=bool)
        for _ in range(k):
            p = np.where(left, weights, 0.0)
            chosen = rng.choice(len(scores), p=p / p.sum())
            left[chosen] = False
            reference[chosen] += 1
    got, want = included / seeds, reference / runs
    se = np.sqrt(want * (1 - want) / seeds + want * (1 - want) / runs)
    assert np.all(np.abs(got - want) < 4 * se + 1e-3), (got, want)
    top_k = np.argsort(np.argsort(-scores)) < k
    assert np.abs(got - top_k).max() > 0.1  # not simply the top K


def test_beta_moves_between_uniform_and_top_k():
    scores = np.linspace(0.1, 1.0, 10)
    ids = [f"g{i}" for i in range(10)]
    top = [int(np.argmax(bs.perturbed_keys(scores, ids, "power", 1e6, seed))) for seed in range(200)]
    assert set(top) == {9}
    flat = Counter(int(np.argmax(bs.perturbed_keys(scores, ids, "power", 1e-6, seed))) for seed in range(3000))
    assert stats.chisquare([flat.get(i, 0) for i in range(10)]).pvalue > 1e-3


def test_shorthands_options_and_their_errors():
    assert bs.resolve_strategy("power_bald") == ("mutual_information", "power")
    assert bs.resolve_strategy("softrank_bald", "softrank") == ("mutual_information", "softrank")
    assert bs.resolve_strategy("entropy", "softmax") == ("entropy", "softmax")
    with pytest.raises(ZoobotPipelineError, match="'power_bald' samples by 'power'"):
        bs.resolve_strategy("power_bald", "softmax")
    with pytest.raises(ZoobotPipelineError, match="unknown sampling mode 'gumbel'"):
        bs.resolve_strategy("entropy", "gumbel")
    for beta in (0, -1, float("nan"), float("inf"), "x"):
        with pytest.raises(ZoobotPipelineError, match="beta must be a finite number > 0"):
            bs.check_beta(beta)
    for fraction in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ZoobotPipelineError, match="random fraction must be at least 0 and below 1"):
            bs.check_random_fraction(fraction)
    assert [bs.random_count(20, f) for f in (0.0, 0.2, 0.26, 0.99)] == [0, 4, 5, 20]
    order = bs.mix_order(np.array([False] * 6 + [True] * 2))
    assert order.tolist() == [0, 1, 6, 2, 3, 4, 7, 5]


def expected_sampled(frame: pd.DataFrame, scores: np.ndarray, mode: str, beta: float, seed: int) -> pd.DataFrame:
    """Eligible rows ordered by their independently computed sampling key (then id_str)."""
    eligible = frame.assign(score=scores)[~frame["flagged"]].reset_index(drop=True)
    noise = reference_gumbel(eligible["id_str"].tolist(), seed) / beta
    s = eligible["score"].to_numpy()
    if mode == "power":
        key = np.log(s) + noise
    elif mode == "softmax":
        key = s + noise
    else:
        key = -np.log(eligible["score"].rank(method="min", ascending=False).to_numpy()) + noise
    return eligible.assign(key=key).sort_values(["key", "id_str"], ascending=[False, True]).reset_index(drop=True)


def relayout(catalogue: Path, root: Path, n_files: int, seed: int) -> Path:
    """The same catalogue rows shuffled and split into ``n_files`` files of other sizes and row groups."""
    rng = np.random.default_rng(seed)
    table = pa.concat_tables(pq.read_table(p) for p in catalogue_files(catalogue))
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    cuts = [0, *np.sort(rng.choice(np.arange(1, table.num_rows), n_files - 1, replace=False)).tolist(),
            table.num_rows]
    root.mkdir(parents=True)
    for i, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        pq.write_table(shuffled.slice(start, stop - start).replace_schema_metadata(META), root / f"p{i}.parquet",
                       row_group_size=int(rng.integers(3, 30)))
    return root


@pytest.mark.parametrize("mode", list(STOCHASTIC))
def test_stochastic_queue_equals_an_independent_draw_and_ignores_the_file_layout(tmp_path, mode):
    beta = STOCHASTIC[mode]
    frame = write_catalogue(tmp_path / "cat", n_files=4, rows=60)
    scores, tops = independent_scores(frame)
    expected = expected_sampled(frame.assign(top=tops), scores, mode, beta, seed=7).head(25)
    queue = rank_catalogue(tmp_path / "cat", 25, sampling=mode, beta=beta, seed=7, batch_size=11)
    got = queue.to_pandas()
    assert got["id_str"].tolist() == expected["id_str"].tolist()
    np.testing.assert_allclose(got["acquisition"], expected["score"], rtol=1e-12)
    np.testing.assert_allclose(got["sampling_key"], expected["key"], rtol=1e-9)
    assert got["top_question"].tolist() == expected["top"].tolist() and set(got["picked_by"]) == {"acquisition"}
    info = rank_settings(queue)
    assert (info["sampling"], info["beta"], info["random_picks"]) == (mode, beta, 0)
    # not the top K: the draw differs from it, and from the draw of another seed
    top = full_sort(frame, scores)["id_str"].head(25).tolist()
    assert got["id_str"].tolist() != top
    other = rank_catalogue(tmp_path / "cat", 25, sampling=mode, beta=beta, seed=8)["id_str"].to_pylist()
    assert other != got["id_str"].tolist()

    moved = relayout(tmp_path / "cat", tmp_path / "moved", n_files=7, seed=1)
    for batch_size in (1, 5, 100_000):
        again = rank_catalogue(moved, 25, sampling=mode, beta=beta, seed=7, batch_size=batch_size)
        assert again.drop_columns(["created", "run_id"]).equals(queue.drop_columns(["created", "run_id"]))


def test_power_bald_shorthand_and_quota_follow_the_greedy_walk_of_the_keys(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=4, rows=30, mi_scales={2: 100.0})
    scores, _ = independent_scores(frame)
    ranked = expected_sampled(frame, scores, "power", 2.0, seed=1)
    taken: Counter = Counter()
    expected = []
    for id_str, tile in zip(ranked["id_str"], ranked["tile_id"], strict=True):
        if taken[tile] < 4 and len(expected) < 12:
            taken[tile] += 1
            expected.append(id_str)
    queue = rank_catalogue(tmp_path / "cat", 12, acquisition="power_bald", beta=2.0, seed=1, per_tile_quota=4,
                           batch_size=9)
    assert queue["id_str"].to_pylist() == expected
    assert set(queue["acquisition_function"].to_pylist()) == {"mutual_information"}
    assert rank_settings(queue)["sampling"] == "power"
    with pytest.raises(ZoobotPipelineError, match="'power_bald' samples by 'power'"):
        rank_catalogue(tmp_path / "cat", 12, acquisition="power_bald", sampling="softrank")

    # power sampling refuses a negative score, naming the row
    acq_module_registry = dict(acq._REGISTRY)
    try:
        acq.register_acquisition("negative", lambda batch, q, w, seed: -np.ones(batch.num_rows))
        with pytest.raises(ZoobotPipelineError, match=r"row 1 \(id_str gal_0_001\).*power sampling needs scores"):
            rank_catalogue(tmp_path / "cat", 3, acquisition="negative", sampling="power")
        assert rank_catalogue(tmp_path / "cat", 3, acquisition="negative", sampling="softmax").num_rows == 3
    finally:
        acq._REGISTRY.clear()
        acq._REGISTRY.update(acq_module_registry)


def test_answer_filters_exclude_galaxies_by_the_models_answers(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=3, rows=40)
    scores, _ = independent_scores(frame)
    artefact = frame["smooth-or-featured-dr5_artifact_fraction"].astype(np.float64)
    bar = frame["bar-dr5_no_fraction"].astype(np.float64)
    excluded = (artefact >= 0.5) | (bar < 0.2)
    eligible = frame[~excluded]
    expected = full_sort(eligible, scores[~excluded.to_numpy()])["id_str"].head(30).tolist()
    queue = rank_catalogue(tmp_path / "cat", 30, batch_size=13, sampling="top_k",
                           exclude_answers=["smooth-or-featured-dr5_artifact>=0.5", " bar-dr5_no < 0.2 "])
    assert queue["id_str"].to_pylist() == expected
    info = rank_settings(queue)
    assert info["exclude_answers"] == ["smooth-or-featured-dr5_artifact>=0.5", "bar-dr5_no<0.2"]
    assert info["skipped_answers"] == int((excluded & ~frame["flagged"]).sum()) > 10
    assert info["skipped_flagged"] == int(frame["flagged"].sum())
    for text, op in (("a>0.5", ">"), ("a<=1", "<="), ("a>=0", ">=")):
        assert AnswerFilter.parse(text).op == op
    assert [str(f) for f in not_galaxy_filters("decals_dr5")] == ["smooth-or-featured-dr5_artifact>=0.5"]

    with pytest.raises(ZoobotPipelineError, match=r"unknown answer\(s\) smooth-or-featured-dr5_star; the "
                                                  r"catalogue's answers are smooth-or-featured-dr5_smooth, "):
        rank_catalogue(tmp_path / "cat", 3, exclude_answers=["smooth-or-featured-dr5_star>=0.5"])
    for bad in ("smooth-or-featured-dr5_artifact=0.5", "smooth-or-featured-dr5_artifact>=", ">=0.5", "a>=nan",
                "a >= 0.5 0.6"):
        with pytest.raises(ZoobotPipelineError, match="expected ANSWER OP THRESHOLD"):
            rank_catalogue(tmp_path / "cat", 3, exclude_answers=[bad])

    column = "smooth-or-featured-dr5_artifact_fraction"
    broken = write_with_nan(tmp_path / "broken.parquet", column, 5)
    with pytest.raises(ZoobotPipelineError, match=rf"broken.parquet: row 5 \(id_str g5\): column '{column}'"):
        rank_catalogue(broken, 3, exclude_answers=["smooth-or-featured-dr5_artifact>0.9"],
                       batch_size=3)


def test_not_galaxy_answers_exist_in_each_built_in_tree():
    for name, answers in NOT_GALAXY_ANSWERS.items():
        assert set(answers) <= set(get_schema(name).label_cols), name
    with pytest.raises(ZoobotPipelineError, match="no star/artefact answers known for tree 'mine'"):
        not_galaxy_filters("mine")


def test_random_fraction_mixes_uniform_picks_into_the_queue(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=3, rows=40)
    scores, _ = independent_scores(frame)
    excluded = frame["smooth-or-featured-dr5_artifact_fraction"].astype(np.float64) >= 0.6
    answers = ["smooth-or-featured-dr5_artifact>=0.6"]
    eligible = frame[~frame["flagged"] & ~excluded]
    uniform = eligible.assign(u=acq.random(eligible["id_str"].tolist(), seed=4))
    random_part = uniform.sort_values("u", ascending=False)["id_str"].head(5).tolist()
    ranked = full_sort(frame[~excluded], scores[~excluded.to_numpy()])["id_str"].tolist()
    acquisition_part = [i for i in ranked if i not in random_part][:15]

    queue = rank_catalogue(tmp_path / "cat", 20, random_fraction=0.25, seed=4, exclude_answers=answers,
                           batch_size=6, sampling="top_k").to_pandas()
    assert queue["picked_by"].tolist().count("random") == 5 and queue["id_str"].is_unique
    assert queue.loc[queue["picked_by"] == "random", "id_str"].tolist() == random_part
    assert queue.loc[queue["picked_by"] == "acquisition", "id_str"].tolist() == acquisition_part
    assert queue["rank"].tolist() == list(range(1, 21))
    # every prefix of the queue holds about the random fraction
    prefix_share = np.cumsum(queue["picked_by"] == "random") / np.arange(1, 21)
    assert np.all(np.abs(prefix_share[3:] - 0.25) <= 0.15)
    np.testing.assert_allclose(queue.loc[queue["picked_by"] == "random", "sampling_key"],
                               uniform.set_index("id_str").loc[random_part, "u"], rtol=1e-12)
    layout = rank_catalogue(relayout(tmp_path / "cat", tmp_path / "moved", 5, seed=2), 20, random_fraction=0.25, seed=4,
                            exclude_answers=answers, batch_size=1000, sampling="top_k")
    assert layout["id_str"].to_pylist() == queue["id_str"].tolist()
    assert rank_settings(layout)["random_picks"] == 5

    # the random part is uniform over the eligible galaxies: inclusion counts over seeds
    pool = eligible["id_str"].tolist()
    counts = Counter(i for seed in range(400) for i in np.array(pool)[np.argsort(-acq.random(pool, seed))[:5]])
    observed = np.array([counts.get(i, 0) for i in pool])
    assert stats.chisquare(observed).pvalue > 1e-3 and observed.sum() == 2000

    # a queue smaller than the random part, stochastic sampling under the random part, a quota across both parts
    few = rank_catalogue(tmp_path / "cat", 3, random_fraction=0.5, seed=4, exclude_answers=answers)
    assert few["picked_by"].to_pylist().count("random") == 2
    both = rank_catalogue(tmp_path / "cat", 16, random_fraction=0.5, sampling="softmax", beta=2.0, seed=3,
                          per_tile_quota=6, batch_size=7).to_pandas()
    rnd = frame[~frame["flagged"]].assign(u=acq.random(frame[~frame["flagged"]]["id_str"].tolist(), seed=3))
    rnd = rnd.sort_values(["u", "id_str"], ascending=[False, True])
    keyed = expected_sampled(frame, scores, "softmax", 2.0, seed=3)
    taken: Counter = Counter()
    want_random, want_acq = [], []
    for id_str, tile in zip(rnd["id_str"], rnd["tile_id"], strict=True):
        if taken[tile] < 6 and len(want_random) < 8:
            taken[tile] += 1
            want_random.append(id_str)
    for id_str, tile in zip(keyed["id_str"], keyed["tile_id"], strict=True):
        if id_str not in want_random and taken[tile] < 6 and len(want_acq) < 8:
            taken[tile] += 1
            want_acq.append(id_str)
    assert both.loc[both["picked_by"] == "random", "id_str"].tolist() == want_random
    assert both.loc[both["picked_by"] == "acquisition", "id_str"].tolist() == want_acq
    assert both["tile_id"].value_counts().max() <= 6
    with pytest.raises(ZoobotPipelineError, match="random fraction"):
        rank_catalogue(tmp_path / "cat", 3, random_fraction=1.0)


def test_defaults_draw_a_power_batch_of_mutual_information_and_top_k_ranks_by_the_scores(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=30)
    scores, _ = independent_scores(frame)
    default = rank_catalogue(tmp_path / "cat", 10, seed=5)
    assert (rank_settings(default)["sampling"], rank_settings(default)["acquisition"]) == ("power",
                                                                                           "mutual_information")
    want = expected_sampled(frame, scores, "power", 1.0, seed=5)["id_str"].head(10).tolist()
    assert default["id_str"].to_pylist() == want
    queue = rank_catalogue(tmp_path / "cat", 10, sampling="top_k").to_pandas()
    assert queue["id_str"].tolist() == full_sort(frame, scores)["id_str"].head(10).tolist() != want
    np.testing.assert_array_equal(queue["sampling_key"], queue["acquisition"])
    assert set(queue["picked_by"]) == {"acquisition"}


# --- finetuned models: real tiny packages scored on a tiny release -------------------------------------------------


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    from test_scoring_support import make_release

    return make_release(tmp_path_factory.mktemp("release"), 30, 2, seed=3)


def scored_catalogue(package: Path, release: Path, out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Score ``release`` with ``package``; the unflagged rows and their MC outputs computed galaxy by galaxy."""
    from test_scoring_support import independent_outputs

    from zoobot_pipeline.catalogue import read_catalogue
    from zoobot_pipeline.scoring.pipeline import score_release

    score_release(release, package, out, progress=False, prep_workers=0)
    frame = read_catalogue(out).to_pandas()
    frame = frame[frame["flag"].isna()].reset_index(drop=True)
    return frame, independent_outputs(release, package, frame["id_str"].tolist())


def finetuned_package(root: Path, task: str, names: tuple[str, ...], mc_samples: int = 5) -> Path:
    """A tiny finetuned test_resnet package (random encoder, head weights wide enough that MC dropout matters)."""
    import torch
    from test_scoring_support import MODEL, PREPROCESSING

    from zoobot_pipeline.export import export_package
    from zoobot_pipeline.models import FinetuneConfig
    from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
    from zoobot_pipeline.models.torch.job import build_finetune_model

    torch.manual_seed(2)
    if task == "classification":
        config = FinetuneConfig(task=task, label_columns=("kind",))
        model = build_finetune_model(MODEL, config, class_names=list(names))
    else:
        model = build_finetune_model(MODEL, FinetuneConfig(task=task, label_columns=names))
    with torch.no_grad():
        model.head[1].weight.normal_(0.0, 0.5)
    checkpoint = save_checkpoint(model.eval(), root / "checkpoint", PREPROCESSING)
    return export_package(checkpoint, root / "package", mc_samples=mc_samples)


def test_classifier_catalogues_rank_by_bald_over_classes(small_release, tmp_path):
    package = finetuned_package(tmp_path, "classification", ("disk", "elliptical", "merger"))
    frame, outputs = scored_catalogue(package, small_release, tmp_path / "cat")
    outputs = outputs.astype(np.float64)
    assert outputs.shape[1:] == (5, 3) and len(frame) >= 15
    mean = outputs.mean(axis=1)

    def h(p: np.ndarray) -> np.ndarray:
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

    bald = np.maximum(h(mean) - h(outputs).mean(axis=1), 0.0)
    assert bald.max() > 0.01 and len(np.unique(bald)) == len(bald)
    expected = frame.assign(score=bald.astype(np.float32).astype(np.float64), flagged=False)
    expected = expected.sort_values(["score", "id_str"], ascending=[False, True])
    queue = rank_catalogue(tmp_path / "cat", 8, acquisition="class_mutual_information", batch_size=4,
                           sampling="top_k")
    assert queue["id_str"].to_pylist() == expected["id_str"].head(8).tolist()
    np.testing.assert_allclose(queue["acquisition"].to_numpy(), expected["score"].head(8), rtol=1e-5)
    assert queue["top_question"].null_count == 8

    merger = mean[:, 2]
    kept = expected[merger[expected.index] < 0.34]
    filtered = rank_catalogue(tmp_path / "cat", 5, acquisition="class_mutual_information",
                              exclude_answers=["merger>=0.34"], sampling="top_k")
    assert filtered["id_str"].to_pylist() == kept["id_str"].head(5).tolist()
    assert rank_settings(filtered)["skipped_answers"] == int((merger >= 0.34).sum())
    drawn = rank_catalogue(tmp_path / "cat", 5, acquisition="class_mutual_information", sampling="power", seed=2)
    assert drawn.num_rows == 5 and set(drawn["picked_by"].to_pylist()) == {"acquisition"}

    with pytest.raises(ZoobotPipelineError, match="'mutual_information' ranks a dirichlet model's catalogue, and "
                                                  "this is a classification model's catalogue; use one of random, "
                                                  "class_mutual_information"):
        rank_catalogue(tmp_path / "cat", 5)


def test_regressor_catalogues_rank_by_predictive_spread(small_release, tmp_path):
    package = finetuned_package(tmp_path, "regression", ("r50", "mass"))
    frame, outputs = scored_catalogue(package, small_release, tmp_path / "cat")
    spread = outputs.astype(np.float64).std(axis=1).astype(np.float32).astype(np.float64)  # stored as float32
    assert spread.min() > 0
    weighted = spread * [1.0, 3.0]
    expected = frame.assign(score=weighted.sum(axis=1), top=np.array(["r50", "mass"])[weighted.argmax(axis=1)])
    expected = expected.sort_values(["score", "id_str"], ascending=[False, True])
    queue = rank_catalogue(tmp_path / "cat", 10, acquisition="predictive_std", weights={"mass": 3.0}, batch_size=3,
                           sampling="top_k")
    assert queue["id_str"].to_pylist() == expected["id_str"].head(10).tolist()
    np.testing.assert_allclose(queue["acquisition"].to_numpy(), expected["score"].head(10), rtol=1e-6)
    assert queue["top_question"].to_pylist() == expected["top"].head(10).tolist()
    assert acq.catalogue_task(pq.read_schema(next((tmp_path / "cat" / "tiles").glob("*.parquet")))) == "regression"
    with pytest.raises(ZoobotPipelineError, match=r"unknown question\(s\) size; the catalogue has r50, mass"):
        rank_catalogue(tmp_path / "cat", 3, acquisition="predictive_std", weights={"size": 2.0})
    with pytest.raises(ZoobotPipelineError, match="'class_mutual_information' ranks a classification model's "
                                                  "catalogue, and this is a regression model's catalogue; use one "
                                                  "of random, predictive_std"):
        rank_catalogue(tmp_path / "cat", 3, acquisition="class_mutual_information")


# --- the rank command ----------------------------------------------------------------------------------------------


def test_rank_command_options_and_their_errors(tmp_path):
    from zoobot_pipeline.cli import queue as queue_cli

    assert (*acq.available_acquisitions(), *bs.STRATEGY_SHORTHANDS) == queue_cli.RANK_ACQUISITIONS
    assert queue_cli.SAMPLINGS == bs.SAMPLINGS
    write_catalogue(tmp_path / "cat", n_files=2, rows=30)
    options = ["--acquisition", "power_bald", "--beta", "2", "--random-fraction", "0.25", "--seed", "3",
               "--exclude-answer", "smooth-or-featured-dr5_artifact>=0.5", "--exclude-answer", "bar-dr5_no<0.1"]
    result = runner.invoke(app, ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "8", "--out",
                                 str(tmp_path / "q"), *options, "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    library = rank_catalogue(tmp_path / "cat", 8, acquisition="power_bald", beta=2.0, random_fraction=0.25, seed=3,
                             exclude_answers=["smooth-or-featured-dr5_artifact>=0.5", "bar-dr5_no<0.1"])
    written = pq.read_table(tmp_path / "q" / "queue.parquet")
    assert written["id_str"].to_pylist() == library["id_str"].to_pylist()
    assert written["picked_by"].to_pylist().count("random") == 2
    assert "power sampling, beta 2; 2 drawn at random" in " ".join(result.output.split())

    base = ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "3", "--out", str(tmp_path / "q2")]
    for bad, message in ((["--beta", "0"], "beta must be a finite number > 0, got 0.0"),
                         (["--beta", "-1", "--sampling", "softmax"], "beta must be a finite number > 0"),
                         (["--random-fraction", "1"], "random fraction must be at least 0 and below 1, got 1.0"),
                         (["--random-fraction", "-0.1"], "random fraction must be at least 0 and below 1"),
                         (["--exclude-answer", "smooth-or-featured-dr5_artifact=0.5"],
                          "exclude-answer 'smooth-or-featured-dr5_artifact=0.5': expected ANSWER OP THRESHOLD"),
                         (["--exclude-answer", "artifact>=0.5"], "unknown answer(s) artifact; the catalogue's "
                                                                 "answers are smooth-or-featured-dr5_smooth"),
                         (["--acquisition", "softrank_bald", "--sampling", "power"], "'softrank_bald' samples by"),
                         (["--acquisition", "predictive_std"], "ranks a regression model's catalogue")):
        line = error_line(runner.invoke(app, [*base, *bad]))
        assert message in line, (bad, line)
    assert not (tmp_path / "q2" / "queue.parquet").exists()
    shown = runner.invoke(app, ["rank", "--help"], env={"COLUMNS": "200"})
    assert "top_k|power|softmax|softrank" in shown.output and "power_bald" in shown.output
