"""The active-learning cycle: new volunteer votes in, a retrained model and the next queue out.

One cycle per new votes file, identified by the file's sha256: ``WORK/cycle-{sha256[:16]}/`` holds its model, package
and catalogue. The steps, one :class:`Cycle` method each, are skipped (or resumed) when a rerun finds them done, so a
crashed cycle resumes and the same votes file run again does nothing new:

1. :meth:`Cycle.merge`: merge the new votes into the labelled set in place (the labelled file records the sha256 of
   every votes file merged into it, so a file is never counted twice);
2. :meth:`Cycle.train`: finetune on all labelled votes, always from the same start (``RoundConfig.pretrained``, as
   Walmsley et al. 2020 retrain each round, so a model depends only on its labels);
3. :meth:`Cycle.export`: export the ONNX package; 4. :meth:`Cycle.score`: score the pool release (resumable);
5. :meth:`Cycle.rank`: rank into the shared queue directory under the run key ``cycle-{sha256[:16]}`` (skipping
   galaxies with votes and every galaxy an earlier cycle queued; a rerun gets that key's run back, queueing nothing);
6. optionally :func:`switch_package`: point a ``current_package`` symlink at the new package, atomically, so that
   whatever scores new releases picks it up.

:func:`run_cycle` runs them in order, one cycle at a time per work directory (a lock on ``WORK/.cycle.lock``);
``flows.active_learning`` runs each step as its own Prefect task. :func:`train_and_score` is steps 2-4 into a fresh
directory, for experiments that retrain many times (``benchmarks/al_experiment.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from zoobot_pipeline.active.acquisition import get_acquisition
from zoobot_pipeline.active.batch_sampling import check_beta, check_random_fraction, resolve_strategy
from zoobot_pipeline.active.ranking import rank_catalogue
from zoobot_pipeline.active.strata import resolve_strata
from zoobot_pipeline.active.votes_merge import MERGED_KEY, merge_votes
from zoobot_pipeline.catalogue import fraction_column
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.export import export_package
from zoobot_pipeline.io import exclusive_lock, file_sha256
from zoobot_pipeline.models import (
    CHECKPOINT_JSON,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    finetune,
    read_checkpoint_json,
)
from zoobot_pipeline.runtime.package import MODEL_JSON
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.scoring.pipeline import ScoringResult, score_release

__all__ = [
    "LOCK_FILE", "MIN_VOTES", "Cycle", "CycleReport", "Resources", "RoundConfig", "TrainedModel", "run_cycle",
    "switch_package", "train_and_score",
]

LOCK_FILE = ".cycle.lock"
MIN_VOTES = 1
"""A galaxy with this many votes (on the tree's first question) in the labelled set is never queued."""
RANK_OPTIONS = ("sampling", "beta", "random_fraction", "exclude_answers", "stratify_by")
"""The :func:`~zoobot_pipeline.active.ranking.rank_catalogue` options a cycle passes through (``rank_options``)."""


class RoundConfig(BaseModel):
    """How a round trains, exports and scores: start, model, preprocessing, optimisation, MC dropout.

    With ``pretrained`` the encoder, its architecture and its preprocessing are the checkpoint's (``model`` and
    ``preprocessing`` are then unused); without it every block trains from a random start (``n_blocks`` unused) and
    ``preprocessing`` defaults to GZ DECaLS at the model's input size.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pretrained: Path | None = Field(default=None, description="pretrained checkpoint to finetune; None: from scratch")
    model: ModelConfig = ModelConfig()
    preprocessing: PreprocessingConfig | None = None
    training: TrainingConfig = TrainingConfig()
    n_blocks: int | Literal["all"] = Field(default="all", description="unfrozen encoder blocks when finetuning")
    schema_name: str = "decals_dr5"
    mc_samples: int = Field(default=5, ge=1)
    n_volunteers: int = Field(default=40, ge=1, description="votes per galaxy assumed by vote-space MI and entropy")


@dataclass(frozen=True)
class Resources:
    """Where training and scoring run; the defaults: in this process, on the CPU.

    Training uses ``train_workers`` Ray Train workers (1 and no ``ray_address``: in-process), each with
    ``gpus_per_worker`` GPUs. Scoring runs on Ray Data with ``use_ray`` or a ``ray_address`` (``score_workers``
    actors, with ``gpus_per_worker`` GPUs each when ``device`` is not ``"cpu"``).
    """

    train_workers: int = 1
    gpus_per_worker: float = 0.0
    ray_address: str | None = None
    use_ray: bool = False
    score_workers: int | None = None
    device: str = "cpu"


def _finetune(config: RoundConfig, release_dir: Path, labelled_votes: Path, out_dir: Path,
              training: TrainingConfig, resources: Resources) -> Path:
    task = FinetuneConfig(task="dirichlet", schema_name=config.schema_name, n_blocks=config.n_blocks,
                          dropout_rate=config.model.dropout_rate)
    return finetune(config.pretrained, release_dir, labelled_votes, out_dir, task, training,
                    model_config=config.model, preprocessing=config.preprocessing, workers=resources.train_workers,
                    gpus_per_worker=resources.gpus_per_worker, ray_address=resources.ray_address)


def _export(config: RoundConfig, checkpoint: Path, out_dir: Path, seed: int) -> Path:
    return export_package(checkpoint, out_dir, mc_samples=config.mc_samples, n_volunteers=config.n_volunteers,
                          seed=seed)


def _score(release_dir: Path, package: Path, out_dir: Path, seed: int, resources: Resources,
           overwrite: bool) -> ScoringResult:
    gpus = resources.gpus_per_worker if resources.device != "cpu" else 0.0
    return score_release(release_dir, package, out_dir, seed=seed, device=resources.device,
                         use_ray=resources.use_ray, ray_address=resources.ray_address,
                         workers=resources.score_workers, gpus_per_worker=gpus, overwrite=overwrite, progress=False)


@dataclass(frozen=True)
class TrainedModel:
    """What :func:`train_and_score` made: the checkpoint, its package, the release's catalogue, the best epoch, and
    seconds spent finetuning and exporting (``train_seconds``) and scoring (``score_seconds``)."""

    checkpoint: Path
    package: Path
    catalogue: Path
    best_epoch: int
    train_seconds: float
    score_seconds: float


def train_and_score(release_dir: str | Path, labelled_votes: str | Path, out_dir: str | Path, config: RoundConfig,
                    seed: int = 0, resources: Resources | None = None) -> TrainedModel:
    """Finetune on ``labelled_votes`` into ``out_dir/model``, export ``out_dir/package`` and score every source of
    the release into ``out_dir/catalogue``, replacing what is there (MC-dropout masks and the training seeded by
    ``seed``)."""
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    resources = resources or Resources()
    start = time.perf_counter()
    training = config.training.model_copy(update={"seed": seed})
    checkpoint = _finetune(config, release_dir, Path(labelled_votes), out_dir / "model", training, resources)
    package = _export(config, checkpoint, out_dir / "package", seed)
    trained = time.perf_counter()
    _score(release_dir, package, out_dir / "catalogue", seed, resources, overwrite=True)
    best_epoch = int(read_checkpoint_json(checkpoint)["metrics"]["best_epoch"])
    return TrainedModel(checkpoint, package, out_dir / "catalogue", best_epoch, trained - start,
                        time.perf_counter() - trained)


def switch_package(link: str | Path, package: str | Path) -> Path:
    """Make ``link`` a symlink to ``package`` (resolved), replacing an existing link atomically; returns ``link``."""
    link = Path(link)
    tmp = link.with_name(f".tmp-{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(package).resolve(), target_is_directory=True)
    os.replace(tmp, link)
    return link


@dataclass(frozen=True)
class CycleReport:
    """What :func:`run_cycle` did: the cycle's directory, the labelled set's size after merging, the model, its
    package, the scoring run (``tiles_scored`` 0 when a rerun found the catalogue done) and the queue run."""

    cycle_dir: Path
    n_labelled: int
    checkpoint: Path
    package: Path
    scoring: ScoringResult
    queue: pa.Table


@dataclass(frozen=True)
class Cycle:
    """One cycle's inputs, settings and paths (see the module docstring); :meth:`open` makes one from a votes file.

    ``seed`` seeds the export's checks and the MC-dropout masks; the training's seed is ``config.training.seed``; the
    queue's draws (random acquisition, stochastic sampling, the random fraction) are seeded by ``seed`` and the
    cycle's votes file (:attr:`draw_seed`), so every cycle draws afresh and a rerun of a cycle draws the same.
    ``rank_options`` are :func:`~zoobot_pipeline.active.ranking.rank_catalogue`'s ``sampling``, ``beta``,
    ``random_fraction``, ``exclude_answers`` and ``stratify_by``. Every step method is idempotent; call them in
    order, holding :meth:`lock`.
    """

    release_dir: Path
    new_votes: Path
    labelled_votes: Path
    work_dir: Path
    queue_dir: Path
    digest: str
    config: RoundConfig
    top_k: int = 100
    acquisition: str = "mutual_information"
    seed: int = 0
    resources: Resources = field(default_factory=Resources)
    rank_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, release_dir: str | Path, new_votes: str | Path, labelled_votes: str | Path, work_dir: str | Path,
             queue_dir: str | Path, config: RoundConfig | None = None, *, top_k: int = 100,
             acquisition: str = "mutual_information", seed: int = 0, resources: Resources | None = None,
             rank_options: Mapping[str, Any] | None = None) -> Cycle:
        """The cycle of ``new_votes`` (keyed by its sha256); the votes file must exist. ``top_k``, ``acquisition``
        (a registered function or a shorthand such as ``power_bald``) and the ``rank_options`` are checked here, not
        after training."""
        new_votes = Path(new_votes)
        if not new_votes.is_file():
            raise FileNotFoundError(f"{new_votes}: no such votes file")
        if top_k < 1:
            raise ZoobotPipelineError(f"top_k must be at least 1, got {top_k}")
        options = dict(rank_options or {})
        unknown = sorted(set(options) - set(RANK_OPTIONS))
        if unknown:
            raise ZoobotPipelineError(f"unknown rank option(s) {', '.join(unknown)}; known: {', '.join(RANK_OPTIONS)}")
        acquisition, options["sampling"] = resolve_strategy(acquisition, options.get("sampling"))
        get_acquisition(acquisition)
        check_beta(options.get("beta", 1.0))
        check_random_fraction(options.get("random_fraction", 0.0))
        config = config or RoundConfig()
        tree = get_schema(config.schema_name)
        resolve_strata(options.get("stratify_by", ()), [fraction_column(c) for c in tree.label_cols], tree,
                       f"tree {tree.name}")
        return cls(Path(release_dir), new_votes, Path(labelled_votes), Path(work_dir), Path(queue_dir),
                   file_sha256(new_votes), config, top_k, acquisition, seed, resources or Resources(),
                   options)

    @property
    def draw_seed(self) -> int:
        """The seed of the queue's draws: ``seed`` plus the first 32 bits of the votes file's sha256."""
        return self.seed + int(self.digest[:8], 16)

    @property
    def key(self) -> str:
        """``cycle-{sha256[:16]}``: the cycle directory's name and the queue's run key."""
        return f"cycle-{self.digest[:16]}"

    @property
    def cycle_dir(self) -> Path:
        """``WORK/cycle-{sha256[:16]}``: the cycle's model, package and catalogue."""
        return self.work_dir / self.key

    @property
    def checkpoint(self) -> Path:
        """The finetuned checkpoint's directory."""
        return self.cycle_dir / "model"

    @property
    def package(self) -> Path:
        """The model package's directory."""
        return self.cycle_dir / "package"

    @property
    def catalogue(self) -> Path:
        """The scored catalogue's directory."""
        return self.cycle_dir / "catalogue"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the work directory's cycle lock for the block; a ``RuntimeError`` at once if another cycle has it."""
        busy = RuntimeError(f"{self.work_dir}: another active-learning cycle is running")
        with exclusive_lock(self.work_dir / LOCK_FILE, busy):
            yield

    @property
    def merged(self) -> bool:
        """Whether the labelled set records this cycle's votes file as merged."""
        metadata = pq.read_schema(self.labelled_votes).metadata or {}
        return self.digest in json.loads(metadata.get(MERGED_KEY, b"[]"))

    @property
    def trained(self) -> bool:
        """Whether the checkpoint is there (it appears atomically)."""
        return (self.checkpoint / CHECKPOINT_JSON).is_file()

    @property
    def exported(self) -> bool:
        """Whether the package is there (it appears atomically)."""
        return (self.package / MODEL_JSON).is_file()

    def merge(self) -> int:
        """Merge the new votes into the labelled set in place unless already merged; returns its galaxy count."""
        if self.merged:
            return pq.read_metadata(self.labelled_votes).num_rows
        return merge_votes(self.labelled_votes, self.new_votes, self.labelled_votes, self.config.schema_name).num_rows

    def train(self) -> Path:
        """Finetune on the labelled set into ``cycle_dir/model`` unless there is a checkpoint; returns it."""
        if not self.trained:
            _finetune(self.config, self.release_dir, self.labelled_votes, self.checkpoint, self.config.training,
                      self.resources)
        return self.checkpoint

    def export(self) -> Path:
        """Export the checkpoint to ``cycle_dir/package`` unless there is a package; returns it."""
        if not self.exported:
            _export(self.config, self.checkpoint, self.package, self.seed)
        return self.package

    def score(self) -> ScoringResult:
        """Score the release into ``cycle_dir/catalogue``, resuming: tiles scored before are skipped."""
        return _score(self.release_dir, self.package, self.catalogue, self.seed, self.resources, overwrite=False)

    def rank(self) -> pa.Table:
        """Queue the catalogue's ``top_k`` most wanted galaxies in ``queue_dir`` under the run key :attr:`key`
        (galaxies with votes in the labelled set and galaxies queued before are skipped); a rerun returns the run
        made before."""
        return rank_catalogue(self.catalogue, self.top_k, acquisition=self.acquisition,
                              exclude_votes=self.labelled_votes, min_votes=MIN_VOTES, schema=self.config.schema_name,
                              queue_dir=self.queue_dir, seed=self.draw_seed, run_key=self.key, **self.rank_options)

    def run(self, current_package: str | Path | None = None) -> CycleReport:
        """Every step in order under :meth:`lock`, then point ``current_package`` (if given) at the package."""
        with self.lock():
            n_labelled = self.merge()
            checkpoint = self.train()
            package = self.export()
            scoring = self.score()
            queue = self.rank()
            if current_package is not None:
                switch_package(current_package, package)
        return CycleReport(self.cycle_dir, n_labelled, checkpoint, package, scoring, queue)


def run_cycle(release_dir: str | Path, new_votes: str | Path, labelled_votes: str | Path, work_dir: str | Path,
              queue_dir: str | Path, config: RoundConfig | None = None, *, top_k: int = 100,
              acquisition: str = "mutual_information", seed: int = 0, resources: Resources | None = None,
              current_package: str | Path | None = None,
              rank_options: Mapping[str, Any] | None = None) -> CycleReport:
    """Fold ``new_votes`` into ``labelled_votes`` (Parquet), retrain, export, score the pool ``release_dir`` and queue
    its ``top_k`` most wanted galaxies in ``queue_dir`` (see the module docstring; ``rank_options`` as for
    :class:`Cycle`); work files under ``work_dir``."""
    cycle = Cycle.open(release_dir, new_votes, labelled_votes, work_dir, queue_dir, config, top_k=top_k,
                       acquisition=acquisition, seed=seed, resources=resources, rank_options=rank_options)
    return cycle.run(current_package)
