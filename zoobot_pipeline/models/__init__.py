"""Models: framework-free configuration, the registry of training backends and the public training entry points.

- :mod:`.config`: model, augmentation, training, finetuning and distribution configs (pydantic).
- :mod:`.backend`: the :class:`Backend` protocol, :class:`ExportedGraph` and the registry (``get_backend("torch")``).
- :mod:`.checkpoint`: ``checkpoint.json``, the framework-free half of a checkpoint directory.
- :mod:`.labels`, :mod:`.images`, :mod:`.job`: finetuning labels, labelled images in memory, checked training jobs.
- :mod:`.training`: :func:`pretrain`, :func:`finetune`, :func:`predict`, :func:`evaluate`, :func:`load_checkpoint`.
- ``models/torch/``: everything that needs PyTorch (imported only when the ``torch`` backend is first used).
- ``models/tensorflow/``: everything that needs TensorFlow/Keras (imported only when the ``tensorflow`` backend is
  first used).

Nothing here imports a training framework.
"""

from zoobot_pipeline.models.backend import (
    Backend,
    ExportedGraph,
    available_backends,
    checkpoint_backend,
    get_backend,
    register_backend,
)
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON, read_checkpoint_json
from zoobot_pipeline.models.config import (
    FINETUNE_TASKS,
    AugmentationConfig,
    DistributedConfig,
    FinetuneConfig,
    FinetuneTask,
    ModelConfig,
    TrainingConfig,
    default_preprocessing,
)
from zoobot_pipeline.models.training import evaluate, finetune, load_checkpoint, predict, pretrain

__all__ = [
    "CHECKPOINT_JSON",
    "FINETUNE_TASKS",
    "AugmentationConfig",
    "Backend",
    "DistributedConfig",
    "ExportedGraph",
    "FinetuneConfig",
    "FinetuneTask",
    "ModelConfig",
    "TrainingConfig",
    "available_backends",
    "checkpoint_backend",
    "default_preprocessing",
    "evaluate",
    "finetune",
    "get_backend",
    "load_checkpoint",
    "predict",
    "pretrain",
    "read_checkpoint_json",
    "register_backend",
]
