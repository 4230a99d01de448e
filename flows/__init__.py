"""Prefect 3 flows of zoobot-pipeline: orchestration only, every task is one call into :mod:`zoobot_pipeline`.

- :mod:`flows.training`: ``pretrain``, ``finetune``, ``export``.
- :mod:`flows.scoring`: ``score_release``, ``rank_and_queue``.
- :mod:`flows.active_learning`: ``active_learning_cycle``, one task per step of :mod:`zoobot_pipeline.cycle`.
- :mod:`flows.watcher`: ``watch_releases``.
- :mod:`flows.artifacts`: the artifacts the flows leave in the Prefect UI.

Deployments (schedules, work pools) are in ``deploy/prefect.yaml``; see ``deploy/README.md``.
"""

from flows.active_learning import active_learning_cycle
from flows.scoring import rank_and_queue, score_release
from flows.training import export, finetune, pretrain
from flows.watcher import watch_releases

__all__ = ["active_learning_cycle", "export", "finetune", "pretrain", "rank_and_queue", "score_release",
           "watch_releases"]
