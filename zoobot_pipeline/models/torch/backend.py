"""The torch implementation of :class:`zoobot_pipeline.models.Backend`.

Everything that can be checked before training is checked here, in the calling process, before any data is cut or
any Ray cluster is started: CUDA for GPU workers, label columns, the overlap of labels with the release, the base
checkpoint, the model's input against the preprocessing. Ray is imported only for distributed runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.votes import read_votes
from zoobot_pipeline.export.graph import ExportedGraph
from zoobot_pipeline.models import (
    DistributedConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    read_checkpoint_json,
)
from zoobot_pipeline.models.labels import check_overlap, finetune_schema, read_finetune_labels
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel
from zoobot_pipeline.models.torch.inference import evaluate_checkpoint, predict_checkpoint
from zoobot_pipeline.models.torch.job import TrainingJob
from zoobot_pipeline.models.torch.loop import LocalSession, run_training
from zoobot_pipeline.models.torch.model import ZoobotModel
from zoobot_pipeline.models.torch.state import export_model
from zoobot_pipeline.models.torch.train import resolve_device
from zoobot_pipeline.schemas import get_schema

__all__ = ["BACKEND", "TorchBackend", "train"]


def _check_devices(training_config: TrainingConfig, distributed: DistributedConfig) -> None:
    if distributed.gpus_per_worker > 0 and distributed.ray_address is None and not torch.cuda.is_available():
        raise RuntimeError(f"gpus_per_worker={distributed.gpus_per_worker:g} but CUDA is not available here "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if distributed.gpus_per_worker > 0 and training_config.device not in ("auto", "cuda"):
        raise ValueError(f"gpus_per_worker > 0 conflicts with training device {training_config.device!r}")


def _check_input(model_config: ModelConfig, preprocessing: PreprocessingConfig) -> None:
    if (model_config.in_channels, model_config.input_size) != (preprocessing.n_channels, preprocessing.input_size):
        raise ValueError(f"model expects {model_config.in_channels} x {model_config.input_size} px input, "
                         f"preprocessing gives {preprocessing.n_channels} x {preprocessing.input_size} px")


def train(job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig, quiet: bool = True) -> Path:
    """Run a training job in this process or with Ray Train; returns ``out_dir``, the best model's checkpoint."""
    if distributed.uses_ray:
        from zoobot_pipeline.models.torch.distributed import train_with_ray

        return train_with_ray(job, out_dir, distributed, quiet)
    device = torch.device("cuda") if distributed.gpus_per_worker > 0 else resolve_device(job.training.device)
    summary = run_training(job, LocalSession(out_dir, device, distributed.resume_from), quiet)
    return export_model(Path(out_dir), out_dir, summary)


class TorchBackend:
    """Pretraining, finetuning, prediction and checkpoint loading with PyTorch, timm and (optionally) Ray Train."""

    name = "torch"

    def pretrain(self, release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
                 model_config: ModelConfig, training_config: TrainingConfig, preprocessing: PreprocessingConfig,
                 distributed: DistributedConfig | None = None, quiet: bool = True) -> Path:
        """See :func:`zoobot_pipeline.models.pretrain`."""
        distributed = distributed or DistributedConfig()
        _check_devices(training_config, distributed)
        _check_input(model_config, preprocessing)
        votes = read_votes(votes_path, get_schema(model_config.schema_name))
        check_overlap(votes.column("id_str").to_pylist(), release_dir)
        job = TrainingJob("pretrain", str(release_dir), str(votes_path), training_config, preprocessing,
                          model=model_config)
        return train(job, out_dir, distributed, quiet)

    def finetune(self, checkpoint_dir: str | Path | None, release_dir: str | Path, labels_path: str | Path,
                 out_dir: str | Path, finetune_config: FinetuneConfig, training_config: TrainingConfig,
                 model_config: ModelConfig | None = None, preprocessing: PreprocessingConfig | None = None,
                 distributed: DistributedConfig | None = None, quiet: bool = True) -> Path:
        """See :func:`zoobot_pipeline.models.finetune`."""
        distributed = distributed or DistributedConfig()
        _check_devices(training_config, distributed)
        if checkpoint_dir is not None:
            meta = read_checkpoint_json(checkpoint_dir)
            if meta.get("kind", "pretrained") != "pretrained":
                raise ValueError(f"{checkpoint_dir}: finetuning starts from a pretrained checkpoint")
            preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
        else:
            if preprocessing is None:
                size = model_config.input_size if model_config is not None else 224
                preprocessing = PreprocessingConfig.gz_decals(input_size=size)
            model_config = model_config or ModelConfig.from_preprocessing(preprocessing)
            _check_input(model_config, preprocessing)
            finetune_config = finetune_config.model_copy(update={"n_blocks": "all", "lr_decay": 1.0})
        finetune_schema(finetune_config)
        check_overlap(read_finetune_labels(labels_path, finetune_config).ids, release_dir)
        job = TrainingJob("finetune", str(release_dir), str(labels_path), training_config, preprocessing,
                          model=None if checkpoint_dir is not None else model_config, finetune=finetune_config,
                          base_checkpoint=None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve()))
        return train(job, out_dir, distributed, quiet)

    def predict(self, checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                batch_size: int = 64) -> pa.Table:
        """See :func:`zoobot_pipeline.models.predict`."""
        return predict_checkpoint(checkpoint_dir, release_dir, ids, batch_size)

    def evaluate(self, checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                 ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, float]:
        """See :func:`zoobot_pipeline.models.evaluate`."""
        return evaluate_checkpoint(checkpoint_dir, release_dir, labels_path, ids, batch_size)

    def load_checkpoint(self, path: str | Path) -> ZoobotModel | FinetuneModel:
        """See :func:`zoobot_pipeline.models.torch.checkpoint.load_checkpoint`."""
        return load_checkpoint(path)

    def export_onnx(self, checkpoint_dir: str | Path, onnx_path: str | Path) -> ExportedGraph:
        """See :func:`zoobot_pipeline.models.torch.export.export_onnx`."""
        from zoobot_pipeline.models.torch.export import export_onnx

        return export_onnx(checkpoint_dir, onnx_path)


BACKEND = TorchBackend()
