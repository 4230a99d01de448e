"""zoobot-pipeline: Galaxy Zoo morphology at survey scale.

The public doors, each imported on first use so that ``import zoobot_pipeline`` stays light (no training framework,
no onnxruntime until asked for):

- train: :func:`pretrain`, :func:`finetune`, :func:`predict`, :func:`evaluate`, :func:`load_checkpoint`
  (:mod:`zoobot_pipeline.models`);
- export: :func:`export_package` (:mod:`zoobot_pipeline.export`), :class:`ModelPackage`, :class:`PackageSession`
  (:mod:`zoobot_pipeline.runtime`);
- score: :func:`score_release` (:mod:`zoobot_pipeline.scoring`), :func:`read_catalogue`, :func:`summarize_catalogue`;
- rank and queue: :func:`rank_catalogue`, :func:`write_manifest`, :func:`upload_manifest`, :func:`merge_votes`
  (:mod:`zoobot_pipeline.active`); the whole active-learning cycle: :func:`run_cycle` (:mod:`zoobot_pipeline.cycle`);
- data: :func:`simulate_release`, :class:`Release`, :func:`get_schema`;
- errors: :class:`ZoobotPipelineError`, the base of every bad-input error.

Modules and names starting with ``_`` are internal; so is everything not listed in a module's ``__all__``.
"""

from importlib import import_module
from typing import Any

from zoobot_pipeline._version import __version__

_DOORS = {
    "pretrain": "zoobot_pipeline.models.training",
    "finetune": "zoobot_pipeline.models.training",
    "predict": "zoobot_pipeline.models.training",
    "evaluate": "zoobot_pipeline.models.training",
    "load_checkpoint": "zoobot_pipeline.models.training",
    "export_package": "zoobot_pipeline.export",
    "ModelPackage": "zoobot_pipeline.runtime.package",
    "PackageSession": "zoobot_pipeline.runtime.session",
    "score_release": "zoobot_pipeline.scoring.pipeline",
    "read_catalogue": "zoobot_pipeline.catalogue",
    "summarize_catalogue": "zoobot_pipeline.scoring.summary",
    "rank_catalogue": "zoobot_pipeline.active.ranking",
    "write_manifest": "zoobot_pipeline.active.manifest",
    "upload_manifest": "zoobot_pipeline.active.zooniverse",
    "merge_votes": "zoobot_pipeline.active.votes_merge",
    "run_cycle": "zoobot_pipeline.cycle",
    "simulate_release": "zoobot_pipeline.data.synthetic.simulate",
    "Release": "zoobot_pipeline.data.release",
    "get_schema": "zoobot_pipeline.schemas",
    "ZoobotPipelineError": "zoobot_pipeline.errors",
}

__all__ = ["__version__", *_DOORS]


def __getattr__(name: str) -> Any:
    if name in _DOORS:
        return getattr(import_module(_DOORS[name]), name)
    raise AttributeError(f"module 'zoobot_pipeline' has no attribute {name!r}")
