"""Training as a Ray Train job, for either framework: the run, its checkpoints and its directories.

A backend gives the trainer class (``TorchTrainer``, ``TensorflowTrainer``), the function each worker runs and the
function that copies a reported model out of a checkpoint. Every worker reports each epoch; rank 0 attaches a
training-state checkpoint (model, optimizer, progress; safetensors + JSON). Ray keeps the best by validation loss and
the latest. After a worker failure Ray restarts the group (up to ``max_failures`` times) and every worker resumes from
the latest checkpoint. ``resume_from`` starts a new run from an earlier run's checkpoint, read by the workers directly
(Ray 2.60 deprecates ``resume_from_checkpoint``). When training ends, the best checkpoint's model is written to the
output directory as a normal checkpoint.

Run directories: each run writes ``<storage_path>/<kind>-<UTC time>``. After a successful run (the best model
written) that directory is removed, and the storage root too when this run created it and it is left empty, unless
``keep_run_dir`` asks to keep the training state for resuming; after a failure both stay, so the run can be resumed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from zoobot_pipeline.errors import UnavailableError
from zoobot_pipeline.models.config import DistributedConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.training_state import MODEL_DIR
from zoobot_pipeline.raycluster import ray_cluster

__all__ = ["RayTrainSession", "check_cluster", "remove_run_dir", "train_on_ray"]


class RayTrainSession:
    """What every framework's Ray Train worker session shares: rank, world size, resuming and reporting."""

    def __init__(self, resume_from: str | None = None) -> None:
        self.resume_from = resume_from
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        """The run's latest reported checkpoint (after a restart), else ``resume_from`` (a path every worker reads)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield Path(self.resume_from) if self.resume_from is not None else None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], write_state: Callable[[Path], Path]) -> None:
        """``ray.train.report`` on every worker; rank 0 attaches the training-state checkpoint (uploaded to the
        run's storage before this returns)."""
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="zoobot-state-") as directory:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(write_state(Path(directory)))))


def check_cluster(distributed: DistributedConfig) -> None:
    """Fail early when the connected cluster cannot ever hold the worker group (CPUs or GPUs missing)."""
    resources = ray.cluster_resources()
    need_cpu = distributed.workers * distributed.cpus_per_worker
    need_gpu = distributed.workers * distributed.gpus_per_worker
    if need_gpu > 0 and resources.get("GPU", 0) < need_gpu:
        raise UnavailableError(f"{distributed.workers} workers x {distributed.gpus_per_worker} GPU need {need_gpu:g} "
                               f"GPUs, the Ray cluster has {resources.get('GPU', 0):g} (no CUDA device found)")
    if resources.get("CPU", 0) < need_cpu:
        raise UnavailableError(f"{distributed.workers} workers x {distributed.cpus_per_worker} CPU need {need_cpu:g} "
                               f"CPUs, the Ray cluster has {resources.get('CPU', 0):g}")


def train_on_ray(job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig, quiet: bool,
                 trainer_class: type, train_loop: Callable[[dict[str, Any]], dict[str, Any]],
                 export_model: Callable[[Path, Path, dict[str, Any]], Path], **trainer_options: Any) -> Path:
    """Run ``train_loop`` (given ``{"job", "quiet", "resume_from"}``) on ``distributed.workers`` workers of
    ``trainer_class`` (with ``trainer_options``); returns ``out_dir`` holding the best model, written by the backend's
    ``export_model(model_dir, out_dir, summary)`` from the best training state.

    Joins ``distributed.ray_address`` when given, else uses the Ray already initialised in this process, else starts
    a local cluster (shut down afterwards).
    """
    out_dir = Path(out_dir).resolve()
    with ray_cluster(distributed.ray_address, log_to_driver=not quiet):
        check_cluster(distributed)
        use_gpu = distributed.gpus_per_worker > 0
        resources = {"CPU": distributed.cpus_per_worker}
        if use_gpu:
            resources["GPU"] = distributed.gpus_per_worker
        storage = Path(distributed.storage_path or f"{out_dir}.ray").resolve()
        storage_existed = storage.exists()
        name = f"{job.kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
        resume = str(Path(distributed.resume_from).resolve()) if distributed.resume_from else None
        trainer = trainer_class(
            train_loop,
            train_loop_config={"job": job, "quiet": quiet, "resume_from": resume},
            scaling_config=ScalingConfig(num_workers=distributed.workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=name, storage_path=str(storage),
                failure_config=FailureConfig(max_failures=distributed.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_loss",
                                                   checkpoint_score_order="min"),
            ),
            **trainer_options,
        )
        result = trainer.fit()
        best = result.get_best_checkpoint("val_loss", "min")
        if best is None:
            raise RuntimeError(f"Ray Train run {name} reported no checkpoint")
        with best.as_directory() as directory:
            export_model(Path(directory) / MODEL_DIR, out_dir, result.return_value)
    if not distributed.keep_run_dir:
        remove_run_dir(storage, name, created_root=not storage_existed)
    return out_dir


def remove_run_dir(storage: Path, name: str, created_root: bool) -> None:
    """Remove a finished run's directory ``storage / name`` and then ``storage`` itself only if ``created_root`` (this
    run made it) and nothing else is left there: never another run's state or a user's files."""
    run_dir = storage / name
    if run_dir.is_dir() and not run_dir.is_symlink():
        shutil.rmtree(run_dir)
    if created_root and storage.is_dir() and not storage.is_symlink():
        with contextlib.suppress(OSError):  # not empty (another run wrote there meanwhile): kept
            storage.rmdir()
