"""The production active-learning cycle as a Prefect flow: new volunteer votes in, a retrained model and the next
queue out.

The cycle itself is :mod:`zoobot_pipeline.cycle` (one cycle per new votes file, keyed by its sha256, every step
skipped or resumed when a rerun finds it done, one cycle at a time per work directory); this flow runs each of its
steps as a task under the cycle's lock: merge the votes, finetune, export, score the pool release, rank under the
run key ``cycle-{sha256[:16]}``. ``rank-and-queue`` then writes the manifest and uploads (a dry run by default) for the
queue run the cycle made (under the same run key it reuses that run, queueing nothing more), and optionally the
``current_package`` symlink is pointed at the new package, so that the release watcher scores new releases with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.scoring import QueueResult, rank_and_queue, report_catalogue, retry_unless_bad_input
from flows.training import report_checkpoint, report_package
from zoobot_pipeline.active.zooniverse import DEFAULT_ENDPOINT
from zoobot_pipeline.cycle import MIN_VOTES, Cycle, Resources, RoundConfig, switch_package
from zoobot_pipeline.data.render import ImageFormat
from zoobot_pipeline.models import TrainingConfig, read_checkpoint_json
from zoobot_pipeline.runtime.package import ModelPackage
from zoobot_pipeline.scoring.pipeline import ScoringResult

__all__ = ["CycleResult", "active_learning_cycle"]


@dataclass(frozen=True)
class CycleResult:
    """What one cycle made."""

    cycle_dir: Path
    labelled: Path
    checkpoint: Path
    package: Path
    catalogue: Path
    queue: QueueResult


@task(name="merge-votes", cache_policy=NO_CACHE)
def merge_new_votes(cycle: Cycle) -> int:
    """:meth:`Cycle.merge`: returns the number of labelled galaxies."""
    if cycle.merged:
        get_run_logger().info("%s is already merged into %s", cycle.new_votes, cycle.labelled_votes)
    return cycle.merge()


@task(name="finetune-model", cache_policy=NO_CACHE)
def train_model(cycle: Cycle) -> Path:
    """:meth:`Cycle.train` (not retried: Ray Train replaces failed workers itself)."""
    if cycle.trained:
        get_run_logger().info("%s: already trained", cycle.checkpoint)
    checkpoint = cycle.train()
    report_checkpoint(checkpoint, "finetune")
    return checkpoint


@task(name="export-package", cache_policy=NO_CACHE)
def export_model(cycle: Cycle) -> Path:
    """:meth:`Cycle.export`."""
    if cycle.exported:
        get_run_logger().info("%s: already exported", cycle.package)
    package = cycle.export()
    report_package(package)
    return package


@task(name="score-catalogue", retries=2, retry_delay_seconds=30, retry_condition_fn=retry_unless_bad_input,
      cache_policy=NO_CACHE)
def score_pool(cycle: Cycle) -> ScoringResult:
    """:meth:`Cycle.score` (resumes: a retry scores only the tiles not done)."""
    result = cycle.score()
    report_catalogue(result, cycle.release_dir)
    return result


@task(name="rank-catalogue", cache_policy=NO_CACHE)
def rank_pool(cycle: Cycle) -> int:
    """:meth:`Cycle.rank` (with the cycle's ``rank_options``): returns the number of galaxies in the cycle's queue
    run."""
    return cycle.rank().num_rows


@flow(name="active-learning-cycle")
def active_learning_cycle(release_dir: Path, new_votes: Path, labelled_votes: Path, pretrained: Path,
                          work_dir: Path, queue_dir: Path, top_k: int = 100, acquisition: str = "mutual_information",
                          schema_name: str = "decals_dr5", n_blocks: int | Literal["all"] = "all",
                          training: TrainingConfig | None = None, mc_samples: int = 5, n_volunteers: int = 40,
                          seed: int = 0, workers: int = 1, gpus_per_worker: float = 0.0,
                          ray_address: str | None = None, use_ray: bool = False, score_workers: int | None = None,
                          device: str = "cpu", image_format: ImageFormat = "png",
                          project_id: int | None = None, subject_set_id: int | None = None,
                          endpoint: str = DEFAULT_ENDPOINT, dry_run: bool = True,
                          current_package: Path | None = None, sampling: str | None = None, beta: float = 1.0,
                          random_fraction: float = 0.0, exclude_answers: list[str] | None = None,
                          stratify_by: list[str] | None = None) -> CycleResult | None:
    """Fold ``new_votes`` into ``labelled_votes`` (Parquet), finetune ``pretrained`` on them, export, score the pool
    ``release_dir`` and queue its ``top_k`` most wanted galaxies (see the module docstring); ``None`` when there is
    no ``new_votes`` file. Training uses ``workers`` Ray Train workers (1 and no ``ray_address``: in-process), each
    with ``gpus_per_worker`` GPUs; scoring runs on Ray Data with ``use_ray`` or a ``ray_address`` (``score_workers``
    actors, with ``gpus_per_worker`` GPUs each when ``device`` is not ``"cpu"``). ``acquisition`` (or a shorthand
    such as ``power_bald``), ``sampling``, ``beta``, ``random_fraction``, ``exclude_answers`` and ``stratify_by``: as in
    :func:`~zoobot_pipeline.active.ranking.rank_catalogue` (the defaults: top K of mutual information)."""
    logger = get_run_logger()
    if not new_votes.is_file():
        create_markdown_artifact(key="active-learning-cycle", description="active-learning-cycle: nothing to do",
                                 markdown=f"# No new votes\n\n`{new_votes}` does not exist; nothing was done.")
        logger.info("no new votes at %s", new_votes)
        return None
    config = RoundConfig(pretrained=pretrained, training=training or TrainingConfig(), n_blocks=n_blocks,
                         schema_name=schema_name, mc_samples=mc_samples, n_volunteers=n_volunteers)
    resources = Resources(train_workers=workers, gpus_per_worker=gpus_per_worker, ray_address=ray_address,
                          use_ray=use_ray, score_workers=score_workers, device=device)
    cycle = Cycle.open(release_dir, new_votes, labelled_votes, work_dir, queue_dir, config, top_k=top_k,
                       acquisition=acquisition, seed=seed, resources=resources,
                       rank_options={"sampling": sampling, "beta": beta, "random_fraction": random_fraction,
                                     "exclude_answers": tuple(exclude_answers or ()),
                                     "stratify_by": tuple(stratify_by or ())})
    with cycle.lock():
        n_labelled = merge_new_votes(cycle)
        checkpoint = train_model(cycle)
        package = export_model(cycle)
        scored = score_pool(cycle)
        rank_pool(cycle)
        # under the cycle's run key rank-and-queue gets the run just made back, and adds manifest, upload, artifacts
        queued = rank_and_queue(scored.out_dir, release_dir, queue_dir, top_k, acquisition=cycle.acquisition,
                                exclude_votes=labelled_votes, min_votes=MIN_VOTES, schema_name=schema_name,
                                seed=cycle.draw_seed, run_key=cycle.key, image_format=image_format,
                                project_id=project_id, subject_set_id=subject_set_id, endpoint=endpoint,
                                dry_run=dry_run, **cycle.rank_options)
        if current_package is not None:
            switch_package(current_package, package)
    best_epoch = read_checkpoint_json(checkpoint)["metrics"]["best_epoch"]
    create_markdown_artifact(
        key="active-learning-cycle", description=f"active-learning-cycle: {cycle.key}",
        markdown=f"# Cycle {cycle.key}\n\n- new votes: `{new_votes}` (sha256 {cycle.digest[:16]}...)\n"
                 f"- labelled galaxies: {n_labelled} (`{labelled_votes}`)\n- model: `{checkpoint.resolve()}` (best "
                 f"epoch {best_epoch})\n"
                 f"- package: `{package.resolve()}` (sha256 {ModelPackage.open(package).sha256[:16]}..."
                 + (f"; now `{current_package}`" if current_package is not None else "") + ")\n"
                 f"- scored: {scored.n_scored} of {scored.n_sources} galaxies of `{release_dir}`\n"
                 f"- queued: {queued.queued} galaxies, run {queued.run_id}, manifest `{queued.manifest}`\n")
    return CycleResult(cycle.cycle_dir, labelled_votes, checkpoint, package, scored.out_dir, queued)
