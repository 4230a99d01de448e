"""The library's active-learning cycle (``zoobot_pipeline.cycle``) on a small simulated release with a tiny model: one
votes file makes one cycle whose work a rerun does not repeat, a new votes file makes a new cycle that never queues a
galaxy again, and a second cycle at once is refused."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from zoobot_pipeline.active.ranking import RUNS_DIR, rank_settings
from zoobot_pipeline.active.votes_merge import MERGED_KEY
from zoobot_pipeline.catalogue import part_files, read_catalogue
from zoobot_pipeline.cycle import LOCK_FILE, Cycle, RoundConfig, run_cycle
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import file_lock, write_parquet_atomic
from zoobot_pipeline.models import CHECKPOINT_JSON, ModelConfig, TrainingConfig, read_checkpoint_json
from zoobot_pipeline.runtime.package import MODEL_JSON, ModelPackage

torch.set_num_threads(2)
N_GALAXIES, N_LABELLED, N_NEW, TOP_K = 60, 30, 10, 5
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
CONFIG = RoundConfig(model=ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet"),
                     preprocessing=PREPROCESSING, training=TrainingConfig(epochs=1, batch_size=8, augmentation=None),
                     mc_samples=3)


def ids(table: pa.Table) -> set[str]:
    return set(table["id_str"].to_pylist())


def made(cycle_dir: Path) -> dict[str, int]:
    """Modification time of every file of the cycle's model and package and of its catalogue's part files (its run
    summary is rewritten by every scoring run), by relative path."""
    files = [*(cycle_dir / "model").rglob("*"), *(cycle_dir / "package").rglob("*"),
             *part_files(cycle_dir / "catalogue")]
    return {str(p.relative_to(cycle_dir)): p.stat().st_mtime_ns for p in sorted(files) if p.is_file()}


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    """Two runs of the first votes file's cycle, then a second votes file's cycle, with what was on disk between."""
    root = tmp_path_factory.mktemp("cycle")
    release = simulate_release(root / "release", N_GALAXIES, 2, tile_size=512, seed=0, labelled_fraction=1.0)
    votes = pq.read_table(release / "votes.parquet")
    labelled = write_parquet_atomic(votes.slice(0, N_LABELLED), root / "labelled.parquet")
    week1 = write_parquet_atomic(votes.slice(N_LABELLED, N_NEW), root / "incoming" / "votes-week1.parquet")
    work, queue = root / "work", root / "queue"

    def cycle(new_votes: Path, **options):
        return run_cycle(release, new_votes, labelled, work, queue, CONFIG, top_k=TOP_K, seed=3,
                         current_package=root / "current-package", **options)

    first = cycle(week1, rank_options={"sampling": "top_k"})
    after_first = {"labelled": labelled.read_bytes(), "files": made(first.cycle_dir),
                   "runs": sorted((queue / RUNS_DIR).iterdir())}
    again = cycle(week1, rank_options={"sampling": "top_k"})
    after_again = labelled.read_bytes()
    # week 2: votes for galaxies neither labelled nor queued, so only the queue's history keeps week 1's queue out
    unseen = votes.filter(pc.invert(pc.is_in(votes["id_str"], value_set=pa.array(
        sorted(ids(pq.read_table(labelled)) | ids(first.queue)))))).slice(0, N_NEW)
    week2 = write_parquet_atomic(unseen, root / "incoming" / "votes-week2.parquet")
    second = cycle(week2, acquisition="power_bald",
                   rank_options={"random_fraction": 0.5, "stratify_by": ["smooth-or-featured-dr5"]})
    return {"root": root, "release": release, "labelled": labelled, "queue": queue, "weeks": (week1, week2),
            "first": first, "after_first": after_first, "again": again, "after_again": after_again,
            "second": second}


def test_a_cycle_merges_trains_exports_scores_and_queues(cycles):
    first, week1 = cycles["first"], cycles["weeks"][0]
    assert first.cycle_dir == cycles["root"] / "work" / f"cycle-{hashlib.sha256(week1.read_bytes()).hexdigest()[:16]}"
    assert first.n_labelled == N_LABELLED + N_NEW
    assert read_checkpoint_json(first.checkpoint)["kind"] == "finetuned"
    assert ModelPackage.open(first.package).meta["training"]["checkpoint"] == str(first.checkpoint.resolve())
    assert (first.scoring.tiles_scored, first.scoring.tiles_skipped) == (2, 0)
    assert read_catalogue(first.scoring.out_dir).num_rows == N_GALAXIES
    assert first.queue.num_rows == TOP_K and first.queue["rank"].to_pylist() == list(range(1, TOP_K + 1))
    with_votes = ids(pq.read_table(cycles["release"] / "votes.parquet").slice(0, N_LABELLED + N_NEW))
    assert ids(pq.read_table(cycles["weeks"][0])) <= with_votes and not ids(first.queue) & with_votes


def test_the_same_votes_file_again_does_nothing_new(cycles):
    first, again, before = cycles["first"], cycles["again"], cycles["after_first"]
    assert again.cycle_dir == first.cycle_dir and again.n_labelled == N_LABELLED + N_NEW
    assert cycles["after_again"] == before["labelled"]  # the votes were not merged twice
    assert (again.scoring.tiles_scored, again.scoring.tiles_skipped) == (0, 2)
    assert again.queue.equals(first.queue)
    # no retraining, no export, no rescoring: the model, the package and the catalogue's parts are as they were
    assert f"model/{CHECKPOINT_JSON}" in before["files"] and f"package/{MODEL_JSON}" in before["files"]
    assert len([k for k in before["files"] if k.startswith("catalogue/")]) == 2
    assert made(first.cycle_dir) == before["files"]


def test_a_new_votes_file_makes_a_new_cycle_that_never_queues_a_galaxy_again(cycles):
    first, second, labelled = cycles["first"], cycles["second"], cycles["labelled"]
    assert second.cycle_dir != first.cycle_dir
    merged = pq.read_table(labelled)
    assert second.n_labelled == merged.num_rows == N_LABELLED + 2 * N_NEW
    assert json.loads(merged.schema.metadata[MERGED_KEY]) == [
        hashlib.sha256(week.read_bytes()).hexdigest() for week in cycles["weeks"]]
    assert second.queue.num_rows == TOP_K
    assert not ids(second.queue) & ids(first.queue) and not ids(second.queue) & ids(merged)
    runs = sorted((cycles["queue"] / RUNS_DIR).iterdir())
    assert len(runs) == 2 and runs[0] == cycles["after_first"]["runs"][0]
    assert (cycles["root"] / "current-package").resolve() == second.package.resolve()


def test_each_cycle_draws_afresh_with_its_rank_options(cycles):
    first, second = cycles["first"], cycles["second"]
    settings = [rank_settings(cycle.queue) for cycle in (first, second)]
    assert [s["sampling"] for s in settings] == ["top_k", "power"]
    assert settings[1]["random_fraction"] == 0.5 and settings[1]["random_picks"] == round(0.5 * TOP_K)
    assert second.queue["picked_by"].to_pylist().count("random") == round(0.5 * TOP_K)
    assert settings[1]["stratify_by"] == ["smooth-or-featured-dr5"] and settings[0]["strata"] == {}
    strata = settings[1]["strata"]
    assert sum(s["drawn"] for s in strata.values()) == TOP_K - round(0.5 * TOP_K)
    assert Counter(second.queue.filter(pc.equal(second.queue["picked_by"], "acquisition"))["stratum"].to_pylist()) \
        == {name: s["drawn"] for name, s in strata.items() if s["drawn"]}
    # the draws' seed: the cycle's seed plus its votes file's hash, so each week draws afresh
    for week, s in zip(cycles["weeks"], settings, strict=True):
        assert s["seed"] == 3 + int(hashlib.sha256(week.read_bytes()).hexdigest()[:8], 16)


def test_a_cycle_draws_a_power_batch_unless_told_otherwise(cycles, tmp_path):
    def opened(**options):
        return Cycle.open(cycles["release"], cycles["weeks"][0], cycles["labelled"], tmp_path / "work",
                          cycles["queue"], CONFIG, **options)

    assert (opened().acquisition, opened().rank_options["sampling"]) == ("mutual_information", "power")
    assert opened(rank_options={"sampling": "top_k"}).rank_options["sampling"] == "top_k"
    assert (opened(acquisition="softmax_bald").acquisition, opened(acquisition="softmax_bald").rank_options[
        "sampling"]) == ("mutual_information", "softmax")
    with pytest.raises(ZoobotPipelineError, match="'softmax_bald' samples by 'softmax'"):
        opened(acquisition="softmax_bald", rank_options={"sampling": "top_k"})
    assert not (tmp_path / "work").exists()


def test_bad_rank_options_are_refused_before_anything_runs(cycles, tmp_path):
    for options, message in (({"beta": 0}, "beta must be"), ({"random_fraction": 1.0}, "random fraction"),
                             ({"temperature": 2}, "unknown rank option"),
                             ({"stratify_by": ["bars"]}, "tree decals_dr5: cannot stratify by bars")):
        with pytest.raises(ZoobotPipelineError, match=message):
            run_cycle(cycles["release"], cycles["weeks"][0], cycles["labelled"], tmp_path / "work", cycles["queue"],
                      CONFIG, rank_options=options)
    assert not (tmp_path / "work").exists()


def test_a_second_cycle_at_once_is_refused_before_it_touches_anything(cycles, tmp_path):
    labelled = cycles["labelled"]
    before = labelled.read_bytes()
    week3 = write_parquet_atomic(pq.read_table(cycles["release"] / "votes.parquet").slice(55, 5),
                                 tmp_path / "votes-week3.parquet")
    with file_lock(cycles["root"] / "work" / LOCK_FILE) as held:
        assert held
        with pytest.raises(RuntimeError, match="another active-learning cycle is running"):
            run_cycle(cycles["release"], week3, labelled, cycles["root"] / "work", cycles["queue"], CONFIG, top_k=TOP_K)
    assert labelled.read_bytes() == before


def test_a_missing_votes_file_is_an_error_naming_it(cycles, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        run_cycle(cycles["release"], tmp_path / "missing.parquet", cycles["labelled"], tmp_path / "work",
                  cycles["queue"], CONFIG)
