"""Framework-free model configuration and the registry of training backends.

Callers pick a backend by name (``get_backend("torch")``) and talk to it through :class:`Backend`; a backend module is
imported only when first asked for, so nothing here imports torch or tensorflow. A checkpoint directory holds
``checkpoint.json`` (configs, schema, metrics, framework) beside framework-specific weights; :func:`load_checkpoint`
reads the framework from the JSON and hands the directory to that backend.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoobot_pipeline.data.preprocessing import PreprocessingConfig

__all__ = [
    "CHECKPOINT_JSON",
    "AugmentationConfig",
    "Backend",
    "ModelConfig",
    "TrainingConfig",
    "available_backends",
    "get_backend",
    "load_checkpoint",
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


@runtime_checkable
class Backend(Protocol):
    """What a training framework provides to the rest of the pipeline."""

    name: str

    def pretrain(self, release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
                 model_config: ModelConfig, training_config: TrainingConfig,
                 preprocessing: PreprocessingConfig) -> Path:
        """Train on a release's voted galaxies; return the best checkpoint's directory."""
        ...

    def load_checkpoint(self, path: str | Path) -> Any:
        """Rebuild a trained model from a checkpoint directory."""
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
