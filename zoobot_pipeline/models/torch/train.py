"""Single-process pretraining: per-epoch steps that a distributed worker can call too, and the local entry point.

``train_one_epoch`` and ``evaluate`` take a model, a loader and a schema and nothing process-global, so a Ray Train
worker can run them on its shard. ``fit`` adds AdamW, a per-step LR schedule, early stopping on validation loss and
keeps the best checkpoint (saved on every improvement, so a killed run leaves its best model on disk).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from zoobot_pipeline.data.cutouts import CutoutSizing
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
from zoobot_pipeline.models.torch.data import GalaxyDataset, load_labelled_images, validation_mask
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.torch.model import ZoobotModel, build_model
from zoobot_pipeline.schemas import Schema

__all__ = ["evaluate", "fit", "make_optimizer", "make_scheduler", "pretrain_local", "resolve_device",
           "train_one_epoch"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule stepped once per batch over ``epochs * steps_per_epoch`` steps."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def train_one_epoch(model: ZoobotModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, schema: Schema,
                    device: torch.device | None = None, on_batch: Callable[[], None] | None = None) -> float:
    """One pass over ``loader`` with the Dirichlet-Multinomial loss; returns the mean loss per galaxy."""
    device = device or next(model.parameters()).device
    model.train()
    total, count = 0.0, 0
    for images, votes in loader:
        images, votes = images.to(device, non_blocking=True), votes.to(device, non_blocking=True)
        loss = dirichlet_multinomial_loss(votes, model(images), schema)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(images)
        count += len(images)
        if on_batch is not None:
            on_batch()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: ZoobotModel, loader: DataLoader, schema: Schema, device: torch.device | None = None) -> float:
    """Mean Dirichlet-Multinomial NLL per galaxy (summed over questions) in eval mode (no dropout)."""
    device = device or next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for images, votes in loader:
        images, votes = images.to(device), votes.to(device)
        total += float(dirichlet_multinomial_loss(votes, model(images), schema)) * len(images)
        count += len(images)
    return total / max(count, 1)


@contextmanager
def _progress(quiet: bool, total_steps: int) -> Iterator[Callable[[], None]]:
    if quiet:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task("training", total=total_steps)
        yield lambda: bar.advance(task)


def fit(model: ZoobotModel, train_loader: DataLoader, val_loader: DataLoader, config: TrainingConfig,
        checkpoint_dir: str | Path, preprocessing: PreprocessingConfig, quiet: bool = True,
        extra_metrics: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Train with early stopping; the best model (lowest validation loss) ends up in ``model`` and on disk.

    Returns the history: one ``{"epoch", "train_loss", "val_loss", "lr"}`` per epoch run.
    """
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(model.state_dict())

    def metrics() -> dict[str, Any]:
        return {**(extra_metrics or {}), "best_epoch": best_epoch, "best_val_loss": best_loss, "history": history}

    with _progress(quiet, config.epochs * len(train_loader)) as advance:
        for epoch in range(config.epochs):
            if isinstance(train_loader.dataset, GalaxyDataset):
                train_loader.dataset.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_one_epoch(model, train_loader, optimizer, scheduler, model.schema, device, advance)
            val_loss = evaluate(model, val_loader, model.schema, device)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr})
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
                save_checkpoint(model, checkpoint_dir, preprocessing, config, metrics())
            elif epoch - best_epoch >= config.patience:
                break
    model.load_state_dict(best_state)
    save_checkpoint(model, checkpoint_dir, preprocessing, config, metrics())
    return history


def pretrain_local(release_dir: str | Path, votes_path: str | Path, out_dir: str | Path, model_config: ModelConfig,
                   training_config: TrainingConfig, preprocessing: PreprocessingConfig, *,
                   sizing: CutoutSizing | None = None, quiet: bool = True) -> Path:
    """Pretrain on a release's voted galaxies in this process; returns ``out_dir``, the best checkpoint's directory.

    Galaxies are split into training and validation by a seeded hash of ``id_str``.
    """
    if (model_config.in_channels, model_config.input_size) != (preprocessing.n_channels, preprocessing.input_size):
        raise ValueError(f"model expects {model_config.in_channels} x {model_config.input_size} px input, "
                         f"preprocessing gives {preprocessing.n_channels} x {preprocessing.input_size} px")
    torch.manual_seed(training_config.seed)
    model = build_model(model_config).to(resolve_device(training_config.device))
    data = load_labelled_images(release_dir, votes_path, model.schema, preprocessing, sizing)
    is_val = validation_mask(data.ids, training_config.val_fraction, training_config.seed)
    if is_val.all() or not is_val.any():
        raise ValueError(f"{len(data.ids)} usable galaxies give an empty training or validation split "
                         f"(val_fraction={training_config.val_fraction})")
    train_set = GalaxyDataset(data.subset(~is_val), training_config.augmentation, training_config.seed)
    val_set = GalaxyDataset(data.subset(is_val))
    generator = torch.Generator().manual_seed(training_config.seed)
    batch, workers = training_config.batch_size, training_config.num_workers
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=generator, num_workers=workers,
                              drop_last=len(train_set) > batch)
    val_loader = DataLoader(val_set, batch_size=batch, num_workers=workers)
    summary = {"n_train": len(train_set), "n_val": len(val_set), "n_rejected": data.n_rejected,
               "n_missing": data.n_missing, "release": str(Path(release_dir).resolve())}
    fit(model, train_loader, val_loader, training_config, out_dir, preprocessing, quiet, summary)
    return Path(out_dir)
