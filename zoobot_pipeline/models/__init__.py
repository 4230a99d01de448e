"""Framework-free model configuration, the registry of training backends and the public training entry points.

Callers pick a backend by name (``get_backend("torch")``) and talk to it through :class:`Backend`; a backend module is
imported only when first asked for, so nothing here imports torch or tensorflow. A checkpoint directory holds
``checkpoint.json`` (configs, schema, metrics, framework) beside framework-specific weights; :func:`load_checkpoint`
reads the framework from the JSON and hands the directory to that backend.

:func:`pretrain` and :func:`finetune` run in this process when ``workers == 1`` and no ``ray_address`` is given, and
as a Ray Train job otherwise; both write the best model (lowest validation loss) as a normal checkpoint directory.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoobot_pipeline.data.preprocessing import PreprocessingConfig

__all__ = [
    "CHECKPOINT_JSON",
    "AugmentationConfig",
    "Backend",
    "DistributedConfig",
    "FinetuneConfig",
    "FinetuneTask",
    "ModelConfig",
    "TrainingConfig",
    "available_backends",
    "evaluate",
    "finetune",
    "get_backend",
    "load_checkpoint",
    "predict",
    "pretrain",
    "read_checkpoint_json",
    "register_backend",
]

CHECKPOINT_JSON = "checkpoint.json"


class ModelConfig(BaseModel):
    """Architecture of a Zoobot-style model: a named backbone, pooled features, a Dirichlet head over a schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = "efficientnet_b0"
    schema_name: str = "decals_dr5"
    in_channels: int = Field(default=3, ge=1)
    input_size: int = Field(default=224, ge=8)
    dropout_rate: float = Field(default=0.2, ge=0, lt=1)
    drop_path_rate: float = Field(default=0.0, ge=0, lt=1)

    @classmethod
    def from_preprocessing(cls, preprocessing: PreprocessingConfig, **kwargs: Any) -> ModelConfig:
        """A config whose input channels and size match ``preprocessing``'s output."""
        return cls(in_channels=preprocessing.n_channels, input_size=preprocessing.input_size, **kwargs)


class AugmentationConfig(BaseModel):
    """Training-view augmentations that respect galaxy symmetry (orientation and handedness carry no label)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rot90: bool = True
    flip: bool = True
    rotation_degrees: float = Field(default=180.0, ge=0, le=180)
    crop_scale: tuple[float, float] = (0.85, 1.0)

    @model_validator(mode="after")
    def _ordered(self) -> AugmentationConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        return self


class TrainingConfig(BaseModel):
    """Optimisation settings: AdamW, a per-step LR schedule, early stopping on validation loss."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=64, ge=1)
    patience: int = Field(default=8, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    augmentation: AugmentationConfig | None = AugmentationConfig()
    num_workers: int = Field(default=0, ge=0)
    device: str = "auto"


FinetuneTask = Literal["classification", "regression", "dirichlet"]


class FinetuneConfig(BaseModel):
    """What to finetune for: a new head on a pretrained encoder, trained on a labels file (``id_str`` + columns).

    ``classification``: one label column (integers or strings; the sorted distinct values are the classes, stored in
    the checkpoint), cross-entropy. ``regression``: one or more float columns, MSE. ``dirichlet``: the vote-count
    columns of another decision tree ``schema_name`` (built-in name or YAML path; ``label_columns`` left empty means
    the tree's label columns), Dirichlet-Multinomial loss. The encoder is frozen except its top ``n_blocks`` blocks
    (``"all"``: none frozen), with layer-wise LR decay ``lr_decay`` from the head down.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: FinetuneTask
    label_columns: tuple[str, ...] = ()
    schema_name: str | None = None
    n_blocks: int | Literal["all"] = 0
    lr_decay: float = Field(default=0.75, gt=0, le=1)
    dropout_rate: float = Field(default=0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _task_fits(self) -> FinetuneConfig:
        if isinstance(self.n_blocks, int) and self.n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0 or 'all', got {self.n_blocks}")
        if self.task == "dirichlet":
            if self.schema_name is None:
                raise ValueError("task 'dirichlet' needs schema_name (a built-in tree or a YAML path)")
        elif self.schema_name is not None:
            raise ValueError(f"schema_name applies only to task 'dirichlet', not {self.task!r}")
        if self.task == "classification" and len(self.label_columns) != 1:
            raise ValueError(f"task 'classification' needs exactly one label column, got {list(self.label_columns)}")
        if self.task == "regression" and not self.label_columns:
            raise ValueError("task 'regression' needs at least one label column")
        return self


class DistributedConfig(BaseModel):
    """Where training runs: ``workers == 1`` without ``ray_address`` is in-process; otherwise Ray Train.

    ``ray_address`` joins a running cluster (``ray.init(address=...)``); without it a local cluster is started.
    ``storage_path`` keeps Ray's run directories (checkpoints with optimizer state); it must be shared by every node
    of a multi-node cluster and defaults to ``<out_dir>.ray`` beside the output. ``resume_from`` is a training-state
    checkpoint of an earlier run (a ``checkpoint_*`` directory under its storage path) to continue from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    ray_address: str | None = None
    max_failures: int = Field(default=2, ge=0)
    storage_path: str | None = None
    resume_from: str | None = None

    @property
    def uses_ray(self) -> bool:
        """Whether this runs as a Ray Train job rather than in this process."""
        return self.workers > 1 or self.ray_address is not None


@runtime_checkable
class Backend(Protocol):
    """What a training framework provides to the rest of the pipeline."""

    name: str

    def pretrain(self, release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
                 model_config: ModelConfig, training_config: TrainingConfig, preprocessing: PreprocessingConfig,
                 distributed: DistributedConfig, quiet: bool = True) -> Path:
        """Train on a release's voted galaxies; return the best checkpoint's directory."""
        ...

    def finetune(self, checkpoint_dir: str | Path | None, release_dir: str | Path, labels_path: str | Path,
                 out_dir: str | Path, finetune_config: FinetuneConfig, training_config: TrainingConfig,
                 model_config: ModelConfig | None, preprocessing: PreprocessingConfig | None,
                 distributed: DistributedConfig, quiet: bool = True) -> Path:
        """Finetune a checkpoint's encoder (or a fresh ``model_config`` one) on a labels file; return the best
        checkpoint's directory."""
        ...

    def predict(self, checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None,
                batch_size: int = 64) -> pa.Table:
        """Predictions of a checkpoint for a release's sources (or only ``ids``)."""
        ...

    def evaluate(self, checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
                 ids: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, float]:
        """The checkpoint's loss (and accuracy or RMSE) on labelled galaxies of a release."""
        ...

    def load_checkpoint(self, path: str | Path) -> Any:
        """Rebuild a trained model from a checkpoint directory."""
        ...

    def export_onnx(self, checkpoint_dir: str | Path, onnx_path: str | Path) -> Any:
        """Write the checkpoint as one ONNX graph with the inputs and outputs described in
        :mod:`zoobot_pipeline.export.graph`; return its :class:`~zoobot_pipeline.export.graph.ExportedGraph`."""
        ...


_BACKENDS: dict[str, str | Backend] = {"torch": "zoobot_pipeline.models.torch.backend:BACKEND"}


def register_backend(name: str, backend: str | Backend) -> None:
    """Register a backend object, or a lazy ``"module:attribute"`` reference to one, under ``name``."""
    _BACKENDS[name] = backend


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend` (a backend may still fail to import if its framework is missing)."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, importing its module on first use."""
    try:
        entry = _BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; available: {', '.join(available_backends())}") from None
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
        _BACKENDS[name] = entry
    return entry


def read_checkpoint_json(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory (plain JSON; no weights are read)."""
    meta_path = Path(path) / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a checkpoint directory (no {CHECKPOINT_JSON})")
    return json.loads(meta_path.read_text())


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint with the backend named in its ``checkpoint.json``."""
    return get_backend(read_checkpoint_json(path)["framework"]["name"]).load_checkpoint(path)


def pretrain(release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
             model_config: ModelConfig | None = None, training_config: TrainingConfig | None = None,
             preprocessing: PreprocessingConfig | None = None, *, workers: int = 1, gpus_per_worker: float = 0.0,
             cpus_per_worker: float = 1.0, ray_address: str | None = None, max_failures: int = 2,
             storage_path: str | Path | None = None, resume_from: str | Path | None = None, quiet: bool = True,
             backend: str = "torch") -> Path:
    """Pretrain a Zoobot-style model on a release's voted galaxies; returns ``out_dir`` (the best checkpoint).

    ``preprocessing`` defaults to the GZ DECaLS convention at the model's input size; ``model_config`` to one matching
    ``preprocessing``. See :class:`DistributedConfig` for the distributed options.
    """
    if preprocessing is None:
        size = model_config.input_size if model_config is not None else 224
        preprocessing = PreprocessingConfig.gz_decals(input_size=size)
    model_config = model_config or ModelConfig.from_preprocessing(preprocessing)
    distributed = DistributedConfig(workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                    ray_address=ray_address, max_failures=max_failures,
                                    storage_path=_optional_str(storage_path), resume_from=_optional_str(resume_from))
    return get_backend(backend).pretrain(release_dir, votes_path, out_dir, model_config,
                                         training_config or TrainingConfig(), preprocessing, distributed, quiet)


def finetune(checkpoint_dir: str | Path | None, release_dir: str | Path, labels_path: str | Path,
             out_dir: str | Path, finetune_config: FinetuneConfig, training_config: TrainingConfig | None = None, *,
             model_config: ModelConfig | None = None, preprocessing: PreprocessingConfig | None = None,
             workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
             ray_address: str | None = None, max_failures: int = 2, storage_path: str | Path | None = None,
             resume_from: str | Path | None = None, quiet: bool = True, backend: str = "torch") -> Path:
    """Finetune a pretrained checkpoint on a labels file (``id_str`` + label columns); returns ``out_dir``.

    The finetuned model is written as a checkpoint of kind ``"finetuned"`` that :func:`load_checkpoint`,
    :func:`predict` and :func:`evaluate` read. With ``checkpoint_dir=None`` the same head trains on a randomly
    initialised encoder built from ``model_config`` (every block trainable at ``lr``): the from-scratch baseline.
    Preprocessing is the checkpoint's; from scratch it is ``preprocessing`` (default GZ DECaLS at the model's size).
    """
    distributed = DistributedConfig(workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                    ray_address=ray_address, max_failures=max_failures,
                                    storage_path=_optional_str(storage_path), resume_from=_optional_str(resume_from))
    return get_backend(backend).finetune(checkpoint_dir, release_dir, labels_path, out_dir, finetune_config,
                                         training_config or TrainingConfig(), model_config, preprocessing,
                                         distributed, quiet)


def predict(checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None, *,
            batch_size: int = 64) -> pa.Table:
    """Predictions of a checkpoint for a release's sources (or only ``ids``), one row per usable cutout.

    Columns: ``id_str``, then for classification ``predicted`` (class name) and ``p_{class}``; for regression one
    column per label; for a decision tree ``{label_col}_fraction`` (expected vote fractions, dropout off) and
    ``{label_col}_concentration``.
    """
    backend = get_backend(read_checkpoint_json(checkpoint_dir)["framework"]["name"])
    return backend.predict(checkpoint_dir, release_dir, ids, batch_size)


def evaluate(checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
             ids: Sequence[str] | None = None, *, batch_size: int = 64) -> dict[str, float]:
    """A finetuned checkpoint's mean loss on labelled galaxies (all in ``labels_path``, or only ``ids``), with
    ``accuracy`` for classification and ``rmse`` for regression; ``n`` counts the galaxies scored."""
    backend = get_backend(read_checkpoint_json(checkpoint_dir)["framework"]["name"])
    return backend.evaluate(checkpoint_dir, release_dir, labels_path, ids, batch_size)


def _optional_str(value: str | Path | None) -> str | None:
    return None if value is None else str(value)
