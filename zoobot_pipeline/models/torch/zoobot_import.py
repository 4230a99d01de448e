"""Importing Zoobot checkpoints and encoders with torch: read tensors without running code, rebuild, save.

A Lightning checkpoint is a Python pickle. It is read with ``torch.load(weights_only=True)``, torch's restricted
unpickler, which builds tensors and plain containers only and refuses any other global (a function to call, a class to
build) before calling it; such a file is refused with :class:`~zoobot_pipeline.errors.CheckpointImportError`, never
read another way. An encoder in timm's layout is read from safetensors. What the weights are is decided without torch
(:mod:`zoobot_pipeline.models.zoobot_import`); here the model is built with timm as Zoobot builds it, the weights are
loaded strictly (every weight used, none missing), and the result is written as a normal checkpoint whose
``checkpoint.json`` adds an ``imported`` record (source, format, its sha256, the Zoobot class).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from zoobot_pipeline.errors import CheckpointImportError
from zoobot_pipeline.io import atomic_directory
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON
from zoobot_pipeline.models.torch.checkpoint import CHECKPOINT_FILES, save_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel, finetune_head
from zoobot_pipeline.models.torch.model import ZoobotModel, check_architecture, create_backbone
from zoobot_pipeline.models.zoobot_import import (
    ENCODER_CONFIG,
    ENCODER_WEIGHTS,
    ImportPlan,
    ImportRequest,
    check_output,
    check_request,
    plan_encoder,
    plan_lightning,
    read_encoder_config,
    source_format,
)

__all__ = ["import_zoobot", "read_lightning"]

_BLOCKED = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's restricted unpickler names a global it refused to load (a function or class: code)."""


def read_lightning(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as tensors and plain containers, with a ``state_dict`` of tensors by name.

    Refused (:class:`CheckpointImportError`): a pickle that needs anything else (nothing of it runs), and a file that
    is not a torch checkpoint.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols it did not write
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds on a file it cannot parse
            blocked = _BLOCKED.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
            if blocked is not None:
                raise CheckpointImportError(
                    f"{path}: refused: it needs {blocked.group(1)}, more than tensors and plain containers, and "
                    "unpickling it could run code. If you trust it, load it in Zoobot and save the weights alone: "
                    "torch.save({'state_dict': model.state_dict()}, 'weights.ckpt'), then import that with --task, "
                    "--schema and --architecture") from None
            raise CheckpointImportError(f"{path}: not a checkpoint torch can read ({_reason(err)})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointImportError(f"{path}: no state_dict; expected a Lightning checkpoint of a Zoobot model")
    strange = [name for name, value in state.items() if not isinstance(name, str) or not torch.is_tensor(value)]
    if strange:
        raise CheckpointImportError(f"{path}: state_dict entries {strange[:3]} are not named tensors")
    return checkpoint


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error (its restricted unpickler wraps the cause in advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
    return f"{type(err).__name__}: {cause[:200]}"


def _read_encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointImportError(f"{path}: not a readable safetensors file ({err})") from None


def _build(plan: ImportPlan, source: str) -> ZoobotModel | FinetuneModel:
    check_architecture(plan.model.architecture, source)
    if plan.finetune is None:
        model: ZoobotModel | FinetuneModel = ZoobotModel(plan.model, plan.schema)
        if not plan.has_head:
            torch.nn.init.zeros_(model.head.linear.weight)
        return model
    encoder = create_backbone(plan.model, source)
    head = finetune_head(plan.finetune, encoder.num_features, plan.schema, plan.class_names)
    return FinetuneModel(encoder, head, plan.finetune, plan.model, plan.schema, plan.class_names)


def _load(model: ZoobotModel | FinetuneModel, plan: ImportPlan, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``weights`` under their new names (head rows reordered; a headless encoder keeps the model's head)."""
    renamed = {plan.renames[name]: tensor for name, tensor in weights.items()}
    if plan.head_rows is not None:
        for name in plan.head_names:
            renamed[name] = renamed[name][plan.head_rows]
    if not plan.has_head:
        own = model.state_dict()
        renamed.update({name: own[name] for name in plan.head_names})
    try:
        model.load_state_dict(renamed)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointImportError(f"{path}: the weights do not fit timm's {plan.model.architecture} with "
                                    f"{plan.model.in_channels} input channel(s): {first}") from None


def import_zoobot(request: ImportRequest, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Import a Zoobot Lightning checkpoint or timm-layout encoder into a checkpoint directory; returns it.

    The output is checked before anything is read (:func:`~zoobot_pipeline.models.zoobot_import.check_output`) and
    written atomically; only its checkpoint files are replaced.
    """
    out_dir = Path(out_dir)
    check_request(request)
    check_output(request, out_dir, overwrite)
    path = request.source
    if source_format(path) == "encoder":
        config = read_encoder_config(path)
        weights = _read_encoder_weights(path / ENCODER_WEIGHTS)
        plan = plan_encoder(request, config, weights)
        origin = f"{path / ENCODER_CONFIG} (architecture)"
    else:
        checkpoint = read_lightning(path)
        weights = checkpoint["state_dict"]
        plan = plan_lightning(request, checkpoint.get("hyper_parameters"),
                              {name: tuple(tensor.shape) for name, tensor in weights.items()},
                              checkpoint.get("pytorch-lightning_version"))
        origin = f"{path} (hyper_parameters.architecture_name)"
    model = _build(plan, "--architecture" if request.architecture else origin)
    _load(model, plan, weights, path)
    with atomic_directory(out_dir, own=CHECKPOINT_FILES, marker=CHECKPOINT_JSON) as tmp:
        save_checkpoint(model.eval(), tmp, request.preprocessing)
        meta = json.loads((tmp / CHECKPOINT_JSON).read_text())
        meta["imported"] = plan.imported
        (tmp / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
