"""The parts of TensorFlow training that do not depend on where it runs: checks, model building, loss, optimizers and
learning-rate schedules (the loop itself is :mod:`.loop`).

They mirror the torch backend: AdamW (same betas, epsilon 1e-8, decoupled weight decay on every variable), LR schedules
(``cosine``: cosine to 0 over all steps; ``onecycle``: torch's ``OneCycleLR`` defaults for the LR, without its momentum
cycling; ``constant``; ``plateau``: torch's ``ReduceLROnPlateau`` rule), and a finetuning job gets one optimizer per
LR group (the head, then each unfrozen block). Training runs in float32, on the CPU with ``tensorflow-cpu`` (the pinned
build) or on the GPUs TensorFlow sees (its CUDA build); other precisions, ``--compile`` and GPUs TensorFlow cannot see
are refused up front.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from zoobot_pipeline.errors import UnavailableError, ZoobotPipelineError
from zoobot_pipeline.models.config import TrainingConfig
from zoobot_pipeline.models.images import LabelledImages, load_images, load_labelled_images
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.labels import finetune_schema, read_finetune_labels
from zoobot_pipeline.models.tensorflow.checkpoint import load_checkpoint
from zoobot_pipeline.models.tensorflow.finetune import freeze
from zoobot_pipeline.models.tensorflow.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.tensorflow.model import TFModel, build_encoder, build_finetune_model, build_model

__all__ = ["OneCycle", "Plateau", "build_job_model", "check_training", "gpus_visible", "learning_rate_schedule",
           "make_optimizers", "model_loss"]


def check_training(config: TrainingConfig) -> None:
    """Refuse, before any work, training options the tensorflow backend does not have."""
    if config.precision != "fp32":
        raise UnavailableError(f"--precision {config.precision}: the tensorflow backend trains in fp32 only")
    if config.compile:
        raise UnavailableError("--compile is torch.compile: the tensorflow backend has no such option")
    if config.device not in ("auto", "cpu") and not (config.device == "cuda" and gpus_visible()):
        raise UnavailableError(f"training device {config.device!r}: TensorFlow sees no GPU here (tensorflow-cpu, or "
                               "no CUDA device); use --device auto or cpu")


def gpus_visible() -> bool:
    """Whether this process's TensorFlow sees a GPU (never with ``tensorflow-cpu``; the CUDA build on a GPU host)."""
    return bool(tf.config.list_physical_devices("GPU"))


def model_loss(model: TFModel):
    """``loss(outputs, targets)``, the batch mean: Dirichlet-Multinomial (vote counts), cross-entropy on logits
    (class indices) or mean squared error, as the torch backend."""
    if model.task == "dirichlet":
        schema = model.schema
        return lambda outputs, targets: dirichlet_multinomial_loss(targets, outputs, schema)
    if model.task == "classification":
        return lambda outputs, targets: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.cast(targets, tf.int64), outputs))
    return lambda outputs, targets: tf.reduce_mean(tf.square(outputs - tf.reshape(targets, tf.shape(outputs))))


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """torch's ``OneCycleLR`` learning rate with its defaults (30% cosine warm-up from ``max_lr / 25``, cosine
    annealing to ``max_lr / 25 / 1e4``)."""

    def __init__(self, max_lr: float, total_steps: int) -> None:
        self.max_lr, self.total_steps = max_lr, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float64)
        initial, peak = self.max_lr / 25.0, self.max_lr
        final = initial / 1e4
        warm_end = 0.3 * self.total_steps - 1
        end = self.total_steps - 1

        def anneal(start, stop, pct):
            return stop + (start - stop) / 2.0 * (tf.cos(math.pi * pct) + 1.0)

        rising = anneal(initial, peak, step / warm_end) if warm_end > 0 else tf.constant(peak, tf.float64)
        falling = anneal(peak, final, (step - warm_end) / max(end - warm_end, 1e-12))
        return tf.cast(tf.where(step <= warm_end, rising, falling), tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps}


class Plateau:
    """torch's ``ReduceLROnPlateau`` (mode min, relative threshold 1e-4): multiply every optimizer's LR by ``factor``
    after more than ``patience`` epochs without improvement."""

    def __init__(self, optimizers: list[keras.optimizers.Optimizer], factor: float, patience: int) -> None:
        self.optimizers, self.factor, self.patience = optimizers, factor, patience
        self.best, self.bad = math.inf, 0

    def step(self, val_loss: float) -> None:
        """End of an epoch: count it as an improvement or not, and lower the LR after too many without."""
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            for optimizer in self.optimizers:
                optimizer.learning_rate.assign(optimizer.learning_rate * self.factor)
            self.bad = 0


def learning_rate_schedule(config: TrainingConfig, lr: float, total_steps: int):
    """The learning rate of ``config.schedule`` starting at ``lr``: a per-step schedule over ``total_steps``
    (``cosine``, ``onecycle``), or a constant (``constant``; ``plateau`` changes it per epoch, see :class:`Plateau`)."""
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    if config.schedule == "onecycle":
        return OneCycle(lr, total_steps)
    return lr


def make_optimizers(groups: list[tuple[list, float]], config: TrainingConfig,
                    steps_per_epoch: int) -> list[keras.optimizers.Optimizer]:
    """One AdamW per variable group (``(variables, LR multiplier)``), built, with ``config``'s schedule over all the
    run's steps."""
    total = max(1, config.epochs * steps_per_epoch)
    optimizers = []
    for variables, multiplier in groups:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(config, config.lr * multiplier, total),
                                           weight_decay=config.weight_decay, beta_1=0.9, beta_2=0.999,
                                           epsilon=1e-8)
        optimizer.build(variables)
        optimizers.append(optimizer)
    return optimizers


def build_job_model(job: TrainingJob) -> tuple[TFModel, LabelledImages, int | None, dict[str, Any]]:
    """The job's model (seeded by ``job.training.seed``; call it inside the distribution strategy's scope), its
    labelled images, the number of unfrozen encoder blocks (None for pretraining) and the summary's first fields."""
    keras.utils.set_random_seed(job.training.seed)
    unfrozen = None
    if job.kind == "pretrain":
        if job.model is None:
            raise ValueError("a pretraining job needs a model config")
        model = build_model(job.model)
        data = load_labelled_images(job.release_dir, job.labels_path, model.schema, job.preprocessing)
    else:
        if job.finetune is None or (job.base_checkpoint is None and job.model is None):
            raise ValueError("a finetuning job needs a finetune config and a base checkpoint or model config")
        labels = read_finetune_labels(job.labels_path, job.finetune)
        if job.base_checkpoint is not None:
            base = load_checkpoint(job.base_checkpoint)
            if base.kind != "pretrained":
                raise ZoobotPipelineError(f"{job.base_checkpoint}: finetuning starts from a pretrained checkpoint")
            encoder, base_config = base.encoder, base.config
        else:
            encoder, base_config = build_encoder(job.model), job.model
        model = build_finetune_model(encoder, base_config, job.finetune, finetune_schema(job.finetune),
                                     labels.class_names)
        unfrozen = freeze(model, job.finetune.n_blocks)
        data = load_images(job.release_dir, labels.ids, labels.targets, job.preprocessing)
    summary = {"kind": job.kind, "n_labelled": len(data.ids), "n_rejected": data.n_rejected,
               "n_missing": data.n_missing, "release": str(Path(job.release_dir).resolve())}
    if job.base_checkpoint is not None:
        summary["base_checkpoint"] = str(Path(job.base_checkpoint).resolve())
    return model, data, unfrozen, summary
