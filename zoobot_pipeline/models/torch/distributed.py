"""Torch training as a Ray Train job (:mod:`zoobot_pipeline.models.ray_train`): the same :func:`run_training` on every
worker, DDP over gloo (CPU) or nccl (GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from torch import nn

from zoobot_pipeline.models.config import DistributedConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.ray_train import RayTrainSession, train_on_ray
from zoobot_pipeline.models.torch.loop import run_training
from zoobot_pipeline.models.torch.state import export_model

__all__ = ["RaySession", "train_with_ray"]


class RaySession(RayTrainSession):
    """The training session of one torch Ray Train worker."""

    def __init__(self, resume_from: str | None = None) -> None:
        super().__init__(resume_from)
        self.device = get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel over the worker group (the model itself for one worker)."""
        return prepare_model(model, move_to_device=self.device)

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum over workers with an all-reduce."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def _train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    return run_training(config["job"], RaySession(config["resume_from"]), quiet=config["quiet"])


def train_with_ray(job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig,
                   quiet: bool = True) -> Path:
    """Run ``job`` on ``distributed.workers`` Ray Train workers; returns ``out_dir`` holding the best model."""
    use_gpu = distributed.gpus_per_worker > 0
    return train_on_ray(job, out_dir, distributed, quiet, TorchTrainer, _train_loop_per_worker, export_model,
                        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"))
