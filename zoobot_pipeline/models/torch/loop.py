"""The one training loop, for pretraining and finetuning, in this process or on each Ray Train worker.

:func:`run_training` builds a job's task and calls :func:`train_task`, which talks to its surroundings only through a
:class:`TrainingSession`: rank and world size, device, model wrapping, summing numbers over workers, resuming and
reporting an epoch. :class:`LocalSession` is the in-process session (world size 1); the Ray Train session lives in
``distributed.py``. The training set is sharded with a seeded ``DistributedSampler`` (padded so every rank runs the
same number of steps); ``TrainingConfig.batch_size`` is the global batch, split over the workers. Validation losses
are summed over the shards, so every rank sees the same value and early stopping stops all ranks together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.config import TrainingConfig
from zoobot_pipeline.models.images import validation_mask
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.torch.data import GalaxyDataset
from zoobot_pipeline.models.torch.job import TrainingTask, build_task
from zoobot_pipeline.models.torch.state import export_model, load_training_state, save_training_state
from zoobot_pipeline.models.torch.train import (
    autocast,
    check_precision,
    compile_encoder,
    compile_failed,
    loss_sum,
    make_grad_scaler,
    make_optimizer,
    make_scheduler,
    step_epoch_schedule,
    train_one_epoch,
)
from zoobot_pipeline.models.training_state import LocalTraining, TrainingProgress
from zoobot_pipeline.progress import progress_bar

__all__ = ["LocalSession", "TrainingSession", "run_training", "train_task"]


class TrainingSession(Protocol):
    """Where a training loop runs."""

    rank: int
    world_size: int
    device: torch.device

    def restored(self) -> AbstractContextManager[Path | None]:
        """A training-state directory to resume from, or None."""
        ...

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model to train (wrapped for data parallelism when there are several workers)."""
        ...

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over all workers."""
        ...

    def report(self, metrics: dict[str, Any], write_state: Callable[[Path], Path]) -> None:
        """End of an epoch: record ``metrics``; ``write_state(dir)`` writes a training-state checkpoint (rank 0)."""
        ...


class LocalSession(LocalTraining):
    """Training in this process: the best model is written to ``out_dir`` whenever validation loss improves."""

    def __init__(self, out_dir: str | Path, device: torch.device, resume_from: str | Path | None = None) -> None:
        super().__init__(out_dir, export_model, resume_from)
        self.device = device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model itself."""
        return model


def _loaders(task: TrainingTask, config: TrainingConfig,
             session: TrainingSession) -> tuple[DataLoader, DataLoader, DistributedSampler, GalaxyDataset]:
    data = task.data
    is_val = validation_mask(data.ids, config.val_fraction, config.seed)
    if is_val.all() or not is_val.any():
        raise ValueError(f"{len(data.ids)} usable galaxies give an empty training or validation split "
                         f"(val_fraction={config.val_fraction})")
    train_set = GalaxyDataset(data.subset(~is_val), config.augmentation, config.seed)
    val_set = GalaxyDataset(data.subset(is_val))
    sampler = DistributedSampler(train_set, num_replicas=session.world_size, rank=session.rank, shuffle=True,
                                 seed=config.seed)
    batch = max(1, config.batch_size // session.world_size)
    train_loader = DataLoader(train_set, batch_size=batch, sampler=sampler, num_workers=config.num_workers,
                              drop_last=len(sampler) > batch)
    val_shard = Subset(val_set, range(session.rank, len(val_set), session.world_size))
    val_loader = DataLoader(val_shard, batch_size=batch, num_workers=config.num_workers)
    return train_loader, val_loader, sampler, train_set


def train_task(task: TrainingTask, config: TrainingConfig, preprocessing: PreprocessingConfig,
               session: TrainingSession, quiet: bool = True) -> dict[str, Any]:
    """Train ``task.model`` with AdamW, an LR schedule (per batch, or per epoch for ``plateau``) and early stopping on
    validation loss, in ``config.precision`` (the loss in float32), clipping gradients to ``config.grad_clip`` and
    with a compiled encoder when ``config.compile``. fp16 without CUDA, and ``torch.compile`` failing here, raise
    :class:`~zoobot_pipeline.errors.UnavailableError` naming the option.

    Each epoch ends with ``session.report``; a session that restores a training state continues after its epoch.
    Returns the run's summary: ``task.summary`` plus ``world_size``, ``n_train``, ``n_val``, ``resumed_after_epoch``
    (None for a fresh start), ``best_epoch``, ``best_val_loss`` and ``history`` (one ``{"epoch", "train_loss",
    "val_loss", "lr"}`` per epoch, including restored ones).
    """
    check_precision(config.precision, session.device)
    train_loader, val_loader, sampler, train_set = _loaders(task, config, session)
    model = task.model.to(session.device, memory_format=torch.channels_last)
    if config.compile:
        compile_encoder(model)  # in place: parameter names, and so checkpoints, stay the plain ones
    scaler = make_grad_scaler(config.precision, session.device)
    optimizer = make_optimizer(model, config, task.param_groups)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    with session.restored() as state_dir:
        progress = (load_training_state(state_dir, model, optimizer, scheduler) if state_dir is not None
                    else TrainingProgress())
    resumed_after = progress.epoch if state_dir is not None else None
    net = session.prepare_model(model)

    def summary() -> dict[str, Any]:
        return {**task.summary, "world_size": session.world_size, "n_train": len(train_set),
                "n_val": len(val_loader.dataset.dataset), "resumed_after_epoch": resumed_after,
                "best_epoch": progress.best_epoch,
                "best_val_loss": progress.best_val_loss, "history": progress.history}

    def write_state(directory: Path) -> Path:
        return save_training_state(directory, model, optimizer, scheduler, progress, preprocessing, config,
                                   summary())

    remaining = config.epochs - progress.epoch - 1
    with progress_bar(not quiet and session.rank == 0, remaining * len(train_loader), "training", "steps") as advance:
        for epoch in range(progress.epoch + 1, config.epochs):
            if progress.best_epoch >= 0 and progress.epoch - progress.best_epoch >= config.patience:
                break
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                train_total, train_count = train_one_epoch(
                    net, train_loader, optimizer, scheduler, task.loss_fn, session.device, advance,
                    precision=config.precision, grad_clip=config.grad_clip, scaler=scaler)
                with autocast(config.precision, session.device):
                    val_total, val_count = loss_sum(model, val_loader, task.loss_fn, session.device)
            except Exception as err:
                failed = compile_failed(err) if config.compile else None
                if failed is None:
                    raise
                raise failed from None
            train_total, train_count, val_total, val_count = session.all_sum(
                [train_total, train_count, val_total, val_count])
            train_loss, val_loss = train_total / max(train_count, 1), val_total / max(val_count, 1)
            step_epoch_schedule(scheduler, val_loss)
            session.report(progress.record(epoch, train_loss, val_loss, lr, session.world_size), write_state)
    if not math.isfinite(progress.best_val_loss):
        raise RuntimeError("training finished without a finite validation loss")
    return summary()


def run_training(job: TrainingJob, session: TrainingSession, quiet: bool = True) -> dict[str, Any]:
    """The per-worker training function: build ``job``'s task here and train it in ``session``."""
    return train_task(build_task(job), job.training, job.preprocessing, session, quiet)
