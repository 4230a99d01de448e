"""Real Prefect flow runs (a temporary local API on SQLite, in a temporary PREFECT_HOME) on small simulated releases:
training, export, scoring (in-process and on a local Ray), ranking and queueing, the active-learning cycle and the
release watcher (two at once, a crashed one), with the artifacts read back through the Prefect client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.states import Failed
from prefect.testing.utilities import prefect_test_harness
from test_scoring_support import truncate_tile

from flows import (
    active_learning_cycle,
    export,
    pretrain,
    rank_and_queue,
    score_release,
    watch_releases,
)
from flows.artifacts import artifact_key
from flows.scoring import (
    KEYS_DIR,
    make_manifest,
    rank_queue,
    retry_unless_bad_input,
    run_id_of,
    score_catalogue,
    upload_subjects,
)
from flows.watcher import Ledger
from zoobot_pipeline.active.manifest import read_manifest
from zoobot_pipeline.active.ranking import QUEUE_FILE, RUNS_DIR
from zoobot_pipeline.active.votes_merge import MERGED_KEY
from zoobot_pipeline.active.zooniverse import UploadError
from zoobot_pipeline.catalogue import read_catalogue
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.export import ModelPackage
from zoobot_pipeline.io import write_parquet_atomic
from zoobot_pipeline.models import ModelConfig, TrainingConfig, read_checkpoint_json
from zoobot_pipeline.scoring.pipeline import ScoringError

REPO = Path(__file__).resolve().parents[1]
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=3, batch_size=16, patience=5, augmentation=None)
N_GALAXIES = 60


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """A temporary Prefect API for the session (own PREFECT_HOME, analytics off, no outside PREFECT_API_URL)."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_URL",
                                            "RAY_AUTH_MODE")}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", RAY_AUTH_MODE="disabled")
    os.environ.pop("PREFECT_API_URL", None)
    with temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False},
                            restore_defaults={PREFECT_API_URL}), prefect_test_harness():
        yield PREFECT_API_URL.value()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run(flow: Any, **parameters: Any) -> tuple[Any, UUID]:
    """Run a flow; returns its result and its flow run id (raises if it failed)."""
    state = flow(**parameters, return_state=True)
    return state.result(), state.state_details.flow_run_id


def artifacts(flow_run_id: UUID) -> dict[str, Artifact]:
    """The artifacts a flow run made, by key, read back from the API."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def table_rows(artifact: Artifact) -> list[dict[str, Any]]:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    columns = list(data)
    return [dict(zip(columns, values, strict=True)) for values in zip(*data.values(), strict=True)]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """60 simulated galaxies on 2 tiles, every one with volunteer votes."""
    return simulate_release(tmp_path_factory.mktemp("sim") / "dr1", N_GALAXIES, 2, tile_size=512, seed=0,
                            labelled_fraction=1.0)


@pytest.fixture(scope="module")
def pretrained(prefect_api, release, tmp_path_factory) -> tuple[Path, UUID]:
    out = tmp_path_factory.mktemp("pretrain") / "model"
    return run(pretrain, release_dir=release, out_dir=out, model=MODEL, training=TRAINING,
               preprocessing=PREPROCESSING)


@pytest.fixture(scope="module")
def package(pretrained, tmp_path_factory) -> tuple[Path, UUID]:
    return run(export, checkpoint_dir=pretrained[0], out_dir=tmp_path_factory.mktemp("export") / "package",
               mc_samples=4)


def test_pretrain_and_export_flows_write_a_checkpoint_a_package_and_their_reports(pretrained, package):
    checkpoint, pretrain_run = pretrained
    meta = read_checkpoint_json(checkpoint)
    assert meta["kind"] == "pretrained" and meta["model"]["architecture"] == "test_resnet"
    found = artifacts(pretrain_run)
    history = table_rows(found["pretrain-model-history"])
    assert [row["epoch"] for row in history] == [h["epoch"] for h in meta["metrics"]["history"]]
    assert len(history) == TRAINING.epochs
    assert f"| {meta['metrics']['best_epoch']} |" in found["pretrain-model"].data

    package_dir, export_run = package
    opened = ModelPackage.open(package_dir)  # verifies the sha256 of the ONNX file
    assert opened.mc_samples == 4 and opened.meta["training"]["checkpoint"] == str(checkpoint.resolve())
    assert opened.sha256 in artifacts(export_run)["export-package"].data


def test_score_release_flow_scores_every_source_and_reports_failed_tiles(package, release, tmp_path):
    damaged = Path(shutil.copytree(release, tmp_path / "damaged"))
    truncate_tile(next((damaged / "tiles").glob("tile_0001*")))
    out = tmp_path / "catalogue"
    result, run_id = run(score_release, release_dir=damaged, package_dir=package[0], out_dir=out)
    assert result.executor == "in-process" and result.n_sources == N_GALAXIES
    assert [f["tile_id"] for f in result.failures] == ["tile_0001"]
    assert read_catalogue(out).num_rows == N_GALAXIES

    found = artifacts(run_id)
    name = json.loads((release / "release.json").read_text())["name"]
    key = artifact_key("score", name)
    assert f"{result.n_scored} of {N_GALAXIES} galaxies scored" in found[key].data
    failures = table_rows(found[f"{key}-failures"])
    assert [(row["tile_id"], row["n_sources"]) for row in failures] == [("tile_0001", result.failures[0]["n_sources"])]

    # the tile is repaired: a rerun keeps the good tile and scores only the failed one again
    shutil.copy(next((release / "tiles").glob("tile_0001*")), next((damaged / "tiles").glob("tile_0001*")))
    rerun, rerun_id = run(score_release, release_dir=damaged, package_dir=package[0], out_dir=out)
    assert (rerun.tiles_skipped, rerun.tiles_scored, rerun.failures) == (1, 1, [])
    assert table_rows(artifacts(rerun_id)[f"{key}-failures"]) == []


def test_score_release_flow_on_a_local_ray_matches_in_process(package, release, tmp_path):
    local, _ = run(score_release, release_dir=release, package_dir=package[0], out_dir=tmp_path / "local")
    on_ray, run_id = run(score_release, release_dir=release, package_dir=package[0], out_dir=tmp_path / "ray",
                         use_ray=True, workers=1)
    assert on_ray.executor == "ray" and "executor: ray" in next(
        a.data for k, a in artifacts(run_id).items() if k.startswith("score-") and not k.endswith("failures"))
    a, b = (read_catalogue(p.out_dir).sort_by("id_str") for p in (local, on_ray))
    assert a["id_str"].to_pylist() == b["id_str"].to_pylist()
    np.testing.assert_allclose(a["acquisition"].to_numpy(zero_copy_only=False),
                               b["acquisition"].to_numpy(zero_copy_only=False), rtol=1e-5)


@pytest.fixture(scope="module")
def catalogue(package, release, tmp_path_factory) -> Path:
    result, _ = run(score_release, release_dir=release, package_dir=package[0],
                    out_dir=tmp_path_factory.mktemp("scored") / "catalogue")
    return result.out_dir


def test_rank_and_queue_writes_queue_manifest_and_sheet_and_a_run_key_queues_only_once(catalogue, release, tmp_path):
    queue_dir = tmp_path / "queue"
    first, run_id = run(rank_and_queue, catalogue=catalogue, release_dir=release, queue_dir=queue_dir, top_k=6,
                        run_key="weekly-1", project_id=11, subject_set_id=22)
    queue = pq.read_table(first.run_file)
    assert queue.num_rows == first.queued == 6 and queue["rank"].to_pylist() == list(range(1, 7))
    assert [row.id_str for row in read_manifest(first.manifest.parent)] == queue["id_str"].to_pylist()
    assert first.upload.dry_run and len(first.upload.to_upload) == 6
    with Image.open(first.sheet) as sheet:
        assert sheet.format == "PNG" and sheet.width > 0

    found = artifacts(run_id)
    release_name = queue["release"][0].as_py()
    key = artifact_key("queue", release_name)
    top = table_rows(found[f"{key}-top"])
    assert [(r["rank"], r["id_str"]) for r in top] == list(zip(range(1, 7), queue["id_str"].to_pylist(), strict=True))
    assert f"({first.sheet.resolve().as_uri()})" in found[f"{key}-sheet"].data
    assert "dry run: would upload 6 of 6 subjects" in found[key].data

    again, _ = run(rank_and_queue, catalogue=catalogue, release_dir=release, queue_dir=queue_dir, top_k=6,
                   run_key="weekly-1")
    assert again.run_file == first.run_file and len(list((queue_dir / RUNS_DIR).iterdir())) == 1
    created = json.loads((queue_dir / KEYS_DIR / "weekly-1.json").read_text())["created"]
    assert first.run_id == run_id_of(datetime.fromisoformat(created))

    following, _ = run(rank_and_queue, catalogue=catalogue, release_dir=release, queue_dir=queue_dir, top_k=6)
    assert following.run_id != first.run_id
    assert not set(pq.read_table(following.run_file)["id_str"].to_pylist()) & set(queue["id_str"].to_pylist())
    assert pq.read_table(queue_dir / QUEUE_FILE)["run_id"][0].as_py() == following.run_id


def test_active_learning_cycle_merges_retrains_scores_and_queues_once_per_votes_file(pretrained, release,
                                                                                        tmp_path):
    votes = pq.read_table(release / "votes.parquet")
    labelled = write_parquet_atomic(votes.slice(0, 30), tmp_path / "labelled.parquet")
    new_votes = write_parquet_atomic(votes.slice(30, 10), tmp_path / "incoming" / "votes-week1.parquet")
    params = {"release_dir": release, "new_votes": new_votes, "labelled_votes": labelled,
              "pretrained": pretrained[0], "work_dir": tmp_path / "cycles", "queue_dir": tmp_path / "queue",
              "top_k": 5, "training": TRAINING.model_copy(update={"epochs": 2}), "mc_samples": 3,
              "current_package": tmp_path / "current-package"}
    result, run_id = run(active_learning_cycle, **params)
    merged = pq.read_table(labelled)
    assert merged.num_rows == 40 and len(json.loads(merged.schema.metadata[MERGED_KEY])) == 1
    assert read_checkpoint_json(result.checkpoint)["kind"] == "finetuned"
    assert ModelPackage.open(result.package).meta["training"]["checkpoint"] == str(result.checkpoint.resolve())
    assert (tmp_path / "current-package").resolve() == result.package.resolve()
    queued = pq.read_table(result.queue.run_file)["id_str"]
    assert queued.length() == 5 and not pc.any(pc.is_in(queued, value_set=merged["id_str"])).as_py()
    found = artifacts(run_id)
    assert "labelled galaxies: 40" in found["active-learning-cycle"].data
    assert ModelPackage.open(result.package).sha256 in found[artifact_key("export", result.package.name)].data
    assert table_rows(found[f"{artifact_key('finetune', result.checkpoint.name)}-history"])
    assert any(key.startswith("score-") for key in found)

    weights = (result.checkpoint / "checkpoint.json").stat().st_mtime_ns
    again, _ = run(active_learning_cycle, **params)
    assert again.queue.run_id == result.queue.run_id and len(list((tmp_path / "queue" / RUNS_DIR).iterdir())) == 1
    assert pq.read_table(labelled).num_rows == 40
    assert (result.checkpoint / "checkpoint.json").stat().st_mtime_ns == weights  # not retrained

    nothing, _ = run(active_learning_cycle, **{**params, "new_votes": tmp_path / "incoming" / "missing.parquet"})
    assert nothing is None


@pytest.fixture
def releases_root(tmp_path) -> Path:
    root = tmp_path / "releases"
    for i in range(3):
        simulate_release(root / f"dr{i + 1}", 30, 1, tile_size=384, seed=10 + i, labelled_fraction=0.0,
                         name=f"dr{i + 1}")
    (root / "incoming").mkdir()  # a release still being copied in: no release.json yet
    return root


def _queue_runs(outputs: Path, name: str) -> list[str]:
    return sorted(p.name for p in (outputs / "releases" / name / "queue" / RUNS_DIR).glob("*.parquet"))


def test_two_watchers_at_once_process_each_release_exactly_once(package, releases_root, tmp_path):
    outputs = tmp_path / "outputs"
    results: dict[str, tuple[list[str], UUID]] = {}
    start = threading.Barrier(2)

    def watcher(label: str) -> None:
        start.wait()
        results[label] = run(watch_releases, releases_root=releases_root, package_dir=package[0],
                             outputs_root=outputs, top_k=4)

    threads = [threading.Thread(target=watcher, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (done_a, run_a), (done_b, run_b) = results["a"], results["b"]
    assert not set(done_a) & set(done_b) and sorted(done_a + done_b) == ["dr1", "dr2", "dr3"]
    ledger = Ledger(outputs).entries()
    assert sorted(ledger) == ["dr1", "dr2", "dr3"]
    assert {name: ledger[name]["flow_run_id"] for name in ledger} == {
        **{n: str(run_a) for n in done_a}, **{n: str(run_b) for n in done_b}}
    for name in ledger:
        assert len(_queue_runs(outputs, name)) == 1 and ledger[name]["queued"] == 4
        scored = read_catalogue(ledger[name]["catalogue"])
        assert ledger[name]["scored"] == scored.filter(pc.is_null(scored["flag"])).num_rows
    statuses = {row["release"]: row["status"] for row in table_rows(artifacts(run_a)["watch-releases-table"])}
    assert {n for n, s in statuses.items() if s == "processed"} == set(done_a)

    later, _ = run(watch_releases, releases_root=releases_root, package_dir=package[0], outputs_root=outputs,
                   top_k=4)
    assert later == [] and Ledger(outputs).entries() == ledger


KILLED_WATCHER = """
import os, signal, sys
import flows.scoring

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # killed half way: scored and ranked, no manifest, no ledger entry

flows.scoring.write_manifest = die
from flows import watch_releases
watch_releases(releases_root=sys.argv[1], package_dir=sys.argv[2], outputs_root=sys.argv[3], top_k=4)
"""


def test_a_watcher_killed_half_way_is_finished_by_the_next_run_without_duplicates(prefect_api, package,
                                                                                   releases_root, tmp_path):
    outputs = tmp_path / "outputs"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WATCHER, str(releases_root), str(package[0]), str(outputs)],
                            cwd=REPO, env=env, capture_output=True, timeout=180)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert Ledger(outputs).entries() == {}
    queued_before = _queue_runs(outputs, "dr1")
    assert len(queued_before) == 1 and not list((outputs / "releases" / "dr1").rglob("manifest.csv"))

    done, _ = run(watch_releases, releases_root=releases_root, package_dir=package[0], outputs_root=outputs,
                  top_k=4)
    assert done == ["dr1", "dr2", "dr3"]
    ledger = Ledger(outputs).entries()
    assert (ledger["dr1"]["tiles_scored"], ledger["dr1"]["tiles_skipped"]) == (0, 1)  # resumed, not rescored
    assert _queue_runs(outputs, "dr1") == queued_before  # the same queue run, no second one
    for name in ledger:
        assert len(_queue_runs(outputs, name)) == 1
        assert len(read_manifest(Path(ledger[name]["manifest"]).parent)) == 4


def test_a_failing_release_fails_the_run_after_the_others_and_is_retried_next_time(package, releases_root,
                                                                                  tmp_path):
    outputs = tmp_path / "outputs"
    for name in ("dr2", "dr3"):
        shutil.rmtree(releases_root / name)
    broken = simulate_release(releases_root / "dr0", 20, 1, tile_size=384, seed=3, labelled_fraction=0.0,
                              name="dr0")
    good_json = (broken / "release.json").read_text()
    (broken / "release.json").write_text(json.dumps({**json.loads(good_json), "bands": ["u", "v", "w"]}))

    state = watch_releases(releases_root=releases_root, package_dir=package[0], outputs_root=outputs, top_k=4,
                           return_state=True)
    assert state.is_failed() and "dr0" in state.message
    assert list(Ledger(outputs).entries()) == ["dr1"]
    rows = {r["release"]: r for r in table_rows(artifacts(state.state_details.flow_run_id)["watch-releases-table"])}
    assert rows["dr0"]["status"] == "failed" and rows["dr1"]["status"] == "processed"

    (broken / "release.json").write_text(good_json)
    done, _ = run(watch_releases, releases_root=releases_root, package_dir=package[0], outputs_root=outputs,
                  top_k=4)
    assert done == ["dr0"] and sorted(Ledger(outputs).entries()) == ["dr0", "dr1"]


def test_scoring_manifest_and_upload_retry_only_errors_a_rerun_can_fix():
    for retried in (score_catalogue, make_manifest, upload_subjects):
        assert retried.retries >= 1 and retried.retry_condition_fn is retry_unless_bad_input
    assert rank_queue.retries == 0
    assert retry_unless_bad_input(rank_queue, None, Failed(data=OSError("NFS hiccup")))
    assert retry_unless_bad_input(rank_queue, None, Failed(data=UploadError("Panoptes 502")))
    assert not retry_unless_bad_input(rank_queue, None, Failed(data=ScoringError("bands differ")))


def test_demo_flow_runs_the_service_end_to_end(prefect_api, tmp_path):
    from flows.demo import demo

    summary, flow_run_id = run(demo, out_dir=tmp_path / "demo", n_galaxies=40, n_tiles=1, seed=1,
                               architecture="test_resnet", input_size=32, epochs=1, top_k=5, use_ray=False)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["galaxies"] == json.loads(json.dumps(summary["galaxies"]))
    catalogue = pq.read_table(tmp_path / "demo" / "catalogue" / "tiles")
    assert catalogue.num_rows == 40 == saved["galaxies"]["sources"]
    queue = pq.read_table(saved["queue"])
    assert queue.num_rows == 5 and queue["rank"].to_pylist() == [1, 2, 3, 4, 5]
    assert set(queue["id_str"].to_pylist()) <= set(catalogue["id_str"].to_pylist())
    manifest = Path(saved["manifest"]).read_text().splitlines()
    assert len(manifest) == 1 + 5 and "#priority" in manifest[0]
    assert saved["hubble_deep_field"]["scored"] > 20
    for plots in saved["figures"].values():
        for path in plots.values():
            with Image.open(path) as image:
                assert image.format == "PNG"
    assert "demo-summary" in artifacts(flow_run_id)
