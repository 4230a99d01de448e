"""Finetuning a Keras encoder: its blocks, freezing all but the top ``n_blocks``, and the per-block learning rates.

Blocks mirror the torch backend's ``encoder_blocks`` (top first): for ``efficientnet_b0`` the top convolution
(``top_*``), the seven stages (``block7*`` ... ``block1*``) and the stem (``stem_*``), 9 blocks as in timm; for
``convnext_tiny`` the final layer norm, the four stages (stage ``i`` with the downsampling layer in front of it, as
timm counts them) and the stem, 6 blocks; for ``test_resnet`` ``layer4`` ... ``layer1`` and the stem, 5 blocks as
timm's ResNet. Frozen layers get ``trainable = False`` (Keras then also runs their batch norms in inference mode, as
the torch backend keeps frozen blocks in eval mode). Layer-wise LR decay: the head trains at ``lr`` and block ``i``
from the top at ``lr * lr_decay ** i``.
"""

from __future__ import annotations

import re

import keras

from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.tensorflow.model import TFModel

__all__ = ["encoder_blocks", "freeze", "variable_groups"]


def _block_of(architecture: str, name: str) -> str | None:
    """The block a backbone layer belongs to, or None for a layer outside every block."""
    if architecture == "efficientnet_b0":
        match = re.match(r"(top|stem)_|block(\d)[a-z]_", name)
        return None if match is None else (match.group(1) or f"stage{match.group(2)}")
    if architecture == "convnext_tiny":
        if (match := re.match(r"convnext_tiny_stage_(\d)_", name)):
            return f"stage{match.group(1)}"
        if (match := re.match(r"convnext_tiny_downsampling_block_(\d)$", name)):
            return f"stage{int(match.group(1)) + 1}"
        if name == "convnext_tiny_stem":
            return "stem"
        return "top" if not name.startswith("convnext_tiny") else None
    match = re.match(r"(layer\d|stem)_", name)
    return None if match is None else match.group(1)


_ORDER = {"efficientnet_b0": ["top", *(f"stage{i}" for i in range(7, 0, -1)), "stem"],
          "convnext_tiny": ["top", *(f"stage{i}" for i in range(3, -1, -1)), "stem"],
          "test_resnet": [*(f"layer{i}" for i in range(4, 0, -1)), "stem"]}


def encoder_blocks(model: TFModel) -> list[list[keras.Layer]]:
    """The encoder's blocks from the top (nearest the head) down to the stem; every layer with weights is in one."""
    backbone = model.encoder.layers[-1]
    order = _ORDER[model.config.architecture]
    blocks: dict[str, list[keras.Layer]] = {name: [] for name in order}
    for layer in backbone.layers:
        block = _block_of(model.config.architecture, layer.name)
        if block is None:
            if layer.weights:
                raise ValueError(f"{model.config.architecture}: layer {layer.name} has weights but no block")
            continue
        blocks[block].append(layer)
    return [blocks[name] for name in order]


def freeze(model: TFModel, n_blocks: int | str) -> int:
    """Freeze the encoder except its top ``n_blocks`` blocks (``"all"``: none frozen); returns the number unfrozen.
    An out-of-range number is an input error naming ``--n-blocks``."""
    blocks = encoder_blocks(model)
    n = len(blocks) if n_blocks == "all" else int(n_blocks)
    if not 0 <= n <= len(blocks):
        raise ZoobotPipelineError(f"--n-blocks {n_blocks}: must be within [0, {len(blocks)}] for "
                                  f"{model.config.architecture} (or 'all')")
    for i, block in enumerate(blocks):
        for layer in block:
            layer.trainable = i < n
    return n


def variable_groups(model: TFModel, n_unfrozen: int | None, lr_decay: float) -> list[tuple[list, float]]:
    """``(trainable variables, LR multiplier)`` per optimizer group: the whole model at 1 (``n_unfrozen`` None,
    pretraining), or the head at 1 and unfrozen block ``i`` from the top at ``lr_decay ** i``."""
    if n_unfrozen is None:
        return [(list(model.net.trainable_variables), 1.0)]
    groups = [(list(model.dense.trainable_variables), 1.0)]
    for i, block in enumerate(encoder_blocks(model)[:n_unfrozen]):
        variables = [v for layer in block for v in layer.trainable_variables]
        if variables:
            groups.append((variables, lr_decay**i))
    return groups
