"""The framework-free side of a checkpoint directory: ``checkpoint.json`` (kind, configs, schema, preprocessing,
metrics, framework) beside framework-specific weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = ["CHECKPOINT_JSON", "read_checkpoint_json"]

CHECKPOINT_JSON = "checkpoint.json"


def read_checkpoint_json(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory (plain JSON; no weights are read)."""
    meta_path = Path(path) / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a checkpoint directory (no {CHECKPOINT_JSON})")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ZoobotPipelineError(f"{meta_path}: invalid JSON ({err})") from None
