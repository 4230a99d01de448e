"""The framework-free side of a checkpoint directory: ``checkpoint.json`` (kind, configs, schema, preprocessing,
metrics, framework) beside framework-specific weights.

:func:`write_checkpoint` writes a directory for a backend, which supplies its weights, what describes its model and
its framework's versions; the rest of ``checkpoint.json`` (format, time, preprocessing, training config, metrics, the
weights' sha256) is the same for every framework.
:func:`read_checkpoint_json` reads it within bounds (size, nesting: :mod:`zoobot_pipeline._safe_load`) and checks
every field the readers of a checkpoint use, so that a damaged or edited file is one
:class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming the file and the field, never a ``KeyError`` later.
:func:`weights_path` is the weights file a framework may load: inside the directory, with the recorded sha256, and a
safetensors file (never a pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from zoobot_pipeline._safe_load import load_json_object
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import atomic_directory, file_sha256, path_inside
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig, TrainingConfig
from zoobot_pipeline.schemas import schema_from_dict

__all__ = ["CHECKPOINT_FILES", "CHECKPOINT_FORMAT", "CHECKPOINT_JSON", "CHECKPOINT_KINDS", "WEIGHTS_FILE",
           "read_checkpoint_json", "weights_path", "write_checkpoint"]

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_KINDS = ("pretrained", "finetuned")
CHECKPOINT_FORMAT = "zoobot-pipeline-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILES = (CHECKPOINT_JSON, WEIGHTS_FILE)
"""The files a checkpoint directory is made of: the only ones :func:`write_checkpoint` replaces."""
_MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit on its JSON header


def _invalid(source: Path, field: str, err: ValidationError) -> ZoobotPipelineError:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())
    return ZoobotPipelineError(f"{source}: {field}: {problems}")


def _check(meta: dict[str, Any], source: Path) -> None:
    """Raise naming ``source`` and the field if ``meta`` lacks a field the readers of a checkpoint use."""
    def problem(text: str) -> ZoobotPipelineError:
        return ZoobotPipelineError(f"{source}: {text}; the checkpoint is damaged or was edited")

    framework = meta.get("framework")
    if not isinstance(framework, dict) or not isinstance(framework.get("name"), str):
        raise problem("framework.name: expected the name of the framework that wrote it (e.g. 'torch')")
    weights = meta.get("weights")
    if not isinstance(weights, dict) or not all(isinstance(weights.get(key), str) for key in ("file", "sha256")):
        raise problem("weights: expected an object with the weights' file name and sha256")
    kind = meta.get("kind", "pretrained")
    if kind not in CHECKPOINT_KINDS:
        raise problem(f"kind: {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}")
    if not isinstance(meta.get("metrics", {}), dict):
        raise problem("metrics: expected an object")
    configs: list[tuple[str, type[BaseModel]]] = [("model", ModelConfig), ("preprocessing", PreprocessingConfig)]
    if kind == "finetuned":
        configs.append(("finetune", FinetuneConfig))
        names = meta.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise problem("class_names: expected a list of class names or null")
    for field, config in configs:
        if not isinstance(meta.get(field), dict):
            raise problem(f"{field}: expected an object")
        try:
            config.model_validate(meta[field])
        except ValidationError as err:
            raise _invalid(source, field, err) from None
    if "schema" not in meta or (meta["schema"] is not None and not isinstance(meta["schema"], dict)):
        raise problem("schema: expected a decision tree ({name, questions}) or null")
    if meta["schema"] is not None:
        schema_from_dict(meta["schema"], source=str(source))


def write_checkpoint(directory: str | Path, write_weights: Callable[[Path], None], model_meta: dict[str, Any],
                     framework: dict[str, Any], preprocessing: PreprocessingConfig,
                     training_config: TrainingConfig | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically; returns it. ``write_weights`` writes the safetensors weights to the
    path it is given; ``model_meta`` (``kind``, ``model``, ``schema``, ...) and ``framework`` (``name`` and versions)
    go into ``checkpoint.json`` as given, in their own key order. The directory is built beside ``directory`` and
    renamed into place, so readers see all of it or none; other files already in ``directory`` are kept and only
    :data:`CHECKPOINT_FILES` replaced (whether it may be written at all is the caller's check:
    :func:`zoobot_pipeline.io.prepare_output_dir`)."""
    directory = Path(directory)
    with atomic_directory(directory, own=CHECKPOINT_FILES, marker=CHECKPOINT_JSON) as tmp:
        write_weights(tmp / WEIGHTS_FILE)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **model_meta,
            "preprocessing": preprocessing.model_dump(mode="json"),
            "training": training_config.model_dump(mode="json") if training_config is not None else None,
            "metrics": metrics or {},
            "framework": framework,
            "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(tmp / WEIGHTS_FILE)},
        }
        (tmp / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_checkpoint_json(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory (plain JSON; no weights are read), checked as the module docstring
    says; ``FileNotFoundError`` if ``path`` has no ``checkpoint.json``."""
    meta_path = Path(path) / CHECKPOINT_JSON
    if not meta_path.is_file():
        if meta_path.exists():
            raise ZoobotPipelineError(f"{meta_path}: not a file; is {path} a checkpoint directory?")
        raise FileNotFoundError(f"{meta_path}: not a checkpoint directory (no {CHECKPOINT_JSON})")
    meta = load_json_object(meta_path, ZoobotPipelineError, CHECKPOINT_JSON)
    _check(meta, meta_path)
    return meta


def weights_path(directory: str | Path, meta: dict[str, Any]) -> Path:
    """The weights file that ``meta`` (the directory's ``checkpoint.json``) names, checked before any framework reads
    it: it lies inside ``directory``, exists, has the sha256 the JSON records, and is a safetensors file (a pickle,
    e.g. ``torch.save`` output, is refused even with a matching sha256: checkpoints are never unpickled)."""
    directory = Path(directory)
    source = directory / CHECKPOINT_JSON
    path = path_inside(directory, meta["weights"]["file"], f"{source} (weights.file)")
    if not path.is_file():
        raise ZoobotPipelineError(f"{path}: listed in {source} (weights.file) but missing")
    if file_sha256(path) != meta["weights"]["sha256"]:
        raise ZoobotPipelineError(f"{path}: sha256 does not match {source}; the weights were modified or damaged")
    problem = _safetensors_problem(path)
    if problem is not None:
        raise ZoobotPipelineError(f"{path}: not a safetensors file ({problem}); zoobot-pipeline never unpickles "
                                  "weights: save them with safetensors")
    return path


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (8-byte little-endian header length, a JSON header whose tensors lie
    inside the file), or None."""
    with open(path, "rb") as handle:
        start = handle.read(8)
        problem = _header_problem(handle, start, path.stat().st_size)
    if problem is not None and (start[:1] == b"\x80" or start[:2] == b"PK"):
        problem += "; it starts like a Python pickle or a torch.save archive"
    return problem


def _header_problem(handle: Any, start: bytes, size: int) -> str | None:
    if len(start) < 8:
        return "shorter than a safetensors header"
    length = int.from_bytes(start, "little")
    if not 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
        return f"header length {length} does not fit a {size}-byte file"
    try:
        entries = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "its header is not JSON"
    if not isinstance(entries, dict):
        return "its header is not a JSON object"
    data = size - 8 - length
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            return f"tensor {name!r} does not lie inside the file"
    return None
