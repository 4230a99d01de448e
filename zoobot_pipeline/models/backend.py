"""What a training framework provides to the rest of the pipeline (:class:`Backend`), what it hands the exporter
(:class:`ExportedGraph`), and the registry that finds a backend by name.

A backend is registered as an object or as a lazy ``"module:attribute"`` reference, so nothing here imports torch or
tensorflow: a backend's module is imported only when it is first asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import UnavailableError, ZoobotPipelineError, check_name
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON, read_checkpoint_json
from zoobot_pipeline.models.config import DistributedConfig, ModelConfig
from zoobot_pipeline.models.job import TrainingJob
from zoobot_pipeline.models.zoobot_import import ImportRequest
from zoobot_pipeline.runtime.package import Task

__all__ = [
    "Backend", "ExportedGraph", "Reference", "available_backends", "checkpoint_backend", "get_backend",
    "register_backend",
]

# (images (B, C, H, W), dropout masks (B, S, F)) -> (outputs (B, S, n_outputs), features (B, F)), all float32.
Reference = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ExportedGraph:
    """An exported model: its task and outputs, input preprocessing, head dropout, and the framework's own forward.

    ``reference`` runs the framework model on the same inputs as the ONNX graph (see :data:`Reference`), so the
    exporter can check onnxruntime against it.
    """

    task: Task
    output_names: tuple[str, ...]
    schema: dict[str, Any] | None
    preprocessing: PreprocessingConfig
    n_features: int
    dropout_rate: float
    architecture: str
    framework: dict[str, Any]
    reference: Reference


@runtime_checkable
class Backend(Protocol):
    """What a training framework provides to the rest of the pipeline. Everything framework-free (configs, checks,
    labels, image loading, splits) is done before a backend is called: see :mod:`zoobot_pipeline.models.job`."""

    name: str

    def check_devices(self, distributed: DistributedConfig) -> None:
        """Refuse, before any work starts, devices this framework cannot use here (e.g. GPU workers without CUDA)."""
        ...

    def check_model(self, model_config: ModelConfig, source: str = "--architecture") -> None:
        """Refuse, before any work starts, a model this framework cannot build (e.g. an unknown architecture name);
        the message names ``source``, the option or file the config came from."""
        ...

    def train(self, job: TrainingJob, out_dir: str | Path, distributed: DistributedConfig,
              quiet: bool = True) -> Path:
        """Run a checked training job in this process or on Ray Train; return ``out_dir``, the best checkpoint."""
        ...

    def predict(self, checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                batch_size: int = 64) -> pa.Table:
        """Predictions of a checkpoint for a release's sources (or only ``ids``)."""
        ...

    def evaluate(self, checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                 ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, Any]:
        """The checkpoint's loss on labelled galaxies of a release, with accuracy or RMSE for a classifier or
        regressor, and per-question NLL, fraction error and calibration for a decision tree."""
        ...

    def load_checkpoint(self, path: str | Path) -> Any:
        """Rebuild a trained model from a checkpoint directory."""
        ...

    def export_onnx(self, checkpoint_dir: str | Path, onnx_path: str | Path) -> ExportedGraph:
        """Write the checkpoint as one ONNX graph with the inputs and outputs of
        :mod:`zoobot_pipeline.runtime.package`; return its :class:`ExportedGraph`."""
        ...

    def import_zoobot(self, request: ImportRequest, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Import a Zoobot Lightning checkpoint or timm-layout encoder (see
        :mod:`zoobot_pipeline.models.zoobot_import`) as a checkpoint directory ``out_dir``, without running code
        from it; return ``out_dir``. ``overwrite`` as for training: only the checkpoint's own files are replaced."""
        ...


_BACKENDS: dict[str, str | Backend] = {"torch": "zoobot_pipeline.models.torch.backend:BACKEND",
                                       "tensorflow": "zoobot_pipeline.models.tensorflow.backend:BACKEND"}
# The framework each built-in backend imports first, and the image that has it (containers/README.md): what the error
# for a missing framework names, found without importing any framework.
_FRAMEWORKS = {"torch": "torch", "tensorflow": "tensorflow"}
_IMAGES = {"torch": "the training image", "tensorflow": "the training-tensorflow image"}


def register_backend(name: str, backend: str | Backend) -> None:
    """Register a backend object, or a lazy ``"module:attribute"`` reference to one, under ``name``."""
    _BACKENDS[name] = backend


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend` (a backend may still fail to import if its framework is missing)."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, importing its module on first use; :class:`UnavailableError` (one line naming the
    missing framework) where that framework is not installed, as in the scoring image."""
    entry = _BACKENDS[check_name(name, available_backends(), "backend")]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] == __name__.split(".")[0]:
                raise  # a bug in zoobot-pipeline itself, not a missing framework
            raise UnavailableError(_missing_framework(name, err.name)) from None
        entry = getattr(imported, attribute)
        _BACKENDS[name] = entry
    return entry


def _missing_framework(name: str, missing: str) -> str:
    """The one line for backend ``name`` whose framework module ``missing`` is not installed: which built-in backend
    is installed instead (as in the training-tensorflow image) or that none is (as in the scoring image), the image
    that has ``name``, and its extra."""
    others = [other for other, module in _FRAMEWORKS.items()
              if other != name and importlib.util.find_spec(module) is not None]
    if others:
        where = "; ".join(f"the {other} backend is installed: train with --framework {other}" for other in others)
    else:
        where = "the scoring image has no training framework"
    return (f"the {name} backend needs {missing}, which is not installed here ({where}): use "
            f"{_IMAGES.get(name, 'a training image')}, or pip install 'zoobot-pipeline[{name}]'")


def checkpoint_backend(path: str | Path) -> Backend:
    """The backend of the framework that wrote the checkpoint at ``path`` (its ``checkpoint.json`` says which)."""
    try:
        name = read_checkpoint_json(path)["framework"]["name"]
    except (KeyError, TypeError):
        raise ZoobotPipelineError(f"{Path(path) / CHECKPOINT_JSON}: no framework.name") from None
    return get_backend(name)
