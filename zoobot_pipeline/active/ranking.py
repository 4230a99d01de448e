"""Rank a scored catalogue into a Galaxy Zoo priority queue, streaming in bounded memory.

The catalogue is a directory of Parquet files (found recursively; names starting with ``.`` or ``_`` and the top-level
``failures.parquet`` are skipped) or one Parquet file. It is read in record batches of only the columns needed, and
the best ``top_k`` rows seen so far are kept in numpy arrays: memory is O(top_k + batch_size) whatever the catalogue's
size, and the catalogue is never sorted as a whole. Rows that cannot beat the current K-th best are dropped before any
sorting. Equal scores rank by ``id_str`` (ascending), so the queue does not depend on file or batch order.

Scores come from a registered acquisition function (:mod:`~zoobot_pipeline.active.acquisition`), and the batch is
a draw without replacement in proportion to a weight of the score (``power``, the default, ``softmax``,
``softrank``: :mod:`~zoobot_pipeline.active.batch_sampling`) or their top K (``sampling="top_k"``); a draw is the
same top-K machinery over a key perturbed by noise from a hash of ``(seed, id_str)``; softrank reads the catalogue
twice.
With a random fraction, ``round(random_fraction * top_k)`` galaxies are the top of a uniform key from a hash of
``(seed, id_str)`` (the seeded ``random`` acquisition) and the acquisition's best fill the rest; the queue interleaves
the two parts and ``picked_by`` says which part picked each galaxy. Skipped: flagged rows (non-null ``flag``),
galaxies that already have ``min_votes`` or more votes on the tree's first question in ``exclude_votes``, galaxies
already queued in ``queue_dir``, and galaxies an answer filter excludes (``exclude_answers``:
:mod:`~zoobot_pipeline.active.exclusions`). A scored row with a null or NaN value in a column the acquisition
function or an answer filter reads is an error naming the file, row and column.

Strata (``stratify_by``: :mod:`~zoobot_pipeline.active.strata`) share the acquisition's picks among the model's
predicted answers in proportion to their eligible galaxies, keeping one best-so-far per stratum; the queue's
``stratum`` column names each galaxy's stratum.

Quotas (per tile, or per magnitude bin; one kind at a time, not with strata) cap how many galaxies one group
contributes: the result is exactly that of walking the full ranking (by the sampling key; the random part's picks
first) and skipping galaxies whose group is already full. Magnitude bins are ``np.digitize`` groups of
``magnitude_column`` over the given edges (brighter than the first edge and fainter than the last are groups too,
and so is a missing magnitude).

Queue directory::

    QUEUE/runs/{run_id}.parquet     what each rank run queued; written once, never changed (the queue's history)
    QUEUE/queue.parquet             the latest run's queue (the same rows as its run file)
    QUEUE/run-keys/{run_key}.json   when the run made under a run key was created (queues of earlier versions:
                                    ``QUEUE/flow-keys/``, still read)
    QUEUE/.lock                     held by the run reading the history and writing its files

Every galaxy in a run file counts as queued, so rerunning the same command queues the next ``top_k`` galaxies, never
one twice: each run replaces ``queue.parquet`` and writes a new run file; runs on one directory take turns (the
lock). A run is all or nothing, with one commit point: the rename that puts its ``queue.parquet`` in place. Before it
the run has left nothing but temporary ``.tmp-*`` files (a rerun ranks the same galaxies again); after it the run is
done, even if it was killed before writing its run file: the next run, under the lock and before it reads the
history, writes the missing run file from ``queue.parquet`` (whose metadata names its run) and deletes the ``.tmp-*``
files killed runs left beside ``queue.parquet``, the run files and the run-key files (no other file). So galaxies
are never recorded as queued without being in the queue ``queue.parquet`` showed, and never queued twice. Without a
run key, a run killed after its commit is done: its rerun queues the next galaxies (as after any finished run). Start
a fresh queue in a new directory.

Exactly once: a run given a ``run_key`` records its creation time under the key before ranking, and its run id follows
from that time. A later run under the same key (a retry, a job restarted after a crash) finds that run's file and
returns its table instead of queueing more galaxies, re-writing ``queue.parquet`` from it when it is the latest run
(a queue of an earlier version, which wrote the run file first, may have been killed between its two writes); if the
first was killed before its commit, the later one ranks under the same run id.

Release: ``release`` (a column, and in :func:`rank_settings`) is the catalogue's release name. A catalogue written by
scoring also records, per tile, a digest of the tile's source ids (``sources_digest``); the settings keep those of the
tiles the queue draws from (``sources_digests``: tile id to digest), so that a manifest can refuse a release whose
sources differ (:func:`zoobot_pipeline.active.manifest.write_manifest`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline._version import __version__
from zoobot_pipeline.active import acquisition as acq
from zoobot_pipeline.active import batch_sampling as bs
from zoobot_pipeline.active.exclusions import AnswerFilter, filter_columns, parse_answer_filters
from zoobot_pipeline.active.strata import Strata, allocate, resolve_strata
from zoobot_pipeline.catalogue import FLAG, catalogue_files
from zoobot_pipeline.data.votes import read_votes
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import file_lock, write_json_atomic, write_parquet_atomic
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = [
    "KEYS_DIR", "LOCK_FILE", "QUEUE_FILE", "QUEUE_SCHEMA", "RANK_METADATA_KEY", "RUNS_DIR", "SOURCES_DIGESTS",
    "STRATUM_COLUMN", "labelled_ids", "queued_ids", "rank_catalogue", "rank_settings", "run_file", "run_id_of",
]

QUEUE_FILE = "queue.parquet"
RUNS_DIR = "runs"
KEYS_DIR = "run-keys"
LOCK_FILE = ".lock"
RANK_METADATA_KEY = "zoobot_pipeline.rank"
_FLOW_KEYS_DIR = "flow-keys"  # where queues of earlier versions recorded their run keys
_BASE_COLUMNS = ("id_str", "ra", "dec", "tile_id", FLAG)
_METADATA_KEYS = ("model_sha256", "schema", "release")
SOURCES_DIGESTS = "sources_digests"  # rank settings key: tile id -> digest of the tile's source ids (from scoring)
ACQUISITION_PART = "acquisition"  # picked_by: drawn by the acquisition function (and sampling mode)
RANDOM_PART = "random"  # picked_by: drawn uniformly at random (the random fraction)
STRATUM_COLUMN = "stratum"  # queue column of a stratified run: the galaxy's stratum (strata.Strata.name)
_TMP_PREFIX = ".tmp-"  # temporary files of io.atomic_path

QUEUE_SCHEMA = pa.schema([
    pa.field("rank", pa.int64(), nullable=False, metadata={"description": "1 = most wanted"}),
    pa.field("id_str", pa.string(), nullable=False),
    pa.field("ra", pa.float64(), metadata={"unit": "deg"}),
    pa.field("dec", pa.float64(), metadata={"unit": "deg"}),
    pa.field("tile_id", pa.string()),
    pa.field("acquisition", pa.float64(), metadata={"description": "score of acquisition_function"}),
    pa.field("acquisition_function", pa.string()),
    pa.field("top_question", pa.string(), metadata={"description": "question with the largest weighted term"}),
    pa.field("sampling_key", pa.float64(), metadata={
        "description": "key the galaxy was picked by: the score (top_k), the Gumbel-perturbed key (power, softmax, "
                       "softrank) or the uniform draw (random part)"}),
    pa.field("picked_by", pa.string(), metadata={"description": "acquisition or random (the random fraction)"}),
    pa.field("model_sha256", pa.string()),
    pa.field("release", pa.string()),
    pa.field("created", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
])


def run_id_of(created: datetime) -> str:
    """The run id of a rank run created at ``created``: its UTC time to the microsecond, e.g.
    ``20250301T120000123456Z``."""
    return created.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def run_file(queue_dir: str | Path, run_id: str) -> Path:
    """The run file of run ``run_id`` in ``queue_dir``."""
    return Path(queue_dir) / RUNS_DIR / f"{run_id}.parquet"


def rank_settings(queue: pa.Table) -> dict[str, Any]:
    """What a rank run recorded in its queue table's metadata: ``run_id``, its options and the counts of rows read
    and skipped."""
    raw = (queue.schema.metadata or {}).get(RANK_METADATA_KEY.encode())
    if raw is None:
        raise ZoobotPipelineError(f"not a queue written by rank_catalogue: no {RANK_METADATA_KEY!r} metadata")
    return json.loads(raw)


def _file_metadata(path: Path) -> tuple[pa.Schema, dict[str, str]]:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ZoobotPipelineError(f"{path}: cannot read catalogue file: {err}") from err
    raw = schema.metadata or {}
    return schema, {k: raw[k.encode()].decode() for k in _METADATA_KEYS if k.encode() in raw}


def _tile_digest(schema: pa.Schema) -> tuple[str, str] | None:
    """``(tile_id, sources_digest)`` of a scoring part file (its metadata), or None for another catalogue file."""
    raw = schema.metadata or {}
    if b"tile_id" not in raw or b"sources_digest" not in raw:
        return None
    return raw[b"tile_id"].decode(), raw[b"sources_digest"].decode()


def labelled_ids(votes: str | Path, schema: Schema, min_votes: int) -> pa.Array:
    """``id_str`` of galaxies with at least ``min_votes`` votes on the tree's first question (validated catalogue)."""
    table = read_votes(votes, schema)
    first = schema.questions[0]
    total = np.sum([table.column(c).to_numpy() for c in first.label_cols], axis=0)
    return table.column("id_str").combine_chunks().filter(pa.array(total >= min_votes))


def _run_files(queue_dir: Path) -> list[Path]:
    """The run files of ``queue_dir``, oldest first."""
    runs = queue_dir / RUNS_DIR
    return sorted(p for p in runs.glob("*.parquet") if not p.name.startswith((".", "_"))) if runs.is_dir() else []


def queued_ids(queue_dir: str | Path) -> pa.Array:
    """``id_str`` of every galaxy queued by earlier runs in ``queue_dir`` (empty for a new directory)."""
    arrays = [pq.read_table(p, columns=["id_str"]).column("id_str").combine_chunks()
              for p in _run_files(Path(queue_dir))]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def _group_occurrence(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements have the same group (0 for the first of its group)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    counts = np.diff(np.r_[starts, len(groups)])
    occurrence = np.empty(len(groups), dtype=np.int64)
    occurrence[order] = np.arange(len(groups)) - np.repeat(starts, counts)
    return occurrence


class _Best:
    """The best ``k`` rows seen so far (``key`` descending, then ``id_str``), at most ``quota`` per group."""

    def __init__(self, k: int, quota: int | None) -> None:
        self.k = k
        self.quota = quota
        self.rows: dict[str, np.ndarray] | None = None

    def offer(self, rows: dict[str, np.ndarray]) -> None:
        if self.k < 1:
            return
        if self.rows is not None and len(self.rows["key"]) >= self.k:
            worst_key, worst_id = self.rows["key"][-1], self.rows["id_str"][-1]
            beats = (rows["key"] > worst_key) | ((rows["key"] == worst_key) & (rows["id_str"] < worst_id))
            if not beats.any():
                return
            rows = {name: values[beats] for name, values in rows.items()}
        if self.rows is not None:
            rows = {name: np.concatenate([self.rows[name], values]) for name, values in rows.items()}
        order = np.lexsort((rows["id_str"], -rows["key"]))
        if self.quota is not None:
            order = order[_group_occurrence(rows["group"][order]) < self.quota]
        order = order[: self.k]
        self.rows = {name: values[order] for name, values in rows.items()}


def _check_scored(batch: pa.RecordBatch, scores: np.ndarray, columns: Sequence[str], path: Path, offset: int,
                  rows: np.ndarray) -> None:
    """Raise naming the file, row and column of the first scored row whose score is not finite."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if not len(bad):
        return
    i = int(bad[0])
    for name in columns:
        value = batch.column(name)[i].as_py()
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            raise ZoobotPipelineError(f"{path}: row {offset + int(rows[i])} (id_str {batch.column('id_str')[i]}): "
                                      f"column {name!r} is {value} in a row with no flag")
    raise ZoobotPipelineError(f"{path}: row {offset + int(rows[i])}: acquisition score is not finite")


def _magnitude_groups(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    groups = np.digitize(values, edges)
    groups[~np.isfinite(values)] = -1
    return groups


def _check_answer_values(batch: pa.RecordBatch, values: np.ndarray, column: str, path: Path, offset: int,
                         rows: np.ndarray) -> None:
    """Raise naming the file, row and column of the first eligible row whose answer value is missing."""
    bad = np.flatnonzero(np.isnan(values))
    if len(bad):
        i = int(bad[0])
        raise ZoobotPipelineError(f"{path}: row {offset + int(rows[i])} (id_str {batch.column('id_str')[i]}): "
                                  f"column {column!r} is {batch.column(column)[i].as_py()} in a row with no flag")


@dataclass
class _Scan:
    """One pass over the catalogue: how to score and sample, what to skip, the best rows so far (by the sampling key,
    and by a uniform key for the random part) and counts of what was seen. With ``collected`` (a list) the pass
    only collects the eligible scores (softrank's first pass); softrank's second pass ranks by ``population``."""

    best: _Best
    acquisition: str
    questions: list[str]
    weights: Mapping[str, float] | None
    seed: int
    score_columns: list[str]
    excluded_labelled: pa.Array
    excluded_queued: pa.Array
    edges: np.ndarray | None
    magnitude_column: str
    tile_groups: bool
    sampling: str = bs.TOP_K
    beta: float = 1.0
    answer_filters: list[AnswerFilter] = field(default_factory=list)
    answer_columns: list[str] = field(default_factory=list)
    random_best: _Best | None = None
    collected: list[np.ndarray] | None = None
    population: np.ndarray | None = None
    strata: Strata | None = None
    stratum_best: dict[int, _Best] = field(default_factory=dict)
    stratum_eligible: Counter[int] = field(default_factory=Counter)
    stratum_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    flagged: int = 0
    labelled: int = 0
    queued: int = 0
    answered: int = 0

    def offer(self, batch: pa.RecordBatch, path: Path, offset: int) -> None:
        """Score the eligible rows of ``batch`` (row ``offset`` onwards of ``path``) and offer them to the best."""
        self.rows += batch.num_rows
        ids = batch.column("id_str")
        if ids.type != pa.string():
            ids = ids.cast(pa.string())
        if ids.null_count:
            row = pc.index(pc.is_null(ids), True).as_py()
            raise ZoobotPipelineError(f"{path}: row {offset + row}: column 'id_str' is null")
        scored = pc.is_null(batch.column(FLAG)).to_numpy(zero_copy_only=False)
        labelled = pc.is_in(ids, value_set=self.excluded_labelled).to_numpy(zero_copy_only=False) & scored
        queued = pc.is_in(ids, value_set=self.excluded_queued).to_numpy(zero_copy_only=False) & scored & ~labelled
        self.flagged += int((~scored).sum())
        self.labelled += int(labelled.sum())
        self.queued += int(queued.sum())
        rows = np.flatnonzero(scored & ~labelled & ~queued)
        if self.answer_filters and len(rows):
            kept = batch.take(pa.array(rows))
            answered = np.zeros(len(rows), dtype=bool)
            for answer, column in zip(self.answer_filters, self.answer_columns, strict=True):
                values = kept.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
                _check_answer_values(kept, values, column, path, offset, rows)
                answered |= answer.matches(values)
            self.answered += int(answered.sum())
            rows = rows[~answered]
        if not len(rows):
            return
        kept = batch.take(pa.array(rows))
        scores, top = acq.score(kept, self.acquisition, self.questions, self.weights, self.seed)
        _check_scored(kept, scores, self.score_columns, path, offset, rows)
        if self.sampling == "power" and np.any(scores < 0):
            i = int(np.flatnonzero(scores < 0)[0])
            raise ZoobotPipelineError(f"{path}: row {offset + int(rows[i])} (id_str {kept.column('id_str')[i]}): "
                                      f"acquisition score {scores[i]} < 0; power sampling needs scores >= 0: choose "
                                      "sampling softmax, softrank or top_k for this function")
        if self.collected is not None:
            self.collected.append(scores)
            return
        id_str = kept.column("id_str").to_numpy(zero_copy_only=False).astype(str)
        ranks = bs.population_ranks(self.population, scores) if self.population is not None else None
        offered = {
            "key": bs.perturbed_keys(scores, id_str, self.sampling, self.beta, self.seed, ranks),
            "score": scores,
            "top": top,
            "id_str": id_str,
            "ra": kept.column("ra").to_numpy(zero_copy_only=False).astype(np.float64),
            "dec": kept.column("dec").to_numpy(zero_copy_only=False).astype(np.float64),
            "tile_id": kept.column("tile_id").to_numpy(zero_copy_only=False).astype(str),
        }
        if self.edges is not None:
            magnitude = kept.column(self.magnitude_column).to_numpy(zero_copy_only=False).astype(np.float64)
            offered["magnitude"] = magnitude
            offered["group"] = _magnitude_groups(magnitude, self.edges)
        elif self.tile_groups:
            offered["group"] = offered["tile_id"]
        if self.strata is None:
            self.best.offer(offered)
        else:
            self._offer_by_stratum(offered, kept, path, offset, rows)
        if self.random_best is not None:
            self.random_best.offer({**offered, "key": acq.random(id_str, self.seed)})

    def _offer_by_stratum(self, offered: dict[str, np.ndarray], kept: pa.RecordBatch, path: Path, offset: int,
                          rows: np.ndarray) -> None:
        """Offer each row to its stratum's best, counting the eligible rows per stratum."""
        assert self.strata is not None
        codes = self.strata.codes(kept)
        if np.any(codes < 0):
            for column in self.strata.all_columns:
                values = kept.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
                _check_answer_values(kept, values, column, path, offset, rows)
        offered["stratum"] = codes
        for code in np.unique(codes).tolist():
            members = codes == code
            self.stratum_eligible[code] += int(members.sum())
            best = self.stratum_best.setdefault(code, _Best(self.best.k, None))
            best.offer({name: values[members] for name, values in offered.items()})


def _picks(scan: _Scan, top_k: int, quota: int | None) -> dict[str, np.ndarray] | None:
    """The queue's rows in queue order, with ``from_random``: the random part's picks first decide (at most their
    count, with the quota), then the acquisition's best fill the rest, skipping galaxies the random part took and
    groups it filled (as a walk down the acquisition's ranking would), and the two parts are interleaved
    (:func:`~zoobot_pipeline.active.batch_sampling.mix_order`)."""
    if scan.strata is not None:
        return _stratified_picks(scan, top_k)
    best = scan.best.rows
    chosen = scan.random_best.rows if scan.random_best is not None else None
    if chosen is None or not len(chosen["key"]):
        return None if best is None else {**best, "from_random": np.zeros(len(best["key"]), dtype=bool)}
    taken = set(chosen["id_str"].tolist())
    filled = Counter(chosen["group"].tolist()) if quota is not None else Counter()
    keep = []
    for i, id_str in enumerate([] if best is None else best["id_str"].tolist()):
        if len(keep) + len(taken) >= top_k:
            break
        if id_str in taken:
            continue
        if quota is not None:
            group = best["group"][i].item()
            if filled[group] >= quota:
                continue
            filled[group] += 1
        keep.append(i)
    rows = {name: np.concatenate([values[keep] if best is not None else values[:0], chosen[name]])
            for name, values in (best or chosen).items()}
    rows["from_random"] = np.r_[np.zeros(len(keep), dtype=bool), np.ones(len(chosen["key"]), dtype=bool)]
    order = bs.mix_order(rows["from_random"])
    return {name: values[order] for name, values in rows.items()}


def _stratified_picks(scan: _Scan, top_k: int) -> dict[str, np.ndarray] | None:
    """The queue's rows of a stratified run (:mod:`~zoobot_pipeline.active.strata`): the random part's picks, then
    each stratum's best (skipping what the random part took) in numbers proportional to its eligible galaxies; all
    parts interleaved. Records each stratum's eligible and drawn counts in ``scan.stratum_counts``."""
    chosen = scan.random_best.rows if scan.random_best is not None else None
    taken = set() if chosen is None else set(chosen["id_str"].tolist())
    best = {code: rows for code, stratum in sorted(scan.stratum_best.items()) if (rows := stratum.rows) is not None}
    codes = list(best)
    available = {code: np.flatnonzero([i not in taken for i in best[code]["id_str"].tolist()]) for code in codes}
    drawn = allocate(np.array([scan.stratum_eligible[c] for c in codes]),
                     np.array([len(available[c]) for c in codes]), top_k - len(taken))
    assert scan.strata is not None
    scan.stratum_counts = {scan.strata.name(c): {"eligible": scan.stratum_eligible[c], "drawn": int(n)}
                           for c, n in zip(codes, drawn, strict=True)}
    parts = [{**{name: values[available[c][:n]] for name, values in best[c].items()}, "part": np.full(n, i)}
             for i, (c, n) in enumerate(zip(codes, drawn, strict=True)) if n]
    if chosen is not None and len(chosen["key"]):
        parts.append({**chosen, "part": np.full(len(chosen["key"]), len(codes))})
    if not parts:
        return None
    rows = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    order = bs.mix_order(rows["part"])
    rows["from_random"] = rows.pop("part") == len(codes)
    return {name: values[order] for name, values in rows.items()}


def rank_catalogue(
    catalogue: str | Path,
    top_k: int,
    *,
    acquisition: str = "mutual_information",
    weights: Mapping[str, float] | None = None,
    exclude_votes: str | Path | None = None,
    min_votes: int = 3,
    schema: str | Schema | None = None,
    queue_dir: str | Path | None = None,
    run_key: str | None = None,
    per_tile_quota: int | None = None,
    magnitude_bins: Sequence[float] | None = None,
    per_bin_quota: int | None = None,
    magnitude_column: str = "mag_r",
    seed: int = 0,
    batch_size: int = 65_536,
    created: datetime | None = None,
    sampling: str | None = None,
    beta: float = 1.0,
    random_fraction: float = 0.0,
    exclude_answers: Sequence[str | AnswerFilter] = (),
    stratify_by: Sequence[str] = (),
) -> pa.Table:
    """Rank ``catalogue`` by ``acquisition`` and return the ``top_k`` most wanted galaxies (:data:`QUEUE_SCHEMA`).

    ``acquisition`` names a registered function (:func:`~zoobot_pipeline.active.acquisition.available_acquisitions`)
    or a shorthand such as ``power_bald`` (``mutual_information`` drawn by ``power``). ``sampling`` (``top_k``,
    ``power``, ``softmax``, ``softrank``; default ``power``) and ``beta`` choose how the batch is drawn from the
    scores (:mod:`~zoobot_pipeline.active.batch_sampling`); ``round(random_fraction * top_k)`` galaxies are drawn
    uniformly from the eligible ones instead; ``exclude_answers`` (``'smooth-or-featured-dr5_artifact>=0.5'``) skip
    galaxies by the model's answers (:mod:`~zoobot_pipeline.active.exclusions`); ``stratify_by`` (question names, or
    ``class``) shares the acquisition's picks among the model's predicted answers to those questions in proportion
    to their eligible galaxies (:mod:`~zoobot_pipeline.active.strata`). Every draw is seeded by ``seed`` and each
    galaxy's ``id_str``.
    ``schema`` (name or :class:`Schema`) reads ``exclude_votes``; by default the catalogue's ``schema`` metadata.
    With ``queue_dir`` the galaxies already queued there are skipped and the result is written there as a new run,
    created at ``created`` (default: when ranking ends). ``run_key`` (with ``queue_dir``) makes the run happen once:
    under a key used before, the table of the run made then is returned (see the module docstring). What was read
    and skipped is in the table's schema metadata (:func:`rank_settings`).
    """
    quota, edges = _check_options(top_k, batch_size, per_tile_quota, magnitude_bins, per_bin_quota)
    if stratify_by and quota is not None:
        raise ZoobotPipelineError("use quotas (per tile or magnitude bin) or strata, not both")
    acquisition, sampling = bs.resolve_strategy(acquisition, sampling)
    beta = bs.check_beta(beta)
    n_random = bs.random_count(top_k, random_fraction)
    answer_filters = parse_answer_filters(exclude_answers)
    if run_key is not None and queue_dir is None:
        raise ZoobotPipelineError(f"run_key {run_key!r} needs a queue directory to record its run in")
    if run_key is not None and (not run_key or Path(run_key).name != run_key):
        raise ZoobotPipelineError(f"run_key {run_key!r} must be usable as a file name (no '/')")

    files = catalogue_files(catalogue)
    first_schema, meta = _file_metadata(files[0])
    _check_task(acquisition, first_schema, files[0])
    questions = acq.catalogue_targets(acquisition, first_schema)
    score_columns = acq.required_columns(acquisition, questions)
    acq.resolve_weights(questions, weights)
    answer_columns = filter_columns(answer_filters, first_schema, str(files[0]))
    strata = None
    if stratify_by:
        tree = schema if schema is not None else meta.get("schema")
        strata = resolve_strata(stratify_by, first_schema.names, get_schema(tree) if isinstance(tree, str) else tree,
                                str(files[0]))
    columns = list(dict.fromkeys([*_BASE_COLUMNS, *score_columns, *answer_columns,
                                  *([] if strata is None else strata.all_columns)]))
    if edges is not None:
        columns.append(magnitude_column)
    excluded_labelled = pa.array([], pa.string())
    if exclude_votes is not None:
        name = schema if schema is not None else meta.get("schema")
        if name is None:
            raise ZoobotPipelineError(f"{files[0]}: no 'schema' in the catalogue metadata; name the tree to read "
                                      f"{exclude_votes} with")
        tree = name if isinstance(name, Schema) else get_schema(name)
        excluded_labelled = labelled_ids(exclude_votes, tree, min_votes)

    queue = Path(queue_dir) if queue_dir is not None else None
    with file_lock(queue / LOCK_FILE, wait=True) if queue is not None else nullcontext():
        if queue is not None:
            _complete_killed_runs(queue)
        if queue is not None and run_key is not None:
            created = _key_created(queue, run_key, created)
            earlier = run_file(queue, run_id_of(created))
            if earlier.is_file():
                return _earlier_run(queue, earlier)
        excluded_queued = queued_ids(queue) if queue is not None else pa.array([], pa.string())

        def scan_catalogue(**kwargs: Any) -> _Scan:
            scan = _Scan(_Best(top_k, quota), acquisition, questions, weights, seed, score_columns,
                         excluded_labelled, excluded_queued, edges, magnitude_column, per_tile_quota is not None,
                         sampling, beta, answer_filters, answer_columns, strata=strata, **kwargs)
            for path in files:
                _scan_file(scan, path, columns, batch_size, meta, files[0])
            return scan

        population = None
        if sampling == "softrank":  # a galaxy's rank needs every eligible score: a first pass collects them
            collected = scan_catalogue(collected=[]).collected
            population = np.sort(np.concatenate(collected)) if collected else np.zeros(0)
        scan = scan_catalogue(random_best=_Best(n_random, quota) if n_random else None, population=population)

        created = created or datetime.now(UTC)
        run_id = run_id_of(created)
        picks = _picks(scan, top_k, quota)
        table = _queue_table(picks, questions, acquisition, meta, created, run_id,
                             magnitude_column if edges is not None else None, strata)
        if pc.count_distinct(table.column("id_str")).as_py() != table.num_rows:
            twice = sorted(i for i, n in Counter(table.column("id_str").to_pylist()).items() if n > 1)
            raise ZoobotPipelineError(f"{catalogue}: id_str {', '.join(twice[:5])} appear(s) in more than one "
                                      "catalogue row")
        settings: dict[str, Any] = {
            "run_id": run_id, "catalogue": str(catalogue), "top_k": top_k, "acquisition": acquisition,
            "weights": dict(weights or {}), "seed": seed, "per_tile_quota": per_tile_quota,
            "per_bin_quota": per_bin_quota, "magnitude_bins": None if edges is None else edges.tolist(),
            "magnitude_column": magnitude_column,
            "exclude_votes": None if exclude_votes is None else str(exclude_votes), "min_votes": min_votes,
            "sampling": sampling, "beta": beta, "random_fraction": float(random_fraction),
            "random_picks": int(table.column("picked_by").to_pylist().count(RANDOM_PART)),
            "exclude_answers": [str(f) for f in answer_filters],
            "stratify_by": [] if strata is None else list(strata.questions), "strata": scan.stratum_counts,
            "rows_read": scan.rows, "skipped_flagged": scan.flagged, "skipped_labelled": scan.labelled,
            "skipped_queued": scan.queued, "skipped_answers": scan.answered, "code_version": __version__, **meta,
        }
        queued_tiles = sorted(set(table.column("tile_id").to_pylist()))
        if any(tile in scan.digests for tile in queued_tiles):
            settings[SOURCES_DIGESTS] = {tile: scan.digests[tile] for tile in queued_tiles if tile in scan.digests}
        table = table.replace_schema_metadata({RANK_METADATA_KEY: json.dumps(settings)})
        if queue is not None:
            _write_queue(table, queue, run_id)
    return table


def _check_task(acquisition: str, schema: pa.Schema, path: Path) -> None:
    """Refuse an acquisition function made for another kind of catalogue, naming those that fit this one."""
    entry = acq.get_acquisition(acquisition)
    task = acq.catalogue_task(schema)
    if entry.task is None or entry.task == task:
        return
    fitting = [name for name in acq.available_acquisitions() if acq.get_acquisition(name).task in (None, task)]
    kind = f"a {task} model's catalogue" if task else "not a catalogue of a known kind of model"
    raise ZoobotPipelineError(f"{path}: acquisition {acquisition!r} ranks a {entry.task} model's catalogue, and this "
                              f"is {kind}; use one of {', '.join(fitting)}")


def _check_options(top_k: int, batch_size: int, per_tile_quota: int | None, magnitude_bins: Sequence[float] | None,
                   per_bin_quota: int | None) -> tuple[int | None, np.ndarray | None]:
    """The quota (per tile or per bin) and the magnitude bin edges, or an error naming the bad option."""
    if top_k < 1:
        raise ZoobotPipelineError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ZoobotPipelineError(f"batch_size must be at least 1, got {batch_size}")
    if per_tile_quota is not None and (magnitude_bins is not None or per_bin_quota is not None):
        raise ZoobotPipelineError("use a per-tile quota or magnitude-bin quotas, not both")
    if (magnitude_bins is None) != (per_bin_quota is None):
        raise ZoobotPipelineError("magnitude bins and a per-bin quota go together: give both or neither")
    quota = per_tile_quota if per_tile_quota is not None else per_bin_quota
    if quota is not None and quota < 1:
        raise ZoobotPipelineError(f"quotas must be at least 1, got {quota}")
    if magnitude_bins is None:
        return quota, None
    edges = np.asarray(magnitude_bins, dtype=np.float64)
    if edges.ndim != 1 or not len(edges) or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ZoobotPipelineError(f"magnitude bin edges must be finite and increasing, got {list(magnitude_bins)}")
    return quota, edges


def _scan_file(scan: _Scan, path: Path, columns: list[str], batch_size: int, meta: dict[str, str],
               first: Path) -> None:
    """Offer every batch of catalogue file ``path`` to ``scan``, after checking it has the columns and the model and
    release (``meta``) of the ``first`` file."""
    file_schema, file_meta = _file_metadata(path)
    for key in _METADATA_KEYS:
        if file_meta.get(key) != meta.get(key):
            raise ZoobotPipelineError(f"{path}: {key} {file_meta.get(key)!r} differs from {meta.get(key)!r} in "
                                      f"{first}; rank one model's catalogue of one release at a time")
    missing = [c for c in columns if c not in file_schema.names]
    if missing:
        raise ZoobotPipelineError(f"{path}: missing catalogue column(s) {', '.join(missing)}")
    tile_digest = _tile_digest(file_schema)
    if tile_digest is not None:
        scan.digests.setdefault(*tile_digest)
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
        scan.offer(batch, path, offset)
        offset += batch.num_rows


def _key_created(queue_dir: Path, run_key: str, created: datetime | None) -> datetime:
    """When the run under ``run_key`` was created: as its key file records, or else ``created`` (default now),
    recorded now."""
    for keys_dir in (KEYS_DIR, _FLOW_KEYS_DIR):
        key_file = queue_dir / keys_dir / f"{run_key}.json"
        if key_file.is_file():
            try:
                return datetime.fromisoformat(json.loads(key_file.read_text())["created"])
            except (ValueError, KeyError, TypeError) as err:
                raise ZoobotPipelineError(f"{key_file}: not a run-key file ({err!r})") from err
    created = created or datetime.now(UTC)
    write_json_atomic({"run_key": run_key, "created": created.isoformat()}, queue_dir / KEYS_DIR / f"{run_key}.json")
    return created


def _earlier_run(queue_dir: Path, path: Path) -> pa.Table:
    """The queue of an earlier run; ``queue.parquet`` is re-written from it if it is the latest run (a run killed
    between its run file and ``queue.parquet`` left the older queue there)."""
    table = pq.read_table(path)
    if path == _run_files(queue_dir)[-1]:
        write_parquet_atomic(table, queue_dir / QUEUE_FILE)
    return table


def _queue_table(rows: dict[str, np.ndarray] | None, questions: list[str], acquisition: str, meta: dict[str, str],
                 created: datetime, run_id: str, magnitude_column: str | None, strata: Strata | None) -> pa.Table:
    n = 0 if rows is None else len(rows["score"])
    picked_by = [RANDOM_PART if r else ACQUISITION_PART for r in ([] if rows is None else rows["from_random"])]

    def column(name: str) -> list[Any]:
        return [] if rows is None else rows[name].tolist()

    top_names = [questions[i] if i >= 0 else None for i in column("top")]
    data = {
        "rank": pa.array(np.arange(1, n + 1), pa.int64()),
        "id_str": pa.array(column("id_str"), pa.string()),
        "ra": pa.array(column("ra"), pa.float64()),
        "dec": pa.array(column("dec"), pa.float64()),
        "tile_id": pa.array(column("tile_id"), pa.string()),
        "acquisition": pa.array(column("score"), pa.float64()),
        "acquisition_function": pa.array([acquisition] * n, pa.string()),
        "top_question": pa.array(top_names, pa.string()),
        "sampling_key": pa.array(column("key"), pa.float64()),
        "picked_by": pa.array(picked_by, pa.string()),
        "model_sha256": pa.array([meta.get("model_sha256")] * n, pa.string()),
        "release": pa.array([meta.get("release")] * n, pa.string()),
        "created": pa.array([created] * n, pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    schema = QUEUE_SCHEMA
    if magnitude_column is not None:
        data[magnitude_column] = pa.array(column("magnitude"), pa.float64())
        schema = schema.append(pa.field(magnitude_column, pa.float64(), metadata={"unit": "mag"}))
    if strata is not None:
        data[STRATUM_COLUMN] = pa.array([strata.name(c) for c in column("stratum")], pa.string())
        schema = schema.append(pa.field(STRATUM_COLUMN, pa.string(), metadata={
            "description": "the model's predicted answers the galaxy was stratified by"}))
    return pa.table(data, schema=schema)


def _write_queue(table: pa.Table, queue_dir: Path, run_id: str) -> None:
    """Commit the run (``queue.parquet``, one rename), then write its run file (which a killed run leaves to the next
    run: :func:`_complete_killed_runs`)."""
    run_path = run_file(queue_dir, run_id)
    if run_path.exists():
        raise ZoobotPipelineError(f"{run_path}: a run with this id already exists")
    write_parquet_atomic(table, queue_dir / QUEUE_FILE)
    write_parquet_atomic(table, run_path)


def _complete_killed_runs(queue_dir: Path) -> None:
    """What a run killed in ``queue_dir`` left, put right (under the queue lock): its ``.tmp-*`` files are deleted, and
    a committed run (``queue.parquet`` in place) whose run file is missing gets it, written from ``queue.parquet``."""
    for folder, pattern in ((queue_dir, f"{QUEUE_FILE}.*"), (queue_dir / RUNS_DIR, "*.parquet.*"),
                            (queue_dir / KEYS_DIR, "*.json.*")):
        if folder.is_dir():
            for stale in folder.glob(f"{_TMP_PREFIX}{pattern}"):  # only the temporary files of the files runs write
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink(missing_ok=True)
    latest = queue_dir / QUEUE_FILE
    if not latest.is_file():
        return
    try:
        table = pq.read_table(latest)
    except (OSError, pa.ArrowInvalid) as err:
        raise ZoobotPipelineError(f"{latest}: cannot read the queue: {err}; move it aside to start again from the "
                                  f"run files in {queue_dir / RUNS_DIR}") from err
    try:
        run_id = rank_settings(table)["run_id"]
    except (ZoobotPipelineError, ValueError, KeyError, TypeError):
        return  # not a queue written by rank_catalogue: nothing to complete
    if isinstance(run_id, str) and run_id and Path(run_id).name == run_id and not run_file(queue_dir, run_id).exists():
        write_parquet_atomic(table, run_file(queue_dir, run_id))
