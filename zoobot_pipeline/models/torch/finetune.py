"""Finetuning a pretrained encoder with a new head: classification, regression or another decision tree.

The encoder is frozen except its top ``n_blocks`` blocks (as listed by :func:`encoder_blocks`); frozen blocks also
stay in eval mode so their batch-norm statistics do not drift. Layer-wise LR decay: the head trains at ``lr`` and
block ``i`` from the top (``i = 0, 1, ...``) at ``lr * lr_decay ** i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import nn

from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig
from zoobot_pipeline.models.config import FinetuneTask as Task
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.torch.model import DirichletHead
from zoobot_pipeline.schemas import Schema

__all__ = ["FinetuneModel", "Task", "encoder_blocks", "finetune_head", "finetune_loss", "finetune_param_groups"]


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
    """An encoder with a new head; ``forward`` gives class logits, regression values or Dirichlet concentrations.

    ``base_config`` describes the encoder (so a checkpoint can rebuild it), ``config`` the task; ``class_names`` are
    the classes of a classification head, in logit order.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, config: FinetuneConfig, base_config: ModelConfig,
                 schema: Schema | None = None, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.config = config
        self.base_config = base_config
        self.schema = schema
        self.class_names = tuple(class_names) if class_names is not None else None
        blocks = encoder_blocks(encoder)
        n_blocks = len(blocks) if config.n_blocks == "all" else config.n_blocks
        if not 0 <= n_blocks <= len(blocks):
            raise ValueError(f"n_blocks must be within [0, {len(blocks)}] for {type(encoder).__name__}")
        self.n_blocks = n_blocks
        self.encoder.requires_grad_(False)
        for block in blocks[:n_blocks]:
            block.requires_grad_(True)

    @property
    def task(self) -> Task:
        """The finetuning task."""
        return self.config.task

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per output: the classes, the regression columns, or the tree's label columns."""
        if self.class_names is not None:
            return self.class_names
        if self.schema is not None:
            return tuple(self.schema.label_cols)
        return tuple(self.config.label_columns)

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


def finetune_head(config: FinetuneConfig, n_features: int, schema: Schema | None = None,
                  class_names: Sequence[str] | None = None) -> nn.Module:
    """The new head: a Dirichlet head over ``schema``'s answers, or dropout + linear to one output per class or
    regression column."""
    if config.task == "dirichlet":
        if schema is None:
            raise ValueError("task 'dirichlet' needs the new decision tree (schema)")
        return DirichletHead(n_features, schema.n_answers, config.dropout_rate)
    if config.task == "classification":
        if class_names is None or len(class_names) < 2:
            raise ValueError(f"task 'classification' needs at least 2 class names, got {class_names}")
        n_outputs = len(class_names)
    else:
        n_outputs = len(config.label_columns)
    return nn.Sequential(nn.Dropout(config.dropout_rate), nn.Linear(n_features, n_outputs))


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
