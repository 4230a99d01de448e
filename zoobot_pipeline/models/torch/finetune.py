"""Finetuning a pretrained encoder with a new head: classification, regression or another decision tree.

The encoder is frozen except its top ``n_blocks`` blocks (as listed by :func:`encoder_blocks`); frozen blocks also
stay in eval mode so their batch-norm statistics do not drift. Layer-wise LR decay: the head trains at ``lr`` and
block ``i`` from the top (``i = 0, 1, ...``) at ``lr * lr_decay ** i``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import nn

from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.torch.model import DirichletHead
from zoobot_pipeline.schemas import Schema

__all__ = ["FinetuneModel", "Task", "build_finetune_model", "encoder_blocks", "finetune_loss", "finetune_param_groups"]

Task = Literal["classification", "regression", "dirichlet"]


def encoder_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from the top (nearest the head) down to the stem, for efficientnet, convnext, resnet."""
    if isinstance(backbone, EfficientNet):
        return [nn.ModuleList([backbone.conv_head, backbone.bn2]), *reversed(backbone.blocks),
                nn.ModuleList([backbone.conv_stem, backbone.bn1])]
    if isinstance(backbone, ConvNeXt):
        return [backbone.head, *reversed(backbone.stages), nn.ModuleList([backbone.stem, backbone.norm_pre])]
    if isinstance(backbone, ResNet):
        return [backbone.layer4, backbone.layer3, backbone.layer2, backbone.layer1,
                nn.ModuleList([backbone.conv1, backbone.bn1])]
    raise ValueError(f"no block listing for {type(backbone).__name__}; supported: EfficientNet, ConvNeXt, ResNet")


class FinetuneModel(nn.Module):
    """A pretrained encoder with a new head; ``forward`` gives logits, regression values or concentrations."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: Task, n_blocks: int,
                 schema: Schema | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task
        self.schema = schema
        blocks = encoder_blocks(encoder)
        if not 0 <= n_blocks <= len(blocks):
            raise ValueError(f"n_blocks must be within [0, {len(blocks)}] for {type(encoder).__name__}")
        self.n_blocks = n_blocks
        self.encoder.requires_grad_(False)
        for block in blocks[:n_blocks]:
            block.requires_grad_(True)

    def trainable_blocks(self) -> list[nn.Module]:
        """The unfrozen encoder blocks, top first."""
        return encoder_blocks(self.encoder)[: self.n_blocks]

    def train(self, mode: bool = True) -> FinetuneModel:
        """Set the mode; frozen encoder blocks always stay in eval mode."""
        super().train(mode)
        if mode:
            self.encoder.eval()
            for block in self.trainable_blocks():
                block.train()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_finetune_model(checkpoint_dir: str | Path, task: Task, n_outputs: int | None = None,
                         schema: Schema | None = None, n_blocks: int = 0,
                         dropout_rate: float = 0.2) -> FinetuneModel:
    """A pretrained checkpoint's encoder with a new head.

    ``classification``: ``n_outputs`` classes (2 for binary), cross-entropy on logits. ``regression``: ``n_outputs``
    targets, MSE. ``dirichlet``: a Dirichlet head over ``schema``'s answers, Dirichlet-Multinomial loss.
    """
    encoder = load_checkpoint(checkpoint_dir).backbone
    n_features = encoder.num_features
    if task == "dirichlet":
        if schema is None:
            raise ValueError("task 'dirichlet' needs the new decision tree (schema)")
        head: nn.Module = DirichletHead(n_features, schema.n_answers, dropout_rate)
    elif task in ("classification", "regression"):
        if n_outputs is None or n_outputs < 1 or (task == "classification" and n_outputs < 2):
            raise ValueError(f"task {task!r} needs n_outputs (classes >= 2, or regression targets >= 1)")
        head = nn.Sequential(nn.Dropout(dropout_rate), nn.Linear(n_features, n_outputs))
    else:
        raise ValueError(f"unknown task {task!r}; use 'classification', 'regression' or 'dirichlet'")
    return FinetuneModel(encoder, head, task, n_blocks, schema)


def finetune_param_groups(model: FinetuneModel, lr: float, lr_decay: float = 0.75,
                          weight_decay: float = 0.05) -> list[dict]:
    """Optimizer parameter groups: the head at ``lr``, unfrozen block ``i`` from the top at ``lr * lr_decay**i``."""
    groups = [{"params": list(model.head.parameters()), "lr": lr, "weight_decay": weight_decay}]
    for i, block in enumerate(model.trainable_blocks()):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * lr_decay**i, "weight_decay": weight_decay})
    return groups


def finetune_loss(model: FinetuneModel, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The task's loss: cross-entropy (class indices), MSE, or Dirichlet-Multinomial (vote counts)."""
    if model.task == "classification":
        return F.cross_entropy(outputs, targets.long())
    if model.task == "regression":
        return F.mse_loss(outputs, targets.to(outputs.dtype).reshape(outputs.shape))
    return dirichlet_multinomial_loss(targets, outputs, model.schema)
