"""ONNX export of a torch checkpoint: the encoder once, then the head over ``S`` dropout masks given as an input.

The exported graph takes ``images`` ``(B, C, H, W)`` and ``dropout_mask`` ``(B, S, F)`` and returns ``outputs``
``(B, S, n_outputs)`` (Dirichlet concentrations, class probabilities or regression values) and ``features``
``(B, F)`` (the pooled representation). Multiplying the pooled features by a mask of zeros and ``1 / (1 - p)`` is
exactly what inverted dropout does, so ``S`` masks give the distribution of ``S`` stochastic forward passes while the
encoder runs once; a mask of ones is the deterministic (eval-mode) prediction. The graph itself holds no random
operation, so onnxruntime's optimiser cannot drop it and the same masks always give the same numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import timm
import torch
from torch import nn

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.backend import ExportedGraph
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel
from zoobot_pipeline.models.torch.model import CONCENTRATION_RANGE, DirichletHead

__all__ = ["MaskedHeadGraph", "export_onnx"]

OPSET = 18


class MaskedHeadGraph(nn.Module):
    """Encoder, then a linear head over ``S`` masked copies of the features, then the task's activation."""

    def __init__(self, encoder: nn.Module, linear: nn.Linear, task: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = linear
        self.task = task

    def forward(self, images: torch.Tensor, dropout_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(images)
        logits = self.linear(features.unsqueeze(1) * dropout_mask)
        if self.task == "dirichlet":
            low, high = CONCENTRATION_RANGE
            return low + (high - low) * torch.sigmoid(logits), features
        if self.task == "classification":
            return torch.softmax(logits, dim=-1), features
        return logits, features


def _head_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear, float, str]:
    """(encoder, linear layer, dropout rate, task) of a pretrained or finetuned model."""
    if isinstance(model, FinetuneModel):
        head = model.head
        if isinstance(head, DirichletHead):
            return model.encoder, head.linear, head.dropout_rate, model.task
        dropout, linear = head[0], head[1]
        return model.encoder, linear, float(dropout.p), model.task
    return model.encoder, model.head.linear, model.head.dropout_rate, "dirichlet"


def export_onnx(checkpoint_dir: str | Path, onnx_path: str | Path) -> ExportedGraph:
    """Export a checkpoint to one self-contained ``onnx_path``; returns its description and a torch reference."""
    meta = read_checkpoint_json(checkpoint_dir)
    model = load_checkpoint(checkpoint_dir).eval()
    encoder, linear, dropout_rate, task = _head_parts(model)
    graph = MaskedHeadGraph(encoder, linear, task).eval()
    preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
    n_features = linear.in_features
    size = preprocessing.input_size
    example = (torch.rand(2, preprocessing.n_channels, size, size), torch.ones(2, 3, n_features))
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, example, dynamo=True, external_data=False, opset_version=OPSET, verbose=False,
            input_names=["images", "dropout_mask"], output_names=["outputs", "features"],
            dynamic_shapes={"images": {0: batch}, "dropout_mask": {0: batch, 1: samples}},
        )
    onnx.save_model(program.model_proto, str(onnx_path))

    @torch.no_grad()
    def reference(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, features = graph(torch.from_numpy(images), torch.from_numpy(masks))
        return outputs.numpy(), features.numpy()

    return ExportedGraph(
        task=task,
        output_names=tuple(meta["label_cols"]),
        schema=meta["schema"],
        preprocessing=preprocessing,
        n_features=n_features,
        dropout_rate=dropout_rate,
        architecture=meta["model"]["architecture"],
        framework={"name": "torch", "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                   "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)"},
        reference=reference,
    )
