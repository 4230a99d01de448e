"""The torch implementation of :class:`zoobot_pipeline.models.Backend`."""

from __future__ import annotations

from pathlib import Path

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.model import ZoobotModel
from zoobot_pipeline.models.torch.train import pretrain_local

__all__ = ["BACKEND", "TorchBackend"]


class TorchBackend:
    """Pretraining and checkpoint loading with PyTorch and timm."""

    name = "torch"

    def pretrain(self, release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
                 model_config: ModelConfig, training_config: TrainingConfig,
                 preprocessing: PreprocessingConfig) -> Path:
        """See :func:`zoobot_pipeline.models.torch.train.pretrain_local`."""
        return pretrain_local(release_dir, votes_path, out_dir, model_config, training_config, preprocessing)

    def load_checkpoint(self, path: str | Path) -> ZoobotModel:
        """See :func:`zoobot_pipeline.models.torch.checkpoint.load_checkpoint`."""
        return load_checkpoint(path)


BACKEND = TorchBackend()
