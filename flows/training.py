"""Training flows: ``pretrain``, ``finetune`` and ``export``, each one task around one library call.

Training runs in the task's process when ``workers == 1`` and no ``ray_address`` is given, and as one Ray Train job
otherwise (a local Ray is started when there is no address). Ray Train restarts failed workers itself
(``max_failures``), so the training tasks have no Prefect retries: a retry would start the run again from scratch.
Every output directory appears atomically, so a failed run leaves no half-written checkpoint or package. An existing
``out_dir`` that is not an earlier output of the same flow is refused unless ``overwrite`` (which replaces only the
checkpoint's or package's own files there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, markdown_table, publish_table
from zoobot_pipeline import models
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.export import export_package
from zoobot_pipeline.models import FinetuneConfig, ModelConfig, TrainingConfig
from zoobot_pipeline.runtime.package import ModelPackage, ReducedPrecision

__all__ = ["export", "finetune", "pretrain", "report_checkpoint", "report_package"]

_HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss")


@task(name="pretrain-model", cache_policy=NO_CACHE)
def pretrain_model(release_dir: Path, votes_path: Path, out_dir: Path, options: dict[str, Any]) -> Path:
    """:func:`zoobot_pipeline.models.pretrain`."""
    return models.pretrain(release_dir, votes_path, out_dir, **options)


@task(name="finetune-model", cache_policy=NO_CACHE)
def finetune_model(checkpoint_dir: Path | None, release_dir: Path, labels_path: Path, out_dir: Path,
                   finetune_config: FinetuneConfig, options: dict[str, Any]) -> Path:
    """:func:`zoobot_pipeline.models.finetune`."""
    return models.finetune(checkpoint_dir, release_dir, labels_path, out_dir, finetune_config, **options)


@task(name="export-package", cache_policy=NO_CACHE)
def export_model(checkpoint_dir: Path, out_dir: Path, options: dict[str, Any]) -> Path:
    """:func:`zoobot_pipeline.export.export_package`."""
    return export_package(checkpoint_dir, out_dir, **options)


def _training_options(model: ModelConfig | None, training: TrainingConfig | None,
                      preprocessing: PreprocessingConfig | None, workers: int, gpus_per_worker: float,
                      cpus_per_worker: float, ray_address: str | None, storage_path: Path | None,
                      resume_from: Path | None, framework: str | None, overwrite: bool,
                      keep_run_dir: bool = False) -> dict[str, Any]:
    """The keyword arguments that :func:`zoobot_pipeline.models.pretrain` and :func:`~zoobot_pipeline.models.finetune`
    share, from the parameters the ``pretrain`` and ``finetune`` flows share."""
    return {"model_config": model, "training_config": training, "preprocessing": preprocessing, "workers": workers,
            "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker, "ray_address": ray_address,
            "storage_path": storage_path, "resume_from": resume_from, "keep_run_dir": keep_run_dir,
            "framework": framework, "overwrite": overwrite}


def report_checkpoint(checkpoint: Path, what: str) -> None:
    """Markdown summary and per-epoch history table of a checkpoint's training."""
    meta = models.read_checkpoint_json(checkpoint)
    metrics = meta.get("metrics", {})
    history = metrics.get("history", [])
    key = artifact_key(what, checkpoint.name)
    create_markdown_artifact(
        key=key, description=f"{what}: the best checkpoint",
        markdown=f"# {what}\n\n" + markdown_table(
            [{"checkpoint": str(checkpoint.resolve()), "kind": meta.get("kind", "pretrained"),
              "best epoch": metrics.get("best_epoch"), "best validation loss": metrics.get("best_val_loss"),
              "epochs run": len(history)}],
            ["checkpoint", "kind", "best epoch", "best validation loss", "epochs run"]))
    publish_table(f"{key}-history", history, _HISTORY_COLUMNS, f"{what}: loss per epoch")


@flow(name="pretrain")
def pretrain(release_dir: Path, out_dir: Path, votes_path: Path | None = None, model: ModelConfig | None = None,
             training: TrainingConfig | None = None, preprocessing: PreprocessingConfig | None = None,
             workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
             ray_address: str | None = None, storage_path: Path | None = None, resume_from: Path | None = None,
             framework: str = "torch", overwrite: bool = False, keep_run_dir: bool = False) -> Path:
    """Pretrain a Zoobot-style model on a release's volunteer votes (default ``release_dir/votes.parquet``) into
    ``out_dir`` with ``framework`` (torch or tensorflow); returns the checkpoint directory. ``training`` carries
    precision, gradient clipping, compilation and the schedule; ``keep_run_dir`` keeps a Ray run's directory after
    success."""
    options = _training_options(model, training, preprocessing, workers, gpus_per_worker, cpus_per_worker,
                                ray_address, storage_path, resume_from, framework, overwrite, keep_run_dir)
    checkpoint = pretrain_model(release_dir, votes_path or release_dir / "votes.parquet", out_dir, options)
    report_checkpoint(checkpoint, "pretrain")
    return checkpoint


@flow(name="finetune")
def finetune(checkpoint_dir: Path | None, release_dir: Path, labels_path: Path, out_dir: Path,
             finetune_config: FinetuneConfig, training: TrainingConfig | None = None,
             model: ModelConfig | None = None, preprocessing: PreprocessingConfig | None = None, workers: int = 1,
             gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, ray_address: str | None = None,
             storage_path: Path | None = None, resume_from: Path | None = None, framework: str | None = None,
             overwrite: bool = False, keep_run_dir: bool = False) -> Path:
    """Finetune a pretrained checkpoint (``None``: a fresh encoder from ``model``) on ``labels_path`` into
    ``out_dir``; returns the checkpoint directory (options as for :func:`pretrain`; ``framework`` defaults to the
    checkpoint's, torch from scratch)."""
    options = _training_options(model, training, preprocessing, workers, gpus_per_worker, cpus_per_worker,
                                ray_address, storage_path, resume_from, framework, overwrite, keep_run_dir)
    checkpoint = finetune_model(checkpoint_dir, release_dir, labels_path, out_dir, finetune_config, options)
    report_checkpoint(checkpoint, "finetune")
    return checkpoint


@flow(name="export")
def export(checkpoint_dir: Path, out_dir: Path, mc_samples: int = 5,
           variants: list[ReducedPrecision] | None = None, calibration_release: Path | None = None,
           n_volunteers: int = 40, rtol: float = 1e-4, seed: int = 0, overwrite: bool = False) -> Path:
    """Export a checkpoint to an ONNX model package at ``out_dir`` (checked against the framework); returns it."""
    options = {"mc_samples": mc_samples, "variants": tuple(variants or ()),
               "calibration_release": calibration_release, "n_volunteers": n_volunteers, "rtol": rtol, "seed": seed,
               "overwrite": overwrite}
    package_dir = export_model(checkpoint_dir, out_dir, options)
    report_package(package_dir)
    return package_dir


def report_package(package_dir: Path) -> None:
    """The artifact of an export: the package, its variants and the parity check against the framework."""
    package = ModelPackage.open(package_dir)
    parity = package.meta["variants"]["fp32"]["parity"]
    rows = [{"variant": name, "file": entry["file"], "sha256": entry["sha256"]}
            for name, entry in package.meta["variants"].items()]
    create_markdown_artifact(
        key=artifact_key("export", package_dir.name), description="export: the model package and its checks",
        markdown=f"# Model package\n\n`{package_dir.resolve()}`: {package.task}, {package.mc_samples} MC-dropout "
                 f"samples; onnxruntime matches the framework to {parity['max_rel_diff']:.3g} relative (tolerance "
                 f"{parity['rtol']:g}).\n\n" + markdown_table(rows, ["variant", "file", "sha256"]))
    get_run_logger().info("package %s (sha256 %s)", package_dir, package.sha256)
