"""Per-epoch training steps shared by every training path: optimizer, LR schedule, one epoch, evaluation.

Images go to the device in channels_last layout (1.5x faster training on CPU and 1.2x on an H100 for
efficientnet_b0, benchmarks/training_throughput.py). Nothing here is process-global: a local run and each Ray Train
worker call the same functions on their own loader (a worker's shard), and ``loss_sum`` returns sums so that
workers can add theirs before dividing.

Mixed precision (``TrainingConfig.precision``): the forward pass runs under ``torch.autocast`` (bf16 on CPU or CUDA,
fp16 on CUDA only, with a :class:`torch.amp.GradScaler`); the model's outputs are cast to float32 before the loss, so
the Dirichlet-Multinomial lgamma terms never run in half precision. Parameters and optimizer state stay float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.data import DataLoader

from zoobot_pipeline.errors import UnavailableError
from zoobot_pipeline.models.config import TrainingConfig
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.schemas import Schema

__all__ = ["COMPILE_ERRORS", "LossFn", "autocast", "check_precision", "compile_encoder", "compile_failed",
           "evaluate", "float32_loss", "loss_sum", "make_grad_scaler", "make_optimizer", "make_scheduler",
           "per_epoch_schedule", "resolve_device", "schema_loss", "step_epoch_schedule", "train_one_epoch"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_ERRORS: tuple[type[BaseException], ...] = ()
"""What ``torch.compile`` raises when it cannot compile here (filled in on first use: importing dynamo is slow)."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets)``: a scalar, the mean over the batch."""


def schema_loss(schema: Schema) -> LossFn:
    """The pretraining loss: Dirichlet-Multinomial NLL of vote counts, summed over ``schema``'s questions."""
    return lambda concentrations, votes: dirichlet_multinomial_loss(votes, concentrations, schema)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: nn.Module, config: TrainingConfig,
                   param_groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``, or over every trainable parameter at ``config.lr``."""
    params = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule of ``config.schedule``: ``cosine``, ``onecycle`` and ``constant`` are stepped once per batch
    over ``epochs * steps_per_epoch`` steps (they plan for every epoch, whether or not early stopping ends the run
    sooner); ``plateau`` (:class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on the validation loss) is stepped once
    per epoch by :func:`step_epoch_schedule` and needs no plan."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                          patience=config.plateau_patience)
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def per_epoch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> bool:
    """Whether ``scheduler`` is stepped once per epoch on the validation loss (``plateau``), not once per batch."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def step_epoch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler | None, val_loss: float) -> None:
    """End of an epoch: step a per-epoch schedule (``plateau``) with the validation loss; others are left alone."""
    if per_epoch_schedule(scheduler):
        scheduler.step(val_loss)  # type: ignore[union-attr, arg-type]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in: fp16 needs CUDA (use bf16 on a CPU)."""
    if precision == "fp16" and device.type != "cuda":
        raise UnavailableError(f"--precision fp16 needs a CUDA device, training runs on {device.type}; use "
                               "--precision bf16 (CPU or CUDA) or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnavailableError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                               "use --precision fp16 or fp32")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (small gradients would underflow without one); None for fp32 and bf16."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def compile_encoder(model: nn.Module) -> nn.Module:
    """``torch.compile`` the model's encoder in place (:meth:`nn.Module.compile`: its parameter names, and so the
    checkpoints, stay the plain ones); returns ``model``. Compilation happens on the first call: see
    :func:`compile_failed` for its errors."""
    global COMPILE_ERRORS
    import torch._dynamo
    import torch._dynamo.exc
    import torch._inductor.exc

    COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InvalidCxxCompiler,
                      torch._inductor.exc.CppCompileError)
    if not torch._dynamo.is_dynamo_supported():
        raise UnavailableError("--compile: torch.compile is not supported with this Python and torch "
                               f"({torch.__version__}); train without --compile")
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise UnavailableError(f"--compile: {type(model).__name__} has no encoder to compile")
    encoder.compile()
    return model


def compile_failed(err: BaseException) -> UnavailableError | None:
    """The one-line error for ``err`` when it is ``torch.compile`` failing (no C++ compiler, an unsupported
    operation), else None."""
    if not COMPILE_ERRORS or not isinstance(err, COMPILE_ERRORS):
        return None
    cause = getattr(err, "inner_exception", None) or err  # a backend's failure is wrapped in BackendCompilerFailed
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return UnavailableError(f"--compile: torch.compile failed on this machine ({type(cause).__name__}: "
                            f"{first[:300]}); train without --compile")


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, loss_fn: LossFn,
                    device: torch.device | None = None,
                    on_batch: Callable[[], None] | None = None, *, precision: str = "fp32",
                    grad_clip: float | None = None, scaler: torch.amp.GradScaler | None = None) -> tuple[float, int]:
    """One pass over ``loader``; returns ``(sum of per-galaxy losses, number of galaxies)``.

    The forward pass runs in ``precision`` (:func:`autocast`), the loss in float32; with ``scaler`` (fp16) the loss is
    scaled for the backward pass and the gradients unscaled before clipping. ``grad_clip`` clips the L2 norm of all
    trainable parameters' gradients together. A per-batch ``scheduler`` is stepped after each batch; a per-epoch one
    (``plateau``) is left to :func:`step_epoch_schedule`.
    """
    device = device or next(model.parameters()).device
    model.train()
    per_batch = scheduler is not None and not per_epoch_schedule(scheduler)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total, count = 0.0, 0
    for images, targets in loader:
        images = images.to(device, memory_format=torch.channels_last, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(precision, device):
            outputs = model(images)
        loss = float32_loss(loss_fn, outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        if per_batch:
            scheduler.step()  # type: ignore[union-attr]
        total += float(loss.detach()) * len(images)
        count += len(images)
        if on_batch is not None:
            on_batch()
    return total, count


def float32_loss(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` on ``outputs`` cast to float32, with any autocast switched off: the loss never runs in half
    precision."""
    device_type = outputs.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return loss_fn(outputs.float(), targets)
    return loss_fn(outputs.float(), targets)


@torch.no_grad()
def loss_sum(model: nn.Module, loader: DataLoader, loss_fn: LossFn,
             device: torch.device | None = None) -> tuple[float, int]:
    """``(sum of per-galaxy losses, number of galaxies)`` over ``loader`` in eval mode (no dropout). The forward pass
    runs under the caller's autocast (``with autocast(precision, device)``), the loss in float32."""
    device = device or next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device, memory_format=torch.channels_last), targets.to(device)
        total += float(float32_loss(loss_fn, model(images), targets)) * len(images)
        count += len(images)
    return total, count


def evaluate(model: nn.Module, loader: DataLoader, loss_fn: LossFn, device: torch.device | None = None) -> float:
    """Mean loss per galaxy over ``loader`` in eval mode (no dropout)."""
    total, count = loss_sum(model, loader, loss_fn, device)
    return total / max(count, 1)
