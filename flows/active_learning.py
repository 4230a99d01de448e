"""The production active-learning cycle: new volunteer votes in, a retrained model and the next queue out.

One cycle per new votes file, identified by the file's sha256: ``WORK/cycle-{sha256[:16]}/`` holds its model, package
and catalogue. Steps, each skipped when a rerun finds it done (a crashed or retried cycle resumes; the same votes
file scheduled again is a no-op):

1. merge the new votes into the labelled set (in place; the labelled file records the sha256 of every votes file
   merged into it, so a file is never counted twice),
2. finetune the pretrained checkpoint on all labelled votes (every cycle starts from the same pretrained model, as
   Walmsley et al. 2020 retrain each round, so a model depends only on its labels),
3. export the ONNX package, 4. score the pool release (resumable),
5. rank into the shared queue directory (skipping galaxies with votes and every galaxy queued by an earlier cycle,
   under the run key ``cycle-{sha256[:16]}``), write the manifest, upload if asked (a dry run by default),
6. optionally point the ``current_package`` symlink at the new package (atomically), so that the release watcher
   scores new releases with it.

One cycle at a time per work directory (a lock on ``WORK/.cycle.lock``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.scoring import QueueResult, rank_and_queue, score_release
from flows.training import export, finetune
from zoobot_pipeline.active.votes_merge import MERGED_KEY, merge_votes
from zoobot_pipeline.active.zooniverse import DEFAULT_ENDPOINT
from zoobot_pipeline.io import exclusive_lock, file_sha256
from zoobot_pipeline.models import CHECKPOINT_JSON, FinetuneConfig, TrainingConfig
from zoobot_pipeline.runtime.package import MODEL_JSON

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
def merge_new_votes(labelled: Path, new_votes: Path, digest: str, schema_name: str) -> int:
    """Merge ``new_votes`` into ``labelled`` in place unless its ``digest`` is already recorded there; returns the
    number of labelled galaxies."""
    metadata = pq.read_schema(labelled).metadata or {}
    if digest in json.loads(metadata.get(MERGED_KEY, b"[]")):
        get_run_logger().info("%s is already merged into %s", new_votes, labelled)
        return pq.read_metadata(labelled).num_rows
    return merge_votes(labelled, new_votes, labelled, schema_name).num_rows


def _point_symlink(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing an existing link atomically."""
    tmp = link.with_name(f".tmp-{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


@flow(name="active-learning-cycle")
def active_learning_cycle(release_dir: Path, new_votes: Path, labelled_votes: Path, pretrained: Path,
                          work_dir: Path, queue_dir: Path, top_k: int = 100, acquisition: str = "mutual_information",
                          schema_name: str = "decals_dr5", n_blocks: int | Literal["all"] = "all",
                          training: TrainingConfig | None = None, mc_samples: int = 5, n_volunteers: int = 40,
                          seed: int = 0, workers: int = 1, gpus_per_worker: float = 0.0,
                          ray_address: str | None = None, use_ray: bool = False, score_workers: int | None = None,
                          device: str = "cpu", image_format: Literal["png", "jpeg"] = "png",
                          project_id: int | None = None, subject_set_id: int | None = None,
                          endpoint: str = DEFAULT_ENDPOINT, dry_run: bool = True,
                          current_package: Path | None = None) -> CycleResult | None:
    """Fold ``new_votes`` into ``labelled_votes`` (Parquet), finetune ``pretrained`` on them, export, score the pool
    ``release_dir`` and queue its ``top_k`` most wanted galaxies (see the module docstring); ``None`` when there is
    no ``new_votes`` file. Training uses ``workers`` Ray Train workers (1 and no ``ray_address``: in-process), each
    with ``gpus_per_worker`` GPUs; scoring runs on Ray Data with ``use_ray`` or a ``ray_address`` (``score_workers``
    actors, with ``gpus_per_worker`` GPUs each when ``device`` is not ``"cpu"``)."""
    logger = get_run_logger()
    if not new_votes.is_file():
        create_markdown_artifact(key="active-learning-cycle", description="active-learning-cycle: nothing to do",
                                 markdown=f"# No new votes\n\n`{new_votes}` does not exist; nothing was done.")
        logger.info("no new votes at %s", new_votes)
        return None
    digest = file_sha256(new_votes)
    cycle_dir = work_dir / f"cycle-{digest[:16]}"
    busy = RuntimeError(f"{work_dir}: another active-learning cycle is running")
    with exclusive_lock(work_dir / ".cycle.lock", busy):
        n_labelled = merge_new_votes(labelled_votes, new_votes, digest, schema_name)
        checkpoint = cycle_dir / "model"
        if not (checkpoint / CHECKPOINT_JSON).is_file():
            config = FinetuneConfig(task="dirichlet", schema_name=schema_name, n_blocks=n_blocks)
            finetune(pretrained, release_dir, labelled_votes, checkpoint, config, training=training,
                     workers=workers, gpus_per_worker=gpus_per_worker, ray_address=ray_address)
        package = cycle_dir / "package"
        if not (package / MODEL_JSON).is_file():
            export(checkpoint, package, mc_samples=mc_samples, n_volunteers=n_volunteers, seed=seed)
        scored = score_release(release_dir, package, cycle_dir / "catalogue", seed=seed, device=device,
                               use_ray=use_ray, ray_address=ray_address, workers=score_workers,
                               gpus_per_worker=gpus_per_worker if device != "cpu" else 0.0)
        queued = rank_and_queue(scored.out_dir, release_dir, queue_dir, top_k, acquisition=acquisition,
                                exclude_votes=labelled_votes, min_votes=1, schema_name=schema_name, seed=seed,
                                run_key=cycle_dir.name, image_format=image_format, project_id=project_id,
                                subject_set_id=subject_set_id, endpoint=endpoint, dry_run=dry_run)
        if current_package is not None:
            _point_symlink(current_package, package)
    create_markdown_artifact(
        key="active-learning-cycle", description=f"active-learning-cycle: {cycle_dir.name}",
        markdown=f"# Cycle {cycle_dir.name}\n\n- new votes: `{new_votes}` (sha256 {digest[:16]}...)\n"
                 f"- labelled galaxies: {n_labelled} (`{labelled_votes}`)\n- model: `{checkpoint.resolve()}`\n"
                 f"- package: `{package.resolve()}`"
                 + (f" (now `{current_package}`)" if current_package is not None else "") + "\n"
                 f"- scored: {scored.n_scored} of {scored.n_sources} galaxies of `{release_dir}`\n"
                 f"- queued: {queued.queued} galaxies, run {queued.run_id}, manifest `{queued.manifest}`\n")
    return CycleResult(cycle_dir, labelled_votes, checkpoint, package, scored.out_dir, queued)
