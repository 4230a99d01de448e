"""Framework-free configuration of models and training runs (pydantic, frozen): what every backend reads."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.runtime.package import TASKS, Task

__all__ = [
    "FINETUNE_TASKS", "PRECISIONS", "SCHEDULES", "AugmentationConfig", "DistributedConfig", "FinetuneConfig",
    "FinetuneTask", "ModelConfig", "Precision", "Schedule", "TrainingConfig", "default_preprocessing",
]

FinetuneTask = Task
FINETUNE_TASKS = TASKS


class ModelConfig(BaseModel):
    """Architecture of a Zoobot-style model: a named backbone, pooled features, a Dirichlet head over a schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = Field(default="efficientnet_b0", min_length=1, max_length=200,
                              pattern=r"^[A-Za-z0-9_.:/-]+$")
    """The backbone: a timm model name for torch; efficientnet_b0, convnext_tiny or test_resnet for tensorflow (the
    backend checks that it can build it: ``Backend.check_model``)."""
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


Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "onecycle", "constant", "plateau"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
SCHEDULES: tuple[str, ...] = get_args(Schedule)


class TrainingConfig(BaseModel):
    """Optimisation settings: AdamW, an LR schedule, early stopping on validation loss, precision and compilation.

    ``schedule``: ``cosine``, ``onecycle`` and ``constant`` are stepped once per batch and plan for all ``epochs``
    (when early stopping ends the run sooner, the LR never reaches the end of its schedule); ``plateau`` multiplies
    the LR by ``plateau_factor`` after ``plateau_patience`` epochs without a lower validation loss (stepped once per
    epoch), so it needs no plan and is the choice for runs that stop early (keep ``plateau_patience`` below
    ``patience``, or the run stops before the LR is lowered).
    ``precision``: ``bf16`` or ``fp16`` run the forward passes under autocast (``fp16`` with a gradient scaler, and on
    CUDA only); parameters, optimizer state, the loss and checkpoints stay float32. ``grad_clip``: the largest L2 norm
    of all gradients together, clipped each step. ``compile``: ``torch.compile`` the encoder (checkpoints keep the
    plain parameter names).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=64, ge=1)
    patience: int = Field(default=8, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    schedule: Schedule = "cosine"
    plateau_patience: int = Field(default=2, ge=0)
    plateau_factor: float = Field(default=0.5, gt=0, lt=1)
    augmentation: AugmentationConfig | None = AugmentationConfig()
    num_workers: int = Field(default=0, ge=0)
    device: str = "auto"
    precision: Precision = "fp32"
    grad_clip: float | None = Field(default=None, gt=0)
    compile: bool = False


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
    ``keep_run_dir``: keep the run's directory under ``storage_path`` after a successful run (to resume from it
    later); by default it is removed once the best model is in the output directory. After a failure it is always
    kept.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    ray_address: str | None = None
    max_failures: int = Field(default=2, ge=0)
    storage_path: str | None = None
    resume_from: str | None = None
    keep_run_dir: bool = False

    @property
    def uses_ray(self) -> bool:
        """Whether this runs as a Ray Train job rather than in this process."""
        return self.workers > 1 or self.ray_address is not None


def default_preprocessing(model_config: ModelConfig | None = None) -> PreprocessingConfig:
    """The GZ DECaLS convention at ``model_config``'s input size (224 px without one): what a run uses unless told."""
    size = model_config.input_size if model_config is not None else ModelConfig.model_fields["input_size"].default
    return PreprocessingConfig.gz_decals(input_size=size)
