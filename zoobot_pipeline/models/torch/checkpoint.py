"""Checkpoints that never unpickle: weights in safetensors, everything else in ``checkpoint.json``.

A checkpoint directory holds ``model.safetensors`` and ``checkpoint.json`` (kind, model config, schema tree and label
columns, preprocessing, training config, metrics, framework versions and the weights' sha256). Kind ``"pretrained"``
is a :class:`ZoobotModel`; kind ``"finetuned"`` a :class:`FinetuneModel`, whose JSON adds the finetuning config, the
class names and (for a new decision tree) its schema, with ``"model"`` describing the encoder's architecture. It is
written into a temporary directory beside the destination and renamed into place, so readers see all of it or none;
other files in the destination (a user's, with ``--overwrite``) are kept, and only :data:`CHECKPOINT_FILES` replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors
import timm
import torch
from safetensors.torch import load_file, save_file

from zoobot_pipeline._version import __version__
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.checkpoint import (
    CHECKPOINT_FILES,
    CHECKPOINT_FORMAT,
    CHECKPOINT_JSON,
    WEIGHTS_FILE,
    read_checkpoint_json,
    weights_path,
    write_checkpoint,
)
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.finetune import FinetuneModel, finetune_head
from zoobot_pipeline.models.torch.model import ZoobotModel, check_architecture, create_backbone
from zoobot_pipeline.schemas import schema_from_dict

__all__ = ["CHECKPOINT_FILES", "CHECKPOINT_FORMAT", "FRAMEWORK", "WEIGHTS_FILE", "framework_versions",
           "load_checkpoint", "save_checkpoint"]

FRAMEWORK = "torch"
_LEGACY_PREFIXES = {"backbone.": "encoder.", "dirichlet_head.": "head."}


def framework_versions() -> dict[str, str]:
    """``checkpoint.json``'s ``framework`` entry."""
    return {"name": FRAMEWORK, "torch": torch.__version__, "timm": timm.__version__,
            "safetensors": safetensors.__version__, "zoobot_pipeline": __version__}


def _model_meta(model: ZoobotModel | FinetuneModel) -> dict[str, Any]:
    if isinstance(model, FinetuneModel):
        return {"kind": "finetuned", "model": model.base_config.model_dump(mode="json"),
                "finetune": model.config.model_dump(mode="json"),
                "class_names": list(model.class_names) if model.class_names is not None else None,
                "schema": model.schema.to_dict() if model.schema is not None else None,
                "label_cols": list(model.output_names)}
    return {"kind": "pretrained", "model": model.config.model_dump(mode="json"), "schema": model.schema.to_dict(),
            "label_cols": model.schema.label_cols}


def save_checkpoint(model: ZoobotModel | FinetuneModel, directory: str | Path, preprocessing: PreprocessingConfig,
                    training_config: TrainingConfig | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (pretrained or finetuned) and its metadata to ``directory`` atomically; returns the directory.
    Other files already in ``directory`` are kept; whether it may be written at all is the caller's check (see
    :func:`~zoobot_pipeline.models.checkpoint.write_checkpoint`)."""
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}

    def write_weights(path: Path) -> None:
        save_file(weights, str(path), metadata={"format": CHECKPOINT_FORMAT})

    return write_checkpoint(directory, write_weights, _model_meta(model), framework_versions(), preprocessing,
                            training_config, metrics)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> ZoobotModel | FinetuneModel:
    """Rebuild the model described by ``checkpoint.json`` and load its safetensors weights; returns it in eval mode.

    A ``"pretrained"`` checkpoint gives a :class:`ZoobotModel`, a ``"finetuned"`` one a :class:`FinetuneModel`. Before
    torch reads anything, the weights file is checked (:func:`~zoobot_pipeline.models.checkpoint.weights_path`: inside
    the directory, the recorded sha256, a safetensors file) and timm must know the architecture; weights that do not
    fit the architecture are an input error naming the files.
    """
    directory = Path(directory)
    meta = read_checkpoint_json(directory)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ZoobotPipelineError(f"{directory}: unsupported checkpoint format {meta.get('format')!r}")
    weights = weights_path(directory, meta)
    source = str(directory / CHECKPOINT_JSON)
    schema = schema_from_dict(meta["schema"], source=source) if meta["schema"] is not None else None
    config = ModelConfig.model_validate(meta["model"])
    model: ZoobotModel | FinetuneModel
    if meta.get("kind", "pretrained") == "finetuned":
        finetune_config = FinetuneConfig.model_validate(meta["finetune"])
        encoder = create_backbone(config, f"{source} (model.architecture)")
        head = finetune_head(finetune_config, encoder.num_features, schema, meta["class_names"])
        model = FinetuneModel(encoder, head, finetune_config, config, schema, meta["class_names"])
    else:
        check_architecture(config.architecture, f"{source} (model.architecture)")
        model = ZoobotModel(config, schema)
    try:
        model.load_state_dict(_current_names(load_file(str(weights), device=str(map_location))))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ZoobotPipelineError(f"{weights}: the weights do not fit the model that {source} describes "
                                  f"({config.architecture}): {first}") from None
    return model.eval()


def _current_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of pretrained checkpoints written before ``ZoobotModel`` named its parts ``encoder`` and ``head``
    (``backbone.*``, ``dirichlet_head.*``) under today's names; others unchanged."""
    renamed = {}
    for name, tensor in weights.items():
        for old, new in _LEGACY_PREFIXES.items():
            if name.startswith(old):
                name = new + name.removeprefix(old)
        renamed[name] = tensor
    return renamed
