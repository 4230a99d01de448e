"""Deployments that fire: a real Prefect server (SQLite in its own PREFECT_HOME, scheduler service on) and a real
``process`` worker on the project's pool run the ``local-*`` deployments of a test copy of ``deploy/prefect.yaml``
(the copy differs only in its data root, a temporary directory, and in its cron schedules being inactive, so that
nothing fires at :07 during the test). Flow runs are created through the API as a schedule creates them, or by the
server's scheduler itself; the worker runs each one in a process of its own, from the directory ``prefect deploy``
ran in. What the runs did is read back from disk (rows counted) and from the server (states, artifacts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.states import Cancelled
from test_deploy import DEPLOY, _prefect, prefect_server_process
from test_scoring_support import make_package, make_release

from flows.watcher import Ledger
from zoobot_pipeline.active.manifest import read_manifest
from zoobot_pipeline.active.ranking import RUNS_DIR
from zoobot_pipeline.catalogue import read_catalogue

POOL = "zoobot-process"
DATA_ROOT = "/data/zoobot"  # the data root of deploy/prefect.yaml, replaced by a temporary directory in the copy
N_GALAXIES = 12
RUN_TIMEOUT = 300  # seconds for the worker to pick up and finish one flow run (the machine is shared)


@dataclass
class Stack:
    """A running server and worker with the local-* deployments, and the data root they work on."""

    url: str
    root: Path
    data: Path
    worker_log: Path
    times: dict[str, float] = field(default_factory=dict)

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.url)

    def worker_tail(self) -> str:
        return self.worker_log.read_text()[-4000:]


def _test_copy(data: Path) -> str:
    """``deploy/prefect.yaml`` with ``data`` as its data root and inactive cron schedules, checked to differ from the
    real file in nothing else."""
    original = (DEPLOY / "prefect.yaml").read_text()
    assert original.count("      timezone: UTC\n") == len(yaml.safe_load(original)["definitions"]["schedules"])
    text = original.replace(DATA_ROOT, str(data)).replace("      timezone: UTC\n",
                                                          "      timezone: UTC\n      active: false\n")
    expected = json.loads(json.dumps(yaml.safe_load(original)["deployments"]).replace(DATA_ROOT, str(data)))
    for deployment in expected:
        for schedule in deployment.get("schedules", []):
            schedule["active"] = False
    assert yaml.safe_load(text)["deployments"] == expected
    return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Server (scheduler every second), pool, ``prefect deploy --name 'local-*'`` of the test copy from the repository
    root, a worker started elsewhere without PYTHONPATH, one release under the releases root and a model package
    behind the ``current-package`` link, as in deploy/README.md."""
    root = tmp_path_factory.mktemp("deployments-fire")
    data = root / "data"
    start = time.monotonic()
    make_release(data / "releases" / "dr1", N_GALAXIES, 1, seed=1)
    package = make_package(root / "model")
    (data / "models").mkdir(parents=True)
    (data / "models" / "current-package").symlink_to(package, target_is_directory=True)
    copy = root / "prefect.yaml"
    copy.write_text(_test_copy(data))
    times = {"release + package": time.monotonic() - start}
    start = time.monotonic()
    with prefect_server_process(root, services=True, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1") as env:
        times["server start"] = time.monotonic() - start
        start = time.monotonic()
        _prefect(env, "work-pool", "create", POOL, "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--prefect-file", str(copy), "--name", "local-*")
        times["pool + deploy"] = time.monotonic() - start
        worker_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the deployment says where the code is
        worker_env.update(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
                          XDG_STATE_HOME=str(root / "state"))
        log = root / "worker.log"
        start = time.monotonic()
        with open(log, "w") as out:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
                                       "process"], env=worker_env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            stack = Stack(env["PREFECT_API_URL"], root, data, log, times)
            with stack.client() as client:  # the worker is up once it has sent its first heartbeat
                while not client.read_workers_for_work_pool(POOL):
                    assert worker.poll() is None and time.monotonic() - start < 120, stack.worker_tail()
                    time.sleep(0.5)
            times["worker start"] = time.monotonic() - start
            yield stack
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            print("\ndeployment test times (s):", json.dumps({k: round(v, 1) for k, v in times.items()}))


def _trigger(client: SyncPrefectClient, name: str, **parameters: Any) -> UUID:
    """A flow run of deployment ``name`` (``flow/deployment``), scheduled now, as a schedule creates one."""
    deployment = client.read_deployment_by_name(name)
    return client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id


def _wait(stack: Stack, client: SyncPrefectClient, run_id: UUID, label: str) -> FlowRun:
    """The flow run once final (failing with the worker's log after RUN_TIMEOUT); records its times: pick-up (created
    or scheduled time to the worker's PENDING), start (PENDING to RUNNING: the flow's process starting) and run."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (run := client.read_flow_run(run_id)).state.is_final():
        assert time.monotonic() < deadline, f"{label}: still {run.state.name}\n{stack.worker_tail()}"
        time.sleep(0.5)
    assert run.state.type == StateType.COMPLETED, f"{label}: {run.state.message}\n{stack.worker_tail()}"
    at = {s.type: s.timestamp for s in client.read_flow_run_states(run_id)}
    scheduled = max(run.created, run.expected_start_time)
    stack.times[f"{label}: pick-up"] = (at[StateType.PENDING] - scheduled).total_seconds()
    stack.times[f"{label}: process start"] = (at[StateType.RUNNING] - at[StateType.PENDING]).total_seconds()
    stack.times[f"{label}: run"] = (at[StateType.COMPLETED] - at[StateType.RUNNING]).total_seconds()
    return run


def _runs_by_flow(client: SyncPrefectClient) -> dict[str, list[FlowRun]]:
    names = {f.id: f.name for f in client.read_flows()}
    runs: dict[str, list[FlowRun]] = {}
    for run in client.read_flow_runs():
        runs.setdefault(names[run.flow_id], []).append(run)
    return runs


def _markdown(client: SyncPrefectClient, run_id: UUID, key: str) -> str:
    (artifact,) = [a for a in client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))) if a.key == key]
    return artifact.data


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: size and modification time (ns), by relative path."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _sources(release: Path) -> int:
    return pq.read_metadata(release / "sources.parquet").num_rows


def test_a_triggered_watcher_run_scores_and_queues_a_release_and_a_second_one_does_nothing(stack):
    outputs = stack.data / "outputs"
    with stack.client() as client:
        first = _trigger(client, "watch-releases/local-hourly")  # the deployment's own parameters, as scheduled
        run = _wait(stack, client, first, "watch-releases 1st")
        assert run.parameters["releases_root"] == str(stack.data / "releases")
        entry = Ledger(outputs).entries()["dr1"]
        assert entry["flow_run_id"] == str(first)
        catalogue = read_catalogue(outputs / "releases" / "dr1" / "catalogue")
        assert catalogue.num_rows == _sources(stack.data / "releases" / "dr1") == entry["sources"]
        scored = catalogue.filter(pc.is_null(catalogue["flag"])).num_rows
        assert entry["scored"] == scored > 0
        (queue_run,) = (outputs / "releases" / "dr1" / "queue" / RUNS_DIR).glob("*.parquet")
        queued = pq.read_table(queue_run)
        assert queued.num_rows == entry["queued"] == scored  # top_k 500 of the yaml: every scored galaxy
        assert set(queued.column("id_str").to_pylist()) <= set(catalogue.column("id_str").to_pylist())
        manifest = read_manifest(Path(entry["manifest"]).parent)
        assert len(manifest) == scored
        runs = _runs_by_flow(client)
        assert {name: [r.state.type for r in found] for name, found in runs.items()} == {
            "watch-releases": [StateType.COMPLETED], "score-release": [StateType.COMPLETED],
            "rank-and-queue": [StateType.COMPLETED]}
        assert {r.parent_task_run_id is not None for r in runs["score-release"] + runs["rank-and-queue"]} == {True}

        before = _files(outputs)
        second = _trigger(client, "watch-releases/local-hourly")
        _wait(stack, client, second, "watch-releases 2nd")
        assert _files(outputs) == before  # nothing written, nothing rewritten
        runs = _runs_by_flow(client)
        assert [len(runs[name]) for name in ("watch-releases", "score-release", "rank-and-queue")] == [2, 1, 1]
        assert _markdown(client, second, "watch-releases").startswith("# Release watcher: 0 processed, 0 failed")


def test_a_triggered_score_release_run_writes_the_catalogue_and_a_second_one_rescores_nothing(stack):
    release = stack.data / "releases" / "dr1"
    out_dir = stack.data / "scored" / "dr1"
    with stack.client() as client:
        first = _trigger(client, "score-release/local-score", release_dir=str(release), out_dir=str(out_dir))
        _wait(stack, client, first, "score-release 1st")
        catalogue = read_catalogue(out_dir)
        assert catalogue.num_rows == _sources(release)
        assert sorted(catalogue.column("id_str").to_pylist()) == sorted(
            pq.read_table(release / "sources.parquet", columns=["id_str"]).column("id_str").to_pylist())
        report = _markdown(client, first, "score-dr1")
        assert f"of {_sources(release)} galaxies scored" in report and "(1 scored by this run, 0 already done" in report

        before = _files(out_dir)
        second = _trigger(client, "score-release/local-score", release_dir=str(release), out_dir=str(out_dir))
        _wait(stack, client, second, "score-release 2nd")
        assert "(0 scored by this run, 1 already done" in _markdown(client, second, "score-dr1")
        tiles = {k: v for k, v in _files(out_dir).items() if k.startswith("tiles/")}
        assert tiles and tiles == {k: v for k, v in before.items() if k.startswith("tiles/")}  # not rewritten


def test_an_interval_schedule_fires_and_the_worker_runs_the_scheduled_watcher_on_a_new_release(stack):
    outputs = stack.data / "outputs"
    make_release(stack.data / "releases" / "dr2", N_GALAXIES, 1, seed=2)
    done_before = {name: entry["flow_run_id"] for name, entry in Ledger(outputs).entries().items()}
    with stack.client() as client:
        deployment = client.read_deployment_by_name("watch-releases/local-hourly")
        (schedule,) = client.read_deployment_schedules(deployment.id)
        assert (schedule.schedule.cron, schedule.active) == ("7 * * * *", False)  # as deployed from the copy
        manual = {r.id for r in client.read_flow_runs() if r.deployment_id == deployment.id}
        fires = datetime.now(UTC) + timedelta(seconds=3)
        client.update_deployment_schedule(deployment.id, schedule.id, active=True, schedule=IntervalSchedule(
            interval=timedelta(seconds=30), anchor_date=fires))
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (scheduled := [r for r in client.read_flow_runs()
                                 if r.deployment_id == deployment.id and r.id not in manual
                                 and r.state.type == StateType.COMPLETED]):
            assert time.monotonic() < deadline, stack.worker_tail()
            time.sleep(1)
        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        run = _wait(stack, client, scheduled[0].id, "scheduled watch-releases")
        assert run.auto_scheduled and run.expected_start_time >= fires - timedelta(seconds=1)
        entries = Ledger(outputs).entries()
        assert entries["dr2"]["flow_run_id"] == str(run.id)
        assert {name: entries[name]["flow_run_id"] for name in done_before} == done_before  # dr1 not redone
        assert read_catalogue(entries["dr2"]["catalogue"]).num_rows == _sources(stack.data / "releases" / "dr2")
        # A second firing may have started meanwhile: let it end here. Pausing deletes the future runs the scheduler had
        # created, but its service may insert a batch it computed before the pause (up to an hour of 30 s firings):
        # cancel what has not started so that the loop ends.
        deadline = time.monotonic() + RUN_TIMEOUT
        while unfinished := [r for r in client.read_flow_runs()
                             if r.deployment_id == deployment.id and not r.state.is_final()]:
            for late in (r for r in unfinished if r.state.type == StateType.SCHEDULED):
                client.set_flow_run_state(late.id, Cancelled(message="the test paused the schedule"))
            assert time.monotonic() < deadline, stack.worker_tail()
            time.sleep(1)
