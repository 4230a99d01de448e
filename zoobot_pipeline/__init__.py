"""zoobot-pipeline: Galaxy Zoo morphology at survey scale.

``zoobot_pipeline.pretrain`` / ``finetune`` / ``predict`` / ``evaluate`` are the training entry points of
:mod:`zoobot_pipeline.models`, imported on first use so that ``import zoobot_pipeline`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("zoobot-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

_MODEL_ENTRY_POINTS = ("pretrain", "finetune", "predict", "evaluate")


def __getattr__(name: str) -> Any:
    if name in _MODEL_ENTRY_POINTS:
        from zoobot_pipeline import models

        return getattr(models, name)
    raise AttributeError(f"module 'zoobot_pipeline' has no attribute {name!r}")
