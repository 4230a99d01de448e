"""The one TensorFlow training loop, for pretraining and finetuning, in this process or on each Ray Train worker.

:func:`run_training` builds a job's model and data inside the session's ``tf.distribute`` strategy (the default one in
this process, ``MultiWorkerMirroredStrategy`` on Ray Train) and trains it; it talks to its surroundings only through a
:class:`TrainingSession`, as the torch backend's loop does. ``TrainingConfig.batch_size`` is the global batch, split
over the workers: each epoch's seeded shuffle is padded to a multiple of the world size and dealt out by rank (every
rank runs the same number of steps), each replica's loss is its batch mean divided by the world size and the optimizers
sum the replicas' gradients, so one step applies the mean gradient of the global batch, as DDP does. Gradient clipping
acts on that summed gradient. Validation losses are summed over the shards, so every rank sees the same value and
early stopping stops all ranks together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from zoobot_pipeline.models.images import validation_mask
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.tensorflow.augment import augment_batch
from zoobot_pipeline.models.tensorflow.finetune import variable_groups
from zoobot_pipeline.models.tensorflow.state import export_model, load_training_state, save_training_state
from zoobot_pipeline.models.tensorflow.train import (
    Plateau,
    build_job_model,
    check_training,
    make_optimizers,
    model_loss,
)
from zoobot_pipeline.models.training_state import LocalTraining, TrainingProgress
from zoobot_pipeline.progress import progress_bar

__all__ = ["LocalSession", "TrainingSession", "run_training", "shard_order"]


class TrainingSession(Protocol):
    """Where a training loop runs."""

    rank: int
    world_size: int
    strategy: tf.distribute.Strategy

    def restored(self) -> AbstractContextManager[Path | None]:
        """A training-state directory to resume from, or None."""
        ...

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over all workers."""
        ...

    def report(self, metrics: dict[str, Any], write_state: Callable[[Path], Path]) -> None:
        """End of an epoch: record ``metrics``; ``write_state(dir)`` writes a training-state checkpoint (rank 0)."""
        ...


class LocalSession(LocalTraining):
    """Training in this process (TensorFlow's default strategy): the best model is written to ``out_dir`` whenever
    validation loss improves."""

    def __init__(self, out_dir: str | Path, resume_from: str | Path | None = None) -> None:
        super().__init__(out_dir, export_model, resume_from)
        self.strategy = tf.distribute.get_strategy()


def shard_order(n: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's rows of the training set for ``epoch``: a permutation seeded by ``(seed, epoch)``, padded by
    wrapping round to a multiple of ``world_size``, every ``world_size``-th row from ``rank``."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    padded = np.resize(order, math.ceil(n / world_size) * world_size)
    return padded[rank::world_size]


def run_training(job: TrainingJob, session: TrainingSession, quiet: bool = True) -> dict[str, Any]:
    """Train ``job`` with AdamW, an LR schedule (per step, or per epoch for ``plateau``), gradient clipping and early
    stopping on validation loss. Each epoch ends with ``session.report``; a session that restores a training state
    continues after its epoch. Returns the run's summary, with the fields of the torch backend's: the job's fields plus
    ``world_size``, ``n_train``, ``n_val``, ``resumed_after_epoch``, ``best_epoch``, ``best_val_loss`` and ``history``.
    """
    config = job.training
    check_training(config)
    strategy, rank, world = session.strategy, session.rank, session.world_size
    with strategy.scope():
        model, data, unfrozen, first = build_job_model(job)
    is_val = validation_mask(data.ids, config.val_fraction, config.seed)
    if is_val.all() or not is_val.any():
        raise ValueError(f"{len(data.ids)} usable galaxies give an empty training or validation split "
                         f"(val_fraction={config.val_fraction})")
    train, val = data.subset(~is_val), data.subset(is_val)
    val_rows = np.arange(rank, len(val.ids), world)
    batch = max(1, config.batch_size // world)
    n_local = len(shard_order(len(train.ids), config.seed, 0, rank, world))
    drop_last = n_local > batch
    steps = n_local // batch if drop_last else 1
    groups = variable_groups(model, unfrozen, job.finetune.lr_decay if job.finetune is not None else 1.0)
    with strategy.scope():
        optimizers = make_optimizers(groups, config, steps)
    plateau = Plateau(optimizers, config.plateau_factor, config.plateau_patience)
    with session.restored() as state_dir:
        if state_dir is not None:
            progress, saved_plateau = load_training_state(state_dir, model, optimizers)
            plateau.best, plateau.bad = saved_plateau["best"], saved_plateau["bad"]
        else:
            progress = TrainingProgress()
    resumed_after = progress.epoch if state_dir is not None else None
    train_step, val_loss_sum = _steps(model, groups, optimizers, strategy, world, config.grad_clip)
    train_targets, val_targets = _targets(train.targets), _targets(val.targets)

    def summary() -> dict[str, Any]:
        return {**first, "world_size": world, "n_train": len(train.ids), "n_val": len(val.ids),
                "resumed_after_epoch": resumed_after, "best_epoch": progress.best_epoch,
                "best_val_loss": progress.best_val_loss, "history": list(progress.history)}

    def write_state(directory: Path) -> Path:
        return save_training_state(directory, model, optimizers, progress, {"best": plateau.best, "bad": plateau.bad},
                                   job.preprocessing, config, summary())

    remaining = config.epochs - progress.epoch - 1
    with progress_bar(not quiet and rank == 0, remaining * steps, "training", "steps") as advance:
        for epoch in range(progress.epoch + 1, config.epochs):
            if progress.best_epoch >= 0 and progress.epoch - progress.best_epoch >= config.patience:
                break
            lr = float(keras.ops.convert_to_numpy(optimizers[0].learning_rate))
            order = shard_order(len(train.ids), config.seed, epoch, rank, world)
            train_total, train_count = 0.0, 0
            for step in range(steps):
                rows = order[step * batch:(step + 1) * batch] if drop_last else order
                images = train.images[rows]
                if config.augmentation is not None:
                    images = augment_batch(images, config.augmentation, config.seed, epoch, rows)
                loss = float(train_step(tf.constant(images), tf.constant(train_targets[rows])))
                train_total, train_count = train_total + loss * len(rows), train_count + len(rows)
                advance()
            val_total = sum(float(val_loss_sum(tf.constant(val.images[rows]), tf.constant(val_targets[rows])))
                            for rows in (val_rows[start:start + batch] for start in range(0, len(val_rows), batch)))
            train_total, train_count, val_total, val_count = session.all_sum(
                [train_total, train_count, val_total, len(val_rows)])
            train_loss, val_loss = train_total / max(train_count, 1), val_total / max(val_count, 1)
            if config.schedule == "plateau":
                plateau.step(val_loss)
            session.report(progress.record(epoch, train_loss, val_loss, lr, world), write_state)
    if not math.isfinite(progress.best_val_loss):
        raise RuntimeError("training finished without a finite validation loss")
    return summary()


def _targets(targets: np.ndarray) -> np.ndarray:
    return targets if targets.ndim == 1 else targets.astype(np.float32)


def _steps(model, groups, optimizers, strategy: tf.distribute.Strategy, world_size: int,
           grad_clip: float | None) -> tuple[Callable, Callable]:
    """``train_step(images, targets)`` (this replica's batch-mean loss) and ``val_loss_sum(images, targets)``."""
    loss_fn = model_loss(model)
    net = model.net
    bounds = np.cumsum([0] + [len(variables) for variables, _ in groups])
    variables = [v for group, _ in groups for v in group]

    def replica_step(images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(net(images, training=True), targets)
            scaled = loss / world_size
        grads = tape.gradient(scaled, variables)
        if grad_clip is not None:
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            clipped, _ = tf.clip_by_global_norm(summed, grad_clip)
            grads = [g / world_size for g in clipped]  # the optimizers sum the replicas' gradients again
        for optimizer, start, end in zip(optimizers, bounds[:-1], bounds[1:], strict=True):
            optimizer.apply_gradients(zip(grads[start:end], variables[start:end], strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        return strategy.experimental_local_results(strategy.run(replica_step, args=(images, targets)))[0]

    @tf.function(reduce_retracing=True)
    def val_loss_sum(images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        return loss_fn(net(images, training=False), targets) * tf.cast(tf.shape(images)[0], tf.float32)

    return train_step, val_loss_sum
