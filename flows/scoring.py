"""Scoring and queueing flows: ``score_release`` (release + model package -> Parquet catalogue) and ``rank_and_queue``
(catalogue -> priority queue -> Zooniverse manifest -> optional upload, a dry run by default).

Retries are where a rerun is safe: scoring resumes (finished tiles are skipped, failed tiles retried), the manifest
reuses the images already rendered, and the upload skips the subjects its state file records. Errors that a rerun
cannot fix (bad options, a package that does not fit the release: ``ValueError`` and its subclasses) fail at once.

Ranking is not retried, because every rank run queues the *next* ``top_k`` galaxies. ``run_key`` makes it idempotent
instead (:func:`~zoobot_pipeline.active.ranking.rank_catalogue`): a later run under the same key (a retry, or a flow
restarted after a crash) gets the queue run made under it rather than queueing more galaxies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from flows.artifacts import artifact_key, markdown_table, publish_link, publish_table, queue_sheet
from zoobot_pipeline.active.manifest import write_manifest
from zoobot_pipeline.active.ranking import KEYS_DIR, rank_catalogue, rank_settings, run_id_of
from zoobot_pipeline.active.ranking import run_file as queue_run_file
from zoobot_pipeline.active.zooniverse import DEFAULT_ENDPOINT, UploadReport, upload_manifest
from zoobot_pipeline.data.render import ImageFormat
from zoobot_pipeline.scoring import pipeline
from zoobot_pipeline.scoring.pipeline import ScoringResult
from zoobot_pipeline.scoring.summary import QUANTILES, summarize_catalogue

__all__ = ["KEYS_DIR", "QueueResult", "rank_and_queue", "report_catalogue", "run_id_of", "score_release"]

QUEUE_SHOWN = 20
_FAILURE_COLUMNS = ("tile_id", "path", "reason", "n_sources")
_QUEUE_COLUMNS = ("rank", "id_str", "acquisition", "top_question", "ra", "dec", "tile_id")


def retry_unless_bad_input(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry I/O, cluster and service errors, not a ``ValueError`` (a bad input)."""
    return not isinstance(state.result(raise_on_failure=False), ValueError)


@task(name="score-catalogue", retries=2, retry_delay_seconds=30, retry_condition_fn=retry_unless_bad_input,
      cache_policy=NO_CACHE)
def score_catalogue(release_dir: Path, package_dir: Path, out_dir: Path, options: dict[str, Any]) -> ScoringResult:
    """:func:`zoobot_pipeline.scoring.pipeline.score_release` (resumes a catalogue written with the same settings)."""
    return pipeline.score_release(release_dir, package_dir, out_dir, progress=False, **options)


@flow(name="score-release")
def score_release(release_dir: Path, package_dir: Path, out_dir: Path, batch_size: int = 32, chunk_size: int = 256,
                  mc_samples: int | None = None, seed: int = 0, device: str = "cpu", variant: str = "fp32",
                  threads: int | None = None, use_ray: bool = False, ray_address: str | None = None,
                  workers: int | None = None, gpus_per_worker: float = 0.0, prep_workers: int | None = None,
                  overwrite: bool = False) -> ScoringResult:
    """Score every source of a release with a model package into the catalogue directory ``out_dir``, in this
    process (``prep_workers`` preparing threads) or on Ray Data (``use_ray``, or a running cluster at
    ``ray_address``)."""
    options = {"batch_size": batch_size, "chunk_size": chunk_size, "mc_samples": mc_samples, "seed": seed,
               "device": device, "variant": variant, "threads": threads, "use_ray": use_ray,
               "ray_address": ray_address, "workers": workers, "gpus_per_worker": gpus_per_worker,
               "prep_workers": prep_workers, "overwrite": overwrite}
    result = score_catalogue(release_dir, package_dir, out_dir, options)
    report_catalogue(result, release_dir)
    return result


def report_catalogue(result: ScoringResult, release_dir: Path) -> None:
    """The artifacts of a scoring run: totals, flags and key distributions, and the tiles that failed."""
    summary = summarize_catalogue(result.out_dir)
    name = summary.metadata.get("release", release_dir.name)
    flagged = ", ".join(f"{n} {reason}" for reason, n in sorted(result.flagged.items())) or "none"
    distributions = [{"column": summary.label(d.column), "mean": d.mean,
                      **{f"q{round(q * 100):02d}": d.quantile(q) for q in QUANTILES}}
                     for d in summary.distributions]
    create_markdown_artifact(
        key=artifact_key("score", name), description=f"score-release: catalogue of {name}",
        markdown=f"# {name}: {result.n_scored} of {result.n_sources} galaxies scored\n\n"
                 f"- catalogue: `{result.out_dir.resolve()}`\n- flagged: {flagged}\n"
                 f"- tiles: {result.n_tiles} ({result.tiles_scored} scored by this run, {result.tiles_skipped} "
                 f"already done, {len(result.failures)} failed)\n"
                 f"- executor: {result.executor}, {result.seconds:.1f} s\n\n"
                 + markdown_table(distributions, ["column", "mean", *(f"q{round(q * 100):02d}" for q in QUANTILES)]))
    publish_table(artifact_key("score", name, "failures"), result.failures, _FAILURE_COLUMNS,
                  f"score-release: tiles of {name} that could not be read (retried by the next run)")
    get_run_logger().info("%s: %d of %d galaxies scored into %s", name, result.n_scored, result.n_sources,
                          result.out_dir)


@task(name="rank-catalogue", cache_policy=NO_CACHE)
def rank_queue(catalogue: Path, queue_dir: Path, top_k: int, run_key: str | None, options: dict[str, Any]) -> Path:
    """:func:`zoobot_pipeline.active.ranking.rank_catalogue` into a new run of ``queue_dir`` (under a ``run_key``
    used before: the run made then); returns the run file."""
    queue = rank_catalogue(catalogue, top_k, queue_dir=queue_dir, run_key=run_key, **options)
    run_id = rank_settings(queue)["run_id"]
    get_run_logger().info("queue run %s (run key %r): %d galaxies", run_id, run_key, queue.num_rows)
    return queue_run_file(queue_dir, run_id)


@task(name="write-manifest", retries=1, retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE)
def make_manifest(run_file: Path, release_dir: Path, manifest_dir: Path, image_format: str) -> Path:
    """:func:`zoobot_pipeline.active.manifest.write_manifest` (reuses images already written)."""
    return write_manifest(run_file, release_dir, manifest_dir, image_format)


@task(name="upload-manifest", retries=2, retry_delay_seconds=60, retry_condition_fn=retry_unless_bad_input,
      cache_policy=NO_CACHE)
def upload_subjects(manifest_dir: Path, project_id: int, subject_set_id: int, endpoint: str,
                    dry_run: bool) -> UploadReport:
    """:func:`zoobot_pipeline.active.zooniverse.upload_manifest` (resumes from its state file)."""
    return upload_manifest(manifest_dir, project_id, subject_set_id, endpoint=endpoint, dry_run=dry_run)


@dataclass(frozen=True)
class QueueResult:
    """What ``rank_and_queue`` made: the queue run file, its manifest, and the upload report (if asked for)."""

    run_file: Path
    run_id: str
    queued: int
    manifest: Path
    sheet: Path | None
    upload: UploadReport | None


@flow(name="rank-and-queue")
def rank_and_queue(catalogue: Path, release_dir: Path, queue_dir: Path, top_k: int = 100,
                   acquisition: str = "mutual_information", weights: dict[str, float] | None = None,
                   exclude_votes: Path | None = None, min_votes: int = 3, schema_name: str | None = None,
                   per_tile_quota: int | None = None, seed: int = 0, run_key: str | None = None,
                   manifest_dir: Path | None = None, image_format: ImageFormat = "png",
                   project_id: int | None = None, subject_set_id: int | None = None,
                   endpoint: str = DEFAULT_ENDPOINT, dry_run: bool = True, sampling: str | None = None,
                   beta: float = 1.0, random_fraction: float = 0.0,
                   exclude_answers: list[str] | None = None, stratify_by: list[str] | None = None) -> QueueResult:
    """Rank a catalogue into ``queue_dir`` (skipping galaxies queued there before and, with ``exclude_votes``, those
    with ``min_votes`` votes), write the Zooniverse manifest with one image per galaxy (default directory
    ``QUEUE/manifests/{run_id}``) and, given a project and subject set, upload it (``dry_run`` reports only).
    ``sampling``/``beta`` draw the batch stochastically, ``random_fraction`` of it uniformly, and ``exclude_answers``
    skip galaxies by the model's answers (e.g. ``["smooth-or-featured-dr5_artifact>=0.5"]``) and ``stratify_by``
    shares the batch among the model's predicted answers to those questions (e.g. ``["smooth-or-featured-dr5"]``): see
    :func:`~zoobot_pipeline.active.ranking.rank_catalogue`; by default a power-sampled batch (the label-efficiency
    benchmark's choice), nothing drawn uniformly, nothing excluded by its answers."""
    options = {"acquisition": acquisition, "weights": weights, "exclude_votes": exclude_votes,
               "min_votes": min_votes, "schema": schema_name, "per_tile_quota": per_tile_quota, "seed": seed,
               "sampling": sampling, "beta": beta, "random_fraction": random_fraction,
               "exclude_answers": exclude_answers or (), "stratify_by": stratify_by or ()}
    run_file = rank_queue(catalogue, queue_dir, top_k, run_key, options)
    queue = pq.read_table(run_file)
    run_id = run_file.stem
    manifest_dir = manifest_dir or queue_dir / "manifests" / run_id
    manifest_csv = make_manifest(run_file, release_dir, manifest_dir, image_format)
    rows = queue.select(list(_QUEUE_COLUMNS)).to_pylist()
    sheet = queue_sheet(rows, manifest_dir, image_format, queue_dir / "plots" / f"{run_id}-top.png")
    report = None
    if project_id is not None and subject_set_id is not None:
        report = upload_subjects(manifest_dir, project_id, subject_set_id, endpoint, dry_run)

    release = queue.column("release")[0].as_py() if queue.num_rows else release_dir.name
    settings = rank_settings(queue)
    upload_line = "not requested (no project and subject set given)" if report is None else (
        f"{'dry run: would upload' if report.dry_run else 'uploaded'} {len(report.to_upload)} of {report.total} "
        f"subjects ({report.already_uploaded} uploaded before) to subject set {subject_set_id}")
    create_markdown_artifact(
        key=artifact_key("queue", release), description=f"rank-and-queue: queue run {run_id}",
        markdown=f"# {release}: {queue.num_rows} galaxies queued (run {run_id})\n\n"
                 f"- acquisition: {settings['acquisition']}, sampling {settings.get('sampling', 'top_k')} (beta "
                 f"{settings.get('beta', 1.0):g}), {settings.get('random_picks', 0)} drawn at random; read "
                 f"{settings['rows_read']} rows, skipped {settings['skipped_flagged']} flagged, "
                 f"{settings['skipped_labelled']} labelled, {settings['skipped_queued']} queued before, "
                 f"{settings.get('skipped_answers', 0)} by their answers\n- queue: `{run_file.resolve()}`\n"
                 f"- manifest: `{manifest_csv.resolve()}`\n- upload: {upload_line}\n")
    publish_table(artifact_key("queue", release, "top"), rows[:QUEUE_SHOWN], _QUEUE_COLUMNS,
                  f"rank-and-queue: the first {QUEUE_SHOWN} galaxies of run {run_id}")
    if sheet is not None:
        publish_link(artifact_key("queue", release, "sheet"), sheet, f"top of the queue ({sheet.name})",
                     f"rank-and-queue: PNG contact sheet of the first galaxies of run {run_id}")
    return QueueResult(run_file, run_id, queue.num_rows, manifest_csv, sheet, report)
