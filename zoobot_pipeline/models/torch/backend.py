"""The torch implementation of :class:`zoobot_pipeline.models.Backend`.

Jobs arrive planned and checked (:mod:`zoobot_pipeline.models.job`); what is left to check here is what only torch
knows: whether CUDA is there for GPU workers, and whether timm has the architecture (of a new model, or the one a
checkpoint's ``checkpoint.json`` names). Before torch reads a checkpoint, its weights file must be a safetensors file
inside the checkpoint directory with the recorded sha256. Ray is imported only for distributed runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import torch

from zoobot_pipeline.errors import UnavailableError
from zoobot_pipeline.models.backend import ExportedGraph
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON, read_checkpoint_json, weights_path
from zoobot_pipeline.models.config import DistributedConfig, ModelConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel
from zoobot_pipeline.models.torch.inference import evaluate_checkpoint, predict_checkpoint
from zoobot_pipeline.models.torch.loop import LocalSession, run_training
from zoobot_pipeline.models.torch.model import ZoobotModel, check_architecture
from zoobot_pipeline.models.torch.state import export_model
from zoobot_pipeline.models.torch.train import check_precision, resolve_device
from zoobot_pipeline.models.zoobot_import import ImportRequest

__all__ = ["BACKEND", "TorchBackend"]


class TorchBackend:
    """Training, prediction, checkpoint loading and ONNX export with PyTorch, timm and (optionally) Ray Train."""

    name = "torch"

    def check_devices(self, distributed: DistributedConfig) -> None:
        """GPU workers on this machine need CUDA (on a Ray cluster the workers' nodes decide)."""
        if distributed.gpus_per_worker > 0 and distributed.ray_address is None and not torch.cuda.is_available():
            raise UnavailableError(f"gpus_per_worker={distributed.gpus_per_worker:g} but CUDA is not available here "
                               f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")

    def check_model(self, model_config: ModelConfig, source: str = "--architecture") -> None:
        """timm must know ``model_config.architecture`` (an :class:`UnknownNameError` naming ``source`` if not)."""
        check_architecture(model_config.architecture, source)

    def _check_checkpoint(self, checkpoint_dir: str | Path) -> None:
        """Before torch reads a checkpoint: its ``checkpoint.json`` is sound, its weights file is a safetensors file
        inside the directory with the recorded sha256 (:func:`~zoobot_pipeline.models.checkpoint.weights_path`),
        and timm knows the architecture it names."""
        meta = read_checkpoint_json(checkpoint_dir)
        weights_path(checkpoint_dir, meta)
        self.check_model(ModelConfig.model_validate(meta["model"]),
                         f"{Path(checkpoint_dir) / CHECKPOINT_JSON} (model.architecture)")

    def train(self, job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig,
              quiet: bool = True) -> Path:
        """Run a training job in this process or with Ray Train; returns ``out_dir``, the best model's checkpoint."""
        if job.base_checkpoint is not None:
            self._check_checkpoint(job.base_checkpoint)
        if distributed.uses_ray:
            from zoobot_pipeline.models.torch.distributed import train_with_ray

            if distributed.gpus_per_worker == 0:  # CPU workers: refuse fp16 here, not in every worker
                check_precision(job.training.precision, torch.device("cpu"))
            return train_with_ray(job, out_dir, distributed, quiet)
        device = torch.device("cuda") if distributed.gpus_per_worker > 0 else resolve_device(job.training.device)
        check_precision(job.training.precision, device)
        summary = run_training(job, LocalSession(out_dir, device, distributed.resume_from), quiet)
        return export_model(Path(out_dir), out_dir, summary)

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

    def import_zoobot(self, request: ImportRequest, out_dir: str | Path, overwrite: bool = False) -> Path:
        """See :func:`zoobot_pipeline.models.torch.zoobot_import.import_zoobot`."""
        from zoobot_pipeline.models.torch.zoobot_import import import_zoobot

        return import_zoobot(request, out_dir, overwrite)


BACKEND = TorchBackend()
