"""Training jobs, planned and checked before any framework, data cutting or Ray cluster is touched.

A :class:`TrainingJob` is small and picklable: it is what the driver ships to every Ray Train worker, and each worker
(or the local process) builds its model and data from it. Paths must therefore be readable where the workers run
(a shared filesystem on a multi-node cluster). :func:`pretrain_job` and :func:`finetune_job` check everything that
can be checked up front, whatever the framework: label columns, the overlap of labels with the release, the base
checkpoint, the model's input against the preprocessing, devices against the training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.votes import read_votes
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.config import (
    DistributedConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    default_preprocessing,
)
from zoobot_pipeline.models.labels import check_overlap, finetune_schema, read_finetune_labels
from zoobot_pipeline.schemas import get_schema

__all__ = ["TrainingJob", "check_distributed", "finetune_job", "pretrain_job"]


@dataclass(frozen=True)
class TrainingJob:
    """Pretraining (``model`` set) or finetuning (``finetune`` set, from ``base_checkpoint`` or, without one, from a
    fresh ``model`` encoder); ``labels_path`` holds votes for pretraining, finetuning labels otherwise."""

    kind: Literal["pretrain", "finetune"]
    release_dir: str
    labels_path: str
    training: TrainingConfig
    preprocessing: PreprocessingConfig
    model: ModelConfig | None = None
    finetune: FinetuneConfig | None = None
    base_checkpoint: str | None = None


def check_distributed(training: TrainingConfig, distributed: DistributedConfig) -> None:
    """GPU workers need a training device that can be a GPU."""
    if distributed.gpus_per_worker > 0 and training.device not in ("auto", "cuda"):
        raise ZoobotPipelineError(f"gpus_per_worker > 0 conflicts with training device {training.device!r}")


def _check_input(model_config: ModelConfig, preprocessing: PreprocessingConfig) -> None:
    if (model_config.in_channels, model_config.input_size) != (preprocessing.n_channels, preprocessing.input_size):
        raise ZoobotPipelineError(f"model expects {model_config.in_channels} x {model_config.input_size} px input, "
                                  f"preprocessing gives {preprocessing.n_channels} x {preprocessing.input_size} px")


def pretrain_job(release_dir: str | Path, votes_path: str | Path, model_config: ModelConfig,
                 training: TrainingConfig, preprocessing: PreprocessingConfig) -> TrainingJob:
    """A checked pretraining job: the votes fit the model's tree and overlap the release's sources."""
    _check_input(model_config, preprocessing)
    votes = read_votes(votes_path, get_schema(model_config.schema_name))
    check_overlap(votes.column("id_str").to_pylist(), release_dir)
    return TrainingJob("pretrain", str(release_dir), str(votes_path), training, preprocessing, model=model_config)


def finetune_job(checkpoint_dir: str | Path | None, release_dir: str | Path, labels_path: str | Path,
                 finetune_config: FinetuneConfig, training: TrainingConfig, model_config: ModelConfig | None = None,
                 preprocessing: PreprocessingConfig | None = None) -> TrainingJob:
    """A checked finetuning job. From a checkpoint, the preprocessing is the checkpoint's; without one (the
    from-scratch baseline) it is ``preprocessing`` (default: :func:`default_preprocessing`) and every block trains."""
    if checkpoint_dir is not None:
        meta = read_checkpoint_json(checkpoint_dir)
        if meta.get("kind", "pretrained") != "pretrained":
            raise ZoobotPipelineError(f"{checkpoint_dir}: finetuning starts from a pretrained checkpoint")
        preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
        model_config = None
    else:
        preprocessing = preprocessing or default_preprocessing(model_config)
        model_config = model_config or ModelConfig.from_preprocessing(preprocessing)
        _check_input(model_config, preprocessing)
        finetune_config = finetune_config.model_copy(update={"n_blocks": "all", "lr_decay": 1.0})
    finetune_schema(finetune_config)
    check_overlap(read_finetune_labels(labels_path, finetune_config).ids, release_dir)
    base = None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve())
    return TrainingJob("finetune", str(release_dir), str(labels_path), training, preprocessing, model=model_config,
                       finetune=finetune_config, base_checkpoint=base)
