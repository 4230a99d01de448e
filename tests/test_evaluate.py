"""``evaluate`` of pretrained (Dirichlet) checkpoints: per-question NLL, vote-fraction error and calibration, checked
against an independent numpy computation from ``predict()``; and the ``evaluate`` command (table, JSON, PNG, --out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.special import gammaln
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import VotesError
from zoobot_pipeline.models import FinetuneConfig, ModelConfig, TrainingConfig, evaluate, finetune, predict, pretrain
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import reliability_bins

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=2, batch_size=16, patience=5, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 40, 1, tile_size=512, seed=0, labelled_fraction=1.0)


@pytest.fixture(scope="module")
def checkpoint(release, tmp_path_factory) -> Path:
    return pretrain(release, release / "votes.parquet", tmp_path_factory.mktemp("pre") / "model", MODEL, TRAINING,
                    PREPROCESSING)


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _numpy_metrics(checkpoint: Path, release: Path) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray,
                                                             int]:
    """Per-question mean NLL and fraction MAE over galaxies asked, and (predicted, observed) fractions of every
    asked answer: from predict()'s concentrations and the votes file, with nothing from zoobot_pipeline.stats."""
    schema = get_schema(MODEL.schema_name)
    predictions = predict(checkpoint, release).to_pydict()
    votes = pq.read_table(release / "votes.parquet").to_pydict()
    row_of = {id_str: i for i, id_str in enumerate(votes["id_str"])}
    ids = [i for i in predictions["id_str"] if i in row_of]
    at = [predictions["id_str"].index(i) for i in ids]
    per_question: dict[str, dict[str, float]] = {}
    predicted_all, observed_all = [], []
    for question in schema.questions:
        cols = [a.label_col for a in question.answers]
        k = np.array([[votes[c][row_of[i]] for c in cols] for i in ids], dtype=np.float64)
        alpha = np.array([[predictions[f"{c}_concentration"][j] for c in cols] for j in at], dtype=np.float64)
        n = k.sum(axis=1)
        asked = n > 0
        k, alpha, n = k[asked], alpha[asked], n[asked]
        a0 = alpha.sum(axis=1)
        log_p = (gammaln(n + 1) + gammaln(a0) - gammaln(n + a0)
                 + (gammaln(k + alpha) - gammaln(alpha) - gammaln(k + 1)).sum(axis=1))
        predicted = alpha / a0[:, None]
        observed = k / n[:, None]
        per_question[question.name] = {"n_asked": int(asked.sum()), "nll": float(-log_p.mean()),
                                       "fraction_mae": float(np.abs(predicted - observed).mean())}
        predicted_all.append(predicted.ravel())
        observed_all.append(observed.ravel())
    return per_question, np.concatenate(predicted_all), np.concatenate(observed_all), len(ids)


def test_pretrained_checkpoint_metrics_match_an_independent_numpy_computation(checkpoint, release):
    metrics = evaluate(checkpoint, release, release / "votes.parquet")
    expected, predicted, observed, n = _numpy_metrics(checkpoint, release)
    assert metrics["n"] == n > 20
    assert set(metrics["questions"]) == set(expected)
    for name, row in expected.items():
        got = metrics["questions"][name]
        assert got["n_asked"] == row["n_asked"], name
        if row["n_asked"]:
            assert got["nll"] == pytest.approx(row["nll"], rel=1e-4), name
            assert got["fraction_mae"] == pytest.approx(row["fraction_mae"], rel=1e-4, abs=1e-6), name
        else:
            assert got["nll"] is None and got["fraction_mae"] is None
    # the training loss is the per-question NLL summed over questions, averaged over all galaxies
    total_nll = sum(r["nll"] * r["n_asked"] for r in expected.values() if r["n_asked"]) / metrics["n"]
    assert metrics["loss"] == pytest.approx(total_nll, rel=1e-4)

    calibration = metrics["calibration"]
    assert calibration["edges"] == pytest.approx(np.linspace(0, 1, 11))
    bin_of = np.minimum((predicted * 10).astype(int), 9)
    counts = np.bincount(bin_of, minlength=10)
    assert calibration["count"] == counts.tolist() and sum(counts) == len(predicted)
    for b in range(10):
        if counts[b]:
            assert calibration["predicted"][b] == pytest.approx(predicted[bin_of == b].mean(), rel=1e-4)
            assert calibration["observed"][b] == pytest.approx(observed[bin_of == b].mean(), rel=1e-6)
        else:
            assert calibration["predicted"][b] is None and calibration["observed"][b] is None
    gaps = [counts[b] * abs(predicted[bin_of == b].mean() - observed[bin_of == b].mean())
            for b in range(10) if counts[b]]
    assert calibration["calibration_error"] == pytest.approx(sum(gaps) / len(predicted), rel=1e-4)
    json.dumps(metrics, allow_nan=False)  # JSON-ready as returned


def test_evaluate_on_chosen_ids_and_unknown_ids_named(checkpoint, release):
    ids = pq.read_table(release / "votes.parquet")["id_str"].to_pylist()[:7]
    assert evaluate(checkpoint, release, release / "votes.parquet", ids)["n"] <= 7
    with pytest.raises(VotesError, match=r"votes\.parquet: 1 requested ids have no votes.*'nope'"):
        evaluate(checkpoint, release, release / "votes.parquet", [*ids, "nope"])


def test_votes_of_another_tree_are_refused_naming_the_file(checkpoint, release, tmp_path):
    bad = tmp_path / "votes.parquet"
    pq.write_table(pq.read_table(release / "votes.parquet").select(["id_str"]), bad)
    with pytest.raises(VotesError, match=f"{bad}: missing columns"):
        evaluate(checkpoint, release, bad)


def test_reliability_bins_put_one_in_the_last_bin_and_leave_empty_bins_nan():
    bins = reliability_bins(np.array([0.0, 0.05, 1.0]), np.array([0.0, 1.0, 1.0]), n_bins=4)
    assert bins.count.tolist() == [2, 0, 0, 1]
    assert bins.observed[0] == 0.5 and np.isnan(bins.predicted[1]) and bins.predicted[3] == 1.0
    assert bins.calibration_error == pytest.approx((2 * abs(0.025 - 0.5) + 0) / 3)


def test_cli_prints_tables_and_writes_json_and_png(checkpoint, release, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--release", str(release), "--labels",
            str(release / "votes.parquet"), "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "per question" in result.output and "calibration" in result.output and "smooth-or-featured" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "reliability.png"]
    written = json.loads((out / "evaluation.json").read_text())
    library = evaluate(checkpoint, release, release / "votes.parquet")
    for name, row in library["questions"].items():
        assert written["questions"][name] == pytest.approx(row, rel=1e-6), name
    assert written["calibration"]["count"] == library["calibration"]["count"]
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # its own earlier output is replaced without --overwrite
    rerun = CliRunner().invoke(app, args, terminal_width=200)
    assert rerun.exit_code == 0, rerun.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "reliability.png"]


def test_cli_refuses_an_out_that_is_not_empty_and_not_an_evaluation(checkpoint, release, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = _listing(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--release", str(release),
                                      "--labels", str(release / "votes.parquet"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and str(out) in result.output
    assert "not a model evaluation (no evaluation.json)" in result.output
    assert "Traceback" not in result.output
    assert _listing(tmp_path) == before
    # with --overwrite only the evaluation's own files are added; the user's file stays
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--release", str(release),
                                      "--labels", str(release / "votes.parquet"), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "notes.txt", "reliability.png"]


def test_cli_refuses_an_out_inside_the_checkpoint(checkpoint, release):
    before = _listing(checkpoint)
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--release", str(release),
                                      "--labels", str(release / "votes.parquet"), "--out", str(checkpoint / "eval")])
    assert result.exit_code == 2, result.output
    assert "input" in result.output and str(checkpoint) in result.output
    assert _listing(checkpoint) == before


def test_a_finetuned_dirichlet_checkpoint_gets_the_vote_metrics_of_its_new_tree(checkpoint, tmp_path):
    gz2 = simulate_release(tmp_path / "gz2", 24, 1, tile_size=512, seed=1, schema="gz2", labelled_fraction=1.0)
    config = FinetuneConfig(task="dirichlet", schema_name="gz2", n_blocks=0)
    out = finetune(checkpoint, gz2, gz2 / "votes.parquet", tmp_path / "tree", config,
                   TRAINING.model_copy(update={"epochs": 1}))
    metrics = evaluate(out, gz2, gz2 / "votes.parquet")
    assert set(metrics["questions"]) == {q.name for q in get_schema("gz2").questions}
    assert sum(metrics["calibration"]["count"]) > 0 and np.isfinite(metrics["loss"])
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out), "--release", str(gz2), "--labels",
                                      str(gz2 / "votes.parquet"), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["evaluation.json", "reliability.png"]
