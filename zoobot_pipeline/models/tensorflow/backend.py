"""The TensorFlow implementation of :class:`zoobot_pipeline.models.Backend` (Keras 3 on TensorFlow).

Jobs arrive planned and checked (:mod:`zoobot_pipeline.models.job`); what is left to check here is what only this
backend knows: it trains in this process or on Ray Train workers (``MultiWorkerMirroredStrategy``), on CPUs with the
pinned ``tensorflow-cpu`` or on the GPUs TensorFlow's CUDA build sees, in float32, and builds the encoders of
:mod:`.model`. Before Keras reads a checkpoint, its weights file must be a safetensors file inside the checkpoint
directory with the recorded sha256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import tensorflow as tf

from zoobot_pipeline.errors import UnavailableError, ZoobotPipelineError
from zoobot_pipeline.models.backend import ExportedGraph
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON, read_checkpoint_json, weights_path
from zoobot_pipeline.models.config import DistributedConfig, ModelConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.tensorflow.checkpoint import FRAMEWORK, load_checkpoint
from zoobot_pipeline.models.tensorflow.inference import evaluate_checkpoint, predict_checkpoint
from zoobot_pipeline.models.tensorflow.loop import LocalSession, run_training
from zoobot_pipeline.models.tensorflow.model import TFModel, check_architecture
from zoobot_pipeline.models.tensorflow.state import export_model
from zoobot_pipeline.models.tensorflow.train import check_training, gpus_visible
from zoobot_pipeline.models.zoobot_import import ImportRequest

__all__ = ["BACKEND", "TensorFlowBackend"]


class TensorFlowBackend:
    """Training (in this process or on Ray Train), prediction, checkpoint loading and ONNX export with Keras 3 and
    tf2onnx."""

    name = FRAMEWORK

    def check_devices(self, distributed: DistributedConfig) -> None:
        """GPU workers on this machine need a GPU that TensorFlow sees (never with the pinned ``tensorflow-cpu``; on a
        Ray cluster the workers' nodes decide)."""
        if distributed.gpus_per_worker > 0 and distributed.ray_address is None and not gpus_visible():
            raise UnavailableError(f"gpus_per_worker={distributed.gpus_per_worker:g} but TensorFlow sees no GPU here "
                                   f"(tensorflow {tf.__version__}: tensorflow-cpu, or no CUDA device); use "
                                   "--gpus-per-worker 0")

    def check_model(self, model_config: ModelConfig, source: str = "--architecture") -> None:
        """The backend must build ``model_config.architecture`` (see :mod:`.model`); the error names ``source``."""
        check_architecture(model_config, source)

    def _check_checkpoint(self, checkpoint_dir: str | Path) -> None:
        """Before Keras reads a base checkpoint: a sound ``checkpoint.json`` written by this backend, and a checked
        safetensors weights file."""
        meta = read_checkpoint_json(checkpoint_dir)
        source = Path(checkpoint_dir) / CHECKPOINT_JSON
        if meta["framework"]["name"] != FRAMEWORK:
            raise ZoobotPipelineError(f"{source}: a {meta['framework']['name']} checkpoint; finetune it with "
                                      f"--framework {meta['framework']['name']}")
        weights_path(checkpoint_dir, meta)
        self.check_model(ModelConfig.model_validate(meta["model"]), f"{source} (model.architecture)")

    def train(self, job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig,
              quiet: bool = True) -> Path:
        """Run a training job in this process or with Ray Train; returns ``out_dir``, the best model's checkpoint."""
        self.check_devices(distributed)
        check_training(job.training)
        if job.base_checkpoint is not None:
            self._check_checkpoint(job.base_checkpoint)
        if distributed.uses_ray:
            from zoobot_pipeline.models.tensorflow.distributed import train_with_ray

            return train_with_ray(job, out_dir, distributed, quiet)
        summary = run_training(job, LocalSession(out_dir, distributed.resume_from), quiet)
        return export_model(Path(out_dir), out_dir, summary)

    def predict(self, checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                batch_size: int = 64) -> pa.Table:
        """See :func:`zoobot_pipeline.models.predict`."""
        return predict_checkpoint(checkpoint_dir, release_dir, ids, batch_size)

    def evaluate(self, checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                 ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
        """See :func:`zoobot_pipeline.models.evaluate`."""
        return evaluate_checkpoint(checkpoint_dir, release_dir, labels_path, ids, batch_size)

    def load_checkpoint(self, path: str | Path) -> TFModel:
        """See :func:`zoobot_pipeline.models.tensorflow.checkpoint.load_checkpoint`."""
        return load_checkpoint(path)

    def export_onnx(self, checkpoint_dir: str | Path, onnx_path: str | Path) -> ExportedGraph:
        """See :func:`zoobot_pipeline.models.tensorflow.export.export_onnx`."""
        from zoobot_pipeline.models.tensorflow.export import export_onnx

        return export_onnx(checkpoint_dir, onnx_path)

    def import_zoobot(self, request: ImportRequest, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Zoobot's published checkpoints are PyTorch: import them with the torch backend."""
        raise UnavailableError("Zoobot checkpoints are PyTorch (Lightning or timm) checkpoints: import them with the "
                               "torch backend; the tensorflow backend trains its own")


BACKEND = TensorFlowBackend()
