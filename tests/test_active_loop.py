"""The label-efficiency experiment's mechanics (``benchmarks/al_experiment.py``) on a small simulated release with a
tiny model: rounds run, the labelled set grows by K per round with the volunteers' own votes, nothing is acquired
twice, test galaxies never are, the strategies share their start, MI picks what the previous model was most uncertain
about, the test NLL and accuracy match an independent computation, and the results read back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from benchmarks.al_experiment import (
    ExperimentConfig,
    Strategy,
    preset_strategies,
    result_columns,
    reveal_votes,
    run_experiment,
)
from benchmarks.al_summary import choose_default, labels_needed, summarise
from zoobot_pipeline.active.acquisition import mutual_information
from zoobot_pipeline.catalogue import read_catalogue
from zoobot_pipeline.cycle import RoundConfig
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll

torch.set_num_threads(2)
SCHEMA = get_schema("decals_dr5")
N_TEST, N_INITIAL, TOP_K, N_ROUNDS = 12, 16, 8, 2


def ids_of(path) -> set[str]:
    return set(pq.read_table(path, columns=["id_str"])["id_str"].to_pylist())


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("active-loop")
    release = simulate_release(root / "release", 72, 1, seed=5, labelled_fraction=1.0)
    preprocessing = PreprocessingConfig.gz_decals(input_size=32)
    round_config = RoundConfig(
        model=ModelConfig.from_preprocessing(preprocessing, architecture="test_resnet"), preprocessing=preprocessing,
        training=TrainingConfig(epochs=1, batch_size=8, augmentation=None), mc_samples=3)
    presets = preset_strategies(SCHEMA.name, "bar-dr5")
    config = ExperimentConfig(strategies=(presets["topk_bald"], presets["random"], presets["power_bald_curated"]),
                              seeds=(4,), n_test=N_TEST, n_initial=N_INITIAL, top_k=TOP_K, n_rounds=N_ROUNDS,
                              keep_models=True, round=round_config, targeted_question="bar-dr5")
    lines: list[str] = []
    results = run_experiment(release, root / "out", config, log=lines.append)
    return release, root / "out", config, results, lines


def test_rounds_run_and_the_labelled_set_grows_by_k(experiment):
    _, out, config, results, lines = experiment
    assert results.column_names == result_columns(SCHEMA)
    rows = results.to_pylist()
    assert [(r["strategy"], r["round"]) for r in rows] == [
        (s.name, r) for s in config.strategies for r in range(N_ROUNDS + 1)]
    for row in rows:
        assert row["n_labelled"] == N_INITIAL + TOP_K * row["round"]
        assert np.isfinite(row["test_nll"]) and row["test_nll"] > 0 and 0 <= row["accuracy"] <= 1
    assert len(lines) == 1 + len(config.strategies) * N_ROUNDS
    # every strategy starts from the one round-0 model
    start = [r | {"strategy": None} for r in rows if r["round"] == 0]
    assert start[0] == start[1] == start[2]


def test_results_files_read_back(experiment):
    _, out, config, results, _ = experiment
    assert pq.read_table(out / "results.parquet").equals(results)
    saved = json.loads((out / "experiment.json").read_text())
    assert ExperimentConfig.model_validate(saved["config"]) == config
    acquired = pq.read_table(out / "acquired.parquet")
    assert acquired.num_rows == len(config.strategies) * N_ROUNDS * TOP_K
    assert set(acquired["kind"].to_pylist()) <= {"smooth", "featured", "edge_on", "merger", "star", "artifact"}


def test_nothing_acquired_twice_and_test_galaxies_never(experiment):
    release, out, config, _, _ = experiment
    seed_dir = out / "seed_4"
    initial = ids_of(seed_dir / "initial.parquet")
    test = ids_of(seed_dir / "known_votes.parquet") - initial
    assert len(initial) == N_INITIAL and len(test) == N_TEST
    acquired = pq.read_table(out / "acquired.parquet")
    oracle = read_votes(release / "votes.parquet", SCHEMA)
    for strategy in (s.name for s in config.strategies):
        picked = acquired.filter(pc.equal(acquired["strategy"], strategy))["id_str"].to_pylist()
        assert len(set(picked)) == len(picked) == N_ROUNDS * TOP_K
        assert not set(picked) & (initial | test)
        final = read_votes(seed_dir / strategy / f"round_{N_ROUNDS}" / "labelled.parquet", SCHEMA)
        assert set(final["id_str"].to_pylist()) == initial | set(picked)
        # the revealed votes are the volunteers' own, counted once
        expected = oracle.take(pc.index_in(final["id_str"], value_set=oracle["id_str"]))
        np.testing.assert_array_equal(vote_matrix(final, SCHEMA), vote_matrix(expected, SCHEMA))
        # each round's queue history holds exactly what that strategy acquired
        queued = pa.concat_tables(pq.read_table(p) for p in sorted((seed_dir / strategy / "queue" / "runs").iterdir()))
        assert sorted(queued["id_str"].to_pylist()) == sorted(picked)


def test_mutual_information_takes_the_most_uncertain_eligible_galaxies(experiment):
    _, out, _, _, _ = experiment
    seed_dir = out / "seed_4"
    catalogue = read_catalogue(seed_dir / "round_0" / "catalogue")
    excluded = ids_of(seed_dir / "known_votes.parquet")
    eligible = catalogue.filter(pc.and_(pc.is_null(catalogue["flag"]),
                                        pc.invert(pc.is_in(catalogue["id_str"], value_set=pa.array(sorted(excluded))))))
    scores = mutual_information(eligible)
    expected = set(np.asarray(eligible["id_str"].to_pylist())[np.argsort(-scores, kind="stable")[:TOP_K]])
    acquired = pq.read_table(out / "acquired.parquet")
    first = acquired.filter(pc.and_(pc.equal(acquired["strategy"], "topk_bald"),
                                    pc.equal(acquired["round"], 1)))
    assert set(first["id_str"].to_pylist()) == expected
    random_first = acquired.filter(pc.and_(pc.equal(acquired["strategy"], "random"), pc.equal(acquired["round"], 1)))
    assert set(random_first["id_str"].to_pylist()) != expected


def test_reveal_votes_refuses_a_galaxy_without_votes(tmp_path, experiment):
    release = experiment[0]
    queue = pa.table({"id_str": ["syn_000001", "not_a_galaxy"]})
    with pytest.raises(ValueError, match="not_a_galaxy"):
        reveal_votes(queue, release / "votes.parquet", tmp_path / "new.parquet", SCHEMA)


def test_config_refuses_unknown_strategies_and_questions():
    with pytest.raises(ValueError, match="unknown acquisition 'bald'"):
        ExperimentConfig(strategies=(Strategy(name="bald", acquisition="bald"),))
    with pytest.raises(ValueError, match="distinct names"):
        ExperimentConfig(strategies=(Strategy(name="a"), Strategy(name="a", sampling="power")))
    with pytest.raises(ValueError, match="no question"):
        ExperimentConfig(question="is-it-a-cat")


def test_test_metrics_match_an_independent_computation(experiment):
    release, out, config, results, _ = experiment
    seed_dir = out / "seed_4"
    test_ids = ids_of(seed_dir / "known_votes.parquet") - ids_of(seed_dir / "initial.parquet")
    catalogue = read_catalogue(seed_dir / "topk_bald" / "round_1" / "catalogue").to_pandas()
    catalogue = catalogue[catalogue["id_str"].isin(test_ids) & catalogue["flag"].isna()].sort_values("id_str")
    votes = pq.read_table(release / "votes.parquet").to_pandas().set_index("id_str").loc[catalogue["id_str"]]
    truth = pq.read_table(release / "truth.parquet").to_pandas().set_index("id_str").loc[catalogue["id_str"]]
    concentrations = catalogue[[f"{c}_concentration" for c in SCHEMA.label_cols]].to_numpy()
    nll = dirichlet_multinomial_nll(votes[SCHEMA.label_cols].to_numpy(), concentrations, SCHEMA).sum(axis=1)
    answers = SCHEMA.question(config.question).label_cols
    true_p = truth[[f"p_{c}" for c in answers]].to_numpy()
    clear = true_p.max(axis=1) >= config.clear_threshold
    predicted = catalogue[[f"{c}_fraction" for c in answers]].to_numpy()
    accuracy = (predicted[clear].argmax(axis=1) == true_p[clear].argmax(axis=1)).mean()

    row = next(r for r in results.to_pylist() if r["strategy"] == "topk_bald" and r["round"] == 1)
    assert row["n_test"] == len(nll) and row["n_clear"] == clear.sum()
    assert row["test_nll"] == pytest.approx(nll.mean(), rel=1e-9)
    assert row["accuracy"] == pytest.approx(accuracy)
    for question in SCHEMA.questions:
        assert row[f"nll_{question.name}"] == pytest.approx(
            dirichlet_multinomial_nll(votes[SCHEMA.label_cols].to_numpy(), concentrations, SCHEMA)[:, question.index]
            .mean(), rel=1e-9)


def test_the_curated_strategy_mixes_in_random_galaxies_and_skips_what_the_model_calls_artefacts(experiment):
    _, out, _, _, _ = experiment
    acquired = pq.read_table(out / "acquired.parquet").to_pandas()
    curated = acquired[acquired["strategy"] == "power_bald_curated"]
    for round_ in range(1, N_ROUNDS + 1):
        picked_by = curated[curated["round"] == round_]["picked_by"].value_counts().to_dict()
        assert picked_by == {"acquisition": TOP_K - round(0.2 * TOP_K), "random": round(0.2 * TOP_K)}
    start = read_catalogue(out / "seed_4" / "round_0" / "catalogue").to_pandas().set_index("id_str")
    first = curated[curated["round"] == 1]["id_str"]
    assert (start.loc[first, "smooth-or-featured-dr5_artifact_fraction"] < 0.5).all()
    # the first stochastic batch differs from top-K's on the same catalogue
    top_k = acquired[(acquired["strategy"] == "topk_bald") & (acquired["round"] == 1)]["id_str"]
    assert set(first) != set(top_k)


def test_labels_needed_interpolates_and_extrapolates_a_curve():
    labels = np.array([100.0, 200.0, 300.0])
    assert labels_needed(labels, np.array([10.0, 8.0, 6.0]), 7.0) == (250.0, False)
    assert labels_needed(labels, np.array([6.0, 5.0, 4.0]), 7.0) == (100.0, False)
    # never reached: along the last segment (slope -0.005 per label), at most twice the budget
    assert labels_needed(labels, np.array([10.0, 9.5, 9.0]), 8.8) == (pytest.approx(340.0), True)
    assert labels_needed(labels, np.array([10.0, 9.5, 9.0]), 7.0) == (600.0, True)
    assert labels_needed(labels, np.array([10.0, 9.5, 9.6]), 7.0) == (600.0, True)


def test_summary_matches_an_independent_computation_of_labels_saved():
    rng = np.random.default_rng(3)
    labels = [100, 200, 300, 400]
    questions = ["q1", "q2"]
    rows = []
    for seed in range(4):
        offsets = {"random": [0.0, -1.0, -2.0, -3.0], "better": [0.0, -1.5, -2.6, -3.6]}
        for strategy, curve in offsets.items():
            noise = rng.normal(0, 0.05, 4) * (strategy != "random")
            for round_, n in enumerate(labels):
                value = 10.0 + curve[round_] + noise[round_] * (round_ > 0)
                rows.append({"seed": seed, "strategy": strategy, "round": round_, "n_labelled": n,
                             "test_nll": value, "nll_q1": value / 2, "nll_q2": value / 2 + 1.0})
    summary = summarise(rows, ["random", "better"], questions, n_rounds=3, candidates=["better"])
    saved = []
    for seed in range(4):
        mine = sorted((r for r in rows if r["seed"] == seed and r["strategy"] == "better"), key=lambda r: r["round"])
        target = next(r["test_nll"] for r in rows
                      if r["seed"] == seed and r["strategy"] == "random" and r["round"] == 3)
        values = np.array([r["test_nll"] for r in mine])
        needed = np.interp(-target, -values, labels)  # the curve falls monotonically here
        saved.append(100 * (1 - needed / 400))
    entry = summary["strategies"]["better"]
    assert entry["labels_saved_vs_random_pct"]["value"] == pytest.approx(np.mean(saved), abs=0.01)
    half = stats.t.ppf(0.975, 3) * np.std(saved, ddof=1) / 2
    assert entry["labels_saved_vs_random_pct"]["ci95"] == pytest.approx(
        [np.mean(saved) - half, np.mean(saved) + half], abs=0.01)
    # halving the NLL and shifting it leaves the labels needed as they are, question by question
    for question in questions:
        assert entry["per_question"][question]["labels_saved_vs_random_pct"]["value"] == pytest.approx(
            np.mean(saved), abs=0.01)
    assert entry["never_worse_than_random"] and summary["seeds"] == [0, 1, 2, 3]
    assert summary["budgets"] == labels and summary["default_strategy"] == "better"
    assert summarise(rows, ["random", "better"], questions, n_rounds=3, candidates=[])["default_strategy"] == "random"
    others = {"better": entry,
              "worse": {"labels_saved_vs_random_pct": {"value": 50.0}, "never_worse_than_random": False},
              "flat": {"labels_saved_vs_random_pct": {"value": -3.0}, "never_worse_than_random": True}}
    assert choose_default(others, ["worse", "flat"]) == "random"
    assert choose_default(others, ["flat", "better"]) == "better"
    with pytest.raises(ValueError, match="random"):
        summarise(rows, ["better"], questions, n_rounds=3, candidates=["better"])


def test_a_rerun_resumes_keeping_finished_curves_and_redoing_one_cut_short(experiment, tmp_path):
    release, out, config, results, _ = experiment
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    lines: list[str] = []
    assert run_experiment(release, copy, config, log=lines.append).equals(results)
    assert lines == ["seed 4 round 0: measured before (power_bald_curated, random, topk_bald finished)"]
    # cut power_bald_curated short after its first round: its rounds start again, the others stay as they were
    rows = [r for r in results.to_pylist() if not (r["strategy"] == "power_bald_curated" and r["round"] == N_ROUNDS)]
    pq.write_table(pa.Table.from_pylist(rows, schema=results.schema), copy / "results.parquet")
    lines.clear()
    again = run_experiment(release, copy, config, log=lines.append).to_pylist()
    assert [line.split(":")[0] for line in lines] == [
        "seed 4 round 0", *(f"seed 4 power_bald_curated round {r}" for r in range(1, N_ROUNDS + 1))]
    kept = [r for r in again if r["strategy"] != "power_bald_curated"]
    assert kept == [r for r in results.to_pylist() if r["strategy"] != "power_bald_curated"]
    assert sorted((r["strategy"], r["round"]) for r in again) == sorted(
        (r["strategy"], r["round"]) for r in results.to_pylist())
    acquired = pq.read_table(copy / "acquired.parquet").to_pandas()
    assert len(acquired) == len(config.strategies) * N_ROUNDS * TOP_K
    other = config.model_copy(update={"top_k": TOP_K + 1})
    with pytest.raises(ValueError, match="another experiment"):
        run_experiment(release, copy, other)


def test_more_strategies_start_from_another_experiments_round_0_models(experiment, tmp_path):
    release, out, config, results, _ = experiment
    more = config.model_copy(update={"strategies": (config.strategies[1],)})  # random again, in a folder of its own
    lines: list[str] = []
    again = run_experiment(release, tmp_path / "more", more, log=lines.append, start_from=out).to_pylist()
    assert lines[0] == f"seed 4 round 0: {out / 'seed_4' / 'round_0' / 'catalogue'}, test NLL " \
                       f"{results.filter(pc.equal(results['round'], 0))['test_nll'][0].as_py():.3f}"
    assert not (tmp_path / "more" / "seed_4" / "round_0").exists()  # not trained again
    before = [r for r in results.to_pylist() if r["strategy"] == "random"]
    assert [(r["round"], r["n_labelled"], r["test_nll"]) for r in again] == [
        (r["round"], r["n_labelled"], r["test_nll"]) for r in before]
    with pytest.raises(ValueError, match="cannot start this one"):
        run_experiment(release, tmp_path / "other", more.model_copy(update={"top_k": TOP_K + 1}), start_from=out)
