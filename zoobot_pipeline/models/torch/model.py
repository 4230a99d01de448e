"""Zoobot-style network: a timm backbone giving pooled features, and a Dirichlet head with MC dropout.

Dropout sits only in the head, after pooling, so :meth:`ZoobotModel.head` can draw ``S`` dropout masks over features
encoded once: the same distribution as ``S`` full forward passes with dropout on, at a fraction of the cost.
"""

from __future__ import annotations

import difflib
import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from zoobot_pipeline.errors import UnknownNameError
from zoobot_pipeline.models.config import ModelConfig
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["CONCENTRATION_RANGE", "DirichletHead", "ZoobotModel", "build_model", "check_architecture",
           "create_backbone"]

CONCENTRATION_RANGE = (1.0, 101.0)
# A fresh head predicts concentrations near this value for every answer: a broad Dirichlet, close to the best constant
# model of volunteer votes, instead of sigmoid(0) -> 51 (a confident, uniform prediction that costs tens of nats per
# galaxy and many epochs to unlearn; see benchmarks/learning_evidence.py).
INITIAL_CONCENTRATION = 2.0


_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def check_architecture(name: str, source: str = "--architecture") -> str:
    """``name`` if timm knows the architecture (a pretrained tag such as ``.a1_in1k`` allowed), else an
    :class:`~zoobot_pipeline.errors.UnknownNameError` naming ``source`` (the option or file it came from), with the
    closest names and how to list them all."""
    if name.startswith(_HUB_PREFIXES) or timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownNameError(f"{source}: unknown architecture {name!r}: timm {timm.__version__} has no such model; "
                           f"{hint}list the names with: python -c \"import timm; print(timm.list_models())\"")


def create_backbone(config: ModelConfig, source: str = "architecture") -> nn.Module:
    """A timm model by name without classifier (``num_classes=0``): its forward returns pooled features. An unknown
    name is an :class:`~zoobot_pipeline.errors.UnknownNameError` naming ``source`` (see :func:`check_architecture`)."""
    check_architecture(config.architecture, source)
    return timm.create_model(config.architecture, pretrained=False, num_classes=0, in_chans=config.in_channels,
                             drop_path_rate=config.drop_path_rate)


class DirichletHead(nn.Module):
    """Dropout, a linear layer to one output per answer, then concentrations ``1 + 100 * sigmoid(x)`` in (1, 101).

    The bias starts at ``initial_concentration`` (see :data:`INITIAL_CONCENTRATION`).
    """

    def __init__(self, n_features: int, n_answers: int, dropout_rate: float = 0.2,
                 initial_concentration: float = INITIAL_CONCENTRATION) -> None:
        super().__init__()
        self.dropout_rate = dropout_rate
        self.linear = nn.Linear(n_features, n_answers)
        low, high = CONCENTRATION_RANGE
        nn.init.constant_(self.linear.bias, math.log((initial_concentration - low) / (high - initial_concentration)))

    def forward(self, features: torch.Tensor, mc_samples: int | None = None) -> torch.Tensor:
        """Concentrations ``(batch, n_answers)``, or ``(batch, mc_samples, n_answers)`` from independent masks.

        MC sampling always applies dropout, in train or eval mode; without ``mc_samples`` dropout follows the mode.
        Under autocast (``--precision bf16|fp16``) the head still runs in float32: concentrations near 100 have a
        resolution of 0.5 in bfloat16, too coarse for the Dirichlet-Multinomial loss.
        """
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self.forward(features.float(), mc_samples)
        if mc_samples is None:
            dropped = F.dropout(features, self.dropout_rate, training=self.training)
        else:
            expanded = features.unsqueeze(1).expand(-1, mc_samples, -1)
            dropped = F.dropout(expanded, self.dropout_rate, training=True)
        low, high = CONCENTRATION_RANGE
        return low + (high - low) * torch.sigmoid(self.linear(dropped))


class ZoobotModel(nn.Module):
    """An ``encoder`` (timm backbone, pooled features) and a Dirichlet ``head``, as in
    :class:`~zoobot_pipeline.models.torch.finetune.FinetuneModel`; ``forward`` returns concentrations
    ``(batch, n_answers)``."""

    def __init__(self, config: ModelConfig, schema: Schema) -> None:
        super().__init__()
        if schema.name != config.schema_name and not config.schema_name.endswith((".yaml", ".yml")):
            raise ValueError(f"schema {schema.name!r} does not match the config's {config.schema_name!r}")
        self.config = config
        self.schema = schema
        self.encoder = create_backbone(config)
        self.head = DirichletHead(self.encoder.num_features, schema.n_answers, config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def mc_forward(self, x: torch.Tensor, mc_samples: int) -> torch.Tensor:
        """``mc_samples`` dropout samples of the concentrations, ``(batch, mc_samples, n_answers)``, encoding once."""
        return self.head(self.encoder(x), mc_samples)


def build_model(config: ModelConfig, schema: Schema | None = None) -> ZoobotModel:
    """A freshly initialised model; ``schema`` defaults to ``get_schema(config.schema_name)``."""
    return ZoobotModel(config, schema if schema is not None else get_schema(config.schema_name))
