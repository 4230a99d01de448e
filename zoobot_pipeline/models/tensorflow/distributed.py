"""TensorFlow training as a Ray Train job (:mod:`zoobot_pipeline.models.ray_train`): Ray's ``TensorflowTrainer`` sets
``TF_CONFIG`` on every worker, each builds a ``MultiWorkerMirroredStrategy`` (collective all-reduce over gRPC) and
runs the same :func:`~.loop.run_training` as in-process training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf
from ray.train.tensorflow import TensorflowTrainer

from zoobot_pipeline.models.config import DistributedConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.ray_train import RayTrainSession, train_on_ray
from zoobot_pipeline.models.tensorflow.loop import run_training
from zoobot_pipeline.models.tensorflow.state import export_model

__all__ = ["RaySession", "train_with_ray"]


class RaySession(RayTrainSession):
    """The training session of one TensorFlow Ray Train worker: its ``MultiWorkerMirroredStrategy``, created before
    any other TensorFlow work in the worker, as TensorFlow requires."""

    def __init__(self, resume_from: str | None = None) -> None:
        super().__init__(resume_from)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        self._sum = tf.function(lambda values: self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(tf.identity, args=(values,)), axis=None))

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum over workers with a collective all-reduce."""
        return self._sum(tf.constant(values, tf.float64)).numpy().tolist()


def _train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    return run_training(config["job"], RaySession(config["resume_from"]), quiet=config["quiet"])


def train_with_ray(job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig,
                   quiet: bool = True) -> Path:
    """Run ``job`` on ``distributed.workers`` Ray Train workers; returns ``out_dir`` holding the best model."""
    return train_on_ray(job, out_dir, distributed, quiet, TensorflowTrainer, _train_loop_per_worker, export_model)
