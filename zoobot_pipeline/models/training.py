"""The public training entry points: :func:`pretrain`, :func:`finetune`, :func:`predict`, :func:`evaluate` and
:func:`load_checkpoint`, for any registered backend.

:func:`pretrain` and :func:`finetune` plan and check the job without the framework (:mod:`.job`), ask the backend to
refuse devices it cannot use, then train in this process when ``workers == 1`` and no ``ray_address`` is given, and as
a Ray Train job otherwise; both write the best model (lowest validation loss) as a normal checkpoint directory.
Before any of that, both check the output directory (:func:`_check_output`): it must not be a file, nor overlap the
release or the base checkpoint, and an existing non-empty directory must be an earlier checkpoint unless
``overwrite``; even then only the checkpoint's own files are replaced.
:func:`predict`, :func:`evaluate` and :func:`load_checkpoint` use the backend recorded in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import prepare_output_dir
from zoobot_pipeline.models.backend import Backend, checkpoint_backend, get_backend
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON, read_checkpoint_json
from zoobot_pipeline.models.config import (
    DistributedConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    default_preprocessing,
)
from zoobot_pipeline.models.job import check_distributed, finetune_job, pretrain_job

__all__ = ["evaluate", "finetune", "load_checkpoint", "predict", "pretrain"]


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint with the backend named in its ``checkpoint.json``."""
    return checkpoint_backend(path).load_checkpoint(path)


def pretrain(release_dir: str | Path, votes_path: str | Path, out_dir: str | Path,
             model_config: ModelConfig | None = None, training_config: TrainingConfig | None = None,
             preprocessing: PreprocessingConfig | None = None, *, workers: int = 1, gpus_per_worker: float = 0.0,
             cpus_per_worker: float = 1.0, ray_address: str | None = None, max_failures: int = 2,
             storage_path: str | Path | None = None, resume_from: str | Path | None = None,
             keep_run_dir: bool = False, quiet: bool = True, framework: str = "torch", overwrite: bool = False) -> Path:
    """Pretrain a Zoobot-style model on a release's voted galaxies; returns ``out_dir`` (the best checkpoint).

    ``framework`` names the backend that trains (``torch`` or ``tensorflow``, :func:`available_backends`).
    ``preprocessing`` defaults to the GZ DECaLS convention at the model's input size; ``model_config`` to one matching
    ``preprocessing``. See :class:`DistributedConfig` for the distributed options (``keep_run_dir`` among them).
    ``out_dir`` may be an earlier checkpoint (replaced); another non-empty directory only with ``overwrite`` (only
    the checkpoint's files are replaced, the rest is kept).
    """
    distributed = _distributed(workers, gpus_per_worker, cpus_per_worker, ray_address, max_failures, storage_path,
                               resume_from, keep_run_dir)
    _check_output(out_dir, distributed, overwrite, [release_dir])
    preprocessing = preprocessing or default_preprocessing(model_config)
    model_config = model_config or ModelConfig.from_preprocessing(preprocessing)
    training_config = training_config or TrainingConfig()
    chosen = _checked_backend(framework, training_config, distributed)
    chosen.check_model(model_config)
    job = pretrain_job(release_dir, votes_path, model_config, training_config, preprocessing)
    return chosen.train(job, out_dir, distributed, quiet)


def finetune(checkpoint_dir: str | Path | None, release_dir: str | Path, labels_path: str | Path,
             out_dir: str | Path, finetune_config: FinetuneConfig, training_config: TrainingConfig | None = None, *,
             model_config: ModelConfig | None = None, preprocessing: PreprocessingConfig | None = None,
             workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
             ray_address: str | None = None, max_failures: int = 2, storage_path: str | Path | None = None,
             resume_from: str | Path | None = None, keep_run_dir: bool = False, quiet: bool = True,
             framework: str | None = None, overwrite: bool = False) -> Path:
    """Finetune a pretrained checkpoint on a labels file (``id_str`` + label columns); returns ``out_dir``.

    The finetuned model is written as a checkpoint of kind ``"finetuned"`` that :func:`load_checkpoint`,
    :func:`predict` and :func:`evaluate` read. With ``checkpoint_dir=None`` the same head trains on a randomly
    initialised encoder built from ``model_config`` (every block trainable at ``lr``): the from-scratch baseline.
    Preprocessing is the checkpoint's; from scratch it is ``preprocessing`` (default GZ DECaLS at the model's size).
    ``out_dir`` and ``overwrite`` as for :func:`pretrain`; it must not overlap ``checkpoint_dir`` either.
    ``framework`` defaults to the checkpoint's (another one is an error), from scratch to ``torch``.
    """
    distributed = _distributed(workers, gpus_per_worker, cpus_per_worker, ray_address, max_failures, storage_path,
                               resume_from, keep_run_dir)
    _check_output(out_dir, distributed, overwrite,
                  [release_dir] if checkpoint_dir is None else [release_dir, checkpoint_dir])
    training_config = training_config or TrainingConfig()
    chosen = _checked_backend(_finetune_framework(checkpoint_dir, framework), training_config, distributed)
    if model_config is not None and checkpoint_dir is None:
        chosen.check_model(model_config)
    job = finetune_job(checkpoint_dir, release_dir, labels_path, finetune_config, training_config, model_config,
                       preprocessing)
    return chosen.train(job, out_dir, distributed, quiet)


def predict(checkpoint_dir: str | Path, release_dir: str | Path, ids: Sequence[str] | None = None, *,
            batch_size: int = 64) -> pa.Table:
    """Predictions of a checkpoint for a release's sources (or only ``ids``), one row per usable cutout.

    Columns: ``id_str``, then for classification ``predicted`` (class name) and ``p_{class}``; for regression one
    column per label; for a decision tree ``{label_col}_fraction`` (expected vote fractions, dropout off) and
    ``{label_col}_concentration``.
    """
    return checkpoint_backend(checkpoint_dir).predict(checkpoint_dir, release_dir, ids, batch_size)


def evaluate(checkpoint_dir: str | Path, release_dir: str | Path, labels_path: str | Path,
             ids: Sequence[str] | None = None, *, batch_size: int = 64) -> dict[str, Any]:
    """A checkpoint's metrics on labelled galaxies of a release (all in ``labels_path``, or only ``ids``); ``n``
    counts the galaxies scored (those with a usable cutout) and ``loss`` is the mean training loss.

    A finetuned checkpoint reads finetuning labels and adds ``accuracy`` (classification) or ``rmse`` (regression).
    A pretrained checkpoint reads a votes catalogue of its decision tree; it, and a finetuned one on a new tree, add
    ``questions`` (per question over the galaxies asked it: ``n_asked``, mean Dirichlet-Multinomial ``nll`` and
    ``fraction_mae``, the mean absolute error of expected against volunteer vote fractions) and ``calibration``
    (reliability of predicted fractions in 10 bins: ``edges``, ``count``, mean ``predicted`` and ``observed``, and the
    ``calibration_error``); see :func:`zoobot_pipeline.stats.vote_fraction_metrics`. Values are plain numbers, lists
    and None (JSON-ready).
    """
    return checkpoint_backend(checkpoint_dir).evaluate(checkpoint_dir, release_dir, labels_path, ids, batch_size)


def _distributed(workers: int, gpus_per_worker: float, cpus_per_worker: float, ray_address: str | None,
                 max_failures: int, storage_path: str | Path | None,
                 resume_from: str | Path | None, keep_run_dir: bool = False) -> DistributedConfig:
    return DistributedConfig(workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                             ray_address=ray_address, max_failures=max_failures,
                             storage_path=None if storage_path is None else str(storage_path),
                             resume_from=None if resume_from is None else str(resume_from),
                             keep_run_dir=keep_run_dir)


def _check_output(out_dir: str | Path, distributed: DistributedConfig, overwrite: bool,
                  inputs: Sequence[str | Path]) -> None:
    """Refuse, before any work, an ``out_dir`` that is a file, overlaps one of ``inputs`` (the release, the base
    checkpoint; the labels file's folder may hold it) or is a non-empty directory other than an earlier checkpoint
    (unless ``overwrite``); with Ray, also a run directory (``storage_path``, default ``<out_dir>.ray``) that is a
    file or overlaps an input."""
    prepare_output_dir(out_dir, marker=CHECKPOINT_JSON, what="checkpoint", overwrite=overwrite, inputs=inputs)
    if distributed.uses_ray:
        storage = distributed.storage_path or f"{Path(out_dir).resolve()}.ray"
        # Ray keeps adding run directories there (and resumes from them): only a file or an overlap is refused
        prepare_output_dir(storage, marker=CHECKPOINT_JSON, what="Ray run directory", overwrite=True, inputs=inputs)


def _finetune_framework(checkpoint_dir: str | Path | None, framework: str | None) -> str:
    """The framework a finetuning job trains with: the checkpoint's (``framework`` may only repeat it), or
    ``framework`` (default torch) from scratch."""
    if checkpoint_dir is None:
        return framework or "torch"
    recorded = read_checkpoint_json(checkpoint_dir)["framework"]["name"]
    if framework is not None and framework != recorded:
        raise ZoobotPipelineError(f"framework {framework!r}: {checkpoint_dir} is a {recorded} checkpoint and "
                                  f"finetuning keeps its framework; leave framework out or give {recorded!r}")
    return recorded


def _checked_backend(name: str, training: TrainingConfig, distributed: DistributedConfig) -> Backend:
    check_distributed(training, distributed)
    backend = get_backend(name)
    backend.check_devices(distributed)
    return backend
