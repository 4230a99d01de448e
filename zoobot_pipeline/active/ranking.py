"""Rank a scored catalogue into a Galaxy Zoo priority queue, streaming in bounded memory.

The catalogue is a directory of Parquet files (found recursively; names starting with ``.`` or ``_`` and the top-level
``failures.parquet`` are skipped) or one Parquet file. It is read in record batches of only the columns needed, and
the best ``top_k`` rows seen so far are kept in numpy arrays: memory is O(top_k + batch_size) whatever the catalogue's
size, and the catalogue is never sorted as a whole. Rows that cannot beat the current K-th best are dropped before any
sorting. Equal scores rank by ``id_str`` (ascending), so the queue does not depend on file or batch order.

Skipped: flagged rows (non-null ``flag``), galaxies that already have ``min_votes`` or more votes on the tree's first
question in ``exclude_votes``, and galaxies already queued in ``queue_dir``. A scored row with a null or NaN value in a
column the acquisition function reads is an error naming the file, row and column.

Quotas (per tile, or per magnitude bin; one kind at a time) cap how many galaxies one group contributes: the result is
exactly that of walking the full ranking and skipping galaxies whose group is already full. Magnitude bins are
``np.digitize`` groups of ``magnitude_column`` over the given edges (brighter than the first edge and fainter than the
last are groups too, and so is a missing magnitude).

Queue directory::

    QUEUE/runs/{run_id}.parquet   what each rank run queued; written once, never changed (the queue's history)
    QUEUE/queue.parquet           the latest run's queue (the same rows as its run file)

Every galaxy in a run file counts as queued, so rerunning the same command queues the next ``top_k`` galaxies, never
one twice: each run writes a new run file and replaces ``queue.parquet``. The run file is written (atomically) before
``queue.parquet``, so a run killed between the two can leave galaxies recorded as queued that are missing from
``queue.parquet`` (its run file still lists them), never a galaxy queued twice. Start a fresh queue in a new
directory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline import __version__
from zoobot_pipeline.active import acquisition as acq
from zoobot_pipeline.data.votes import read_votes
from zoobot_pipeline.io import write_parquet_atomic
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = [
    "QUEUE_FILE", "QUEUE_SCHEMA", "RUNS_DIR", "catalogue_files", "labelled_ids", "queued_ids", "rank_catalogue",
]

QUEUE_FILE = "queue.parquet"
RUNS_DIR = "runs"
_BASE_COLUMNS = ("id_str", "ra", "dec", "tile_id", "flag")
_METADATA_KEYS = ("model_sha256", "schema", "release")

QUEUE_SCHEMA = pa.schema([
    pa.field("rank", pa.int64(), nullable=False, metadata={"description": "1 = most wanted"}),
    pa.field("id_str", pa.string(), nullable=False),
    pa.field("ra", pa.float64(), metadata={"unit": "deg"}),
    pa.field("dec", pa.float64(), metadata={"unit": "deg"}),
    pa.field("tile_id", pa.string()),
    pa.field("acquisition", pa.float64(), metadata={"description": "score of acquisition_function"}),
    pa.field("acquisition_function", pa.string()),
    pa.field("top_question", pa.string(), metadata={"description": "question with the largest weighted term"}),
    pa.field("model_sha256", pa.string()),
    pa.field("release", pa.string()),
    pa.field("created", pa.timestamp("us", tz="UTC")),
    pa.field("run_id", pa.string()),
])


def catalogue_files(catalogue: str | Path) -> list[Path]:
    """The catalogue's Parquet files, sorted; see the module docstring for what is skipped."""
    root = Path(catalogue)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: catalogue not found")
    files = []
    for path in root.rglob("*.parquet"):
        relative = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in relative.parts) or relative == Path("failures.parquet"):
            continue
        files.append(path)
    if not files:
        raise ValueError(f"{root}: no catalogue Parquet files found")
    return sorted(files)


def _file_metadata(path: Path) -> tuple[pa.Schema, dict[str, str]]:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"{path}: cannot read catalogue file: {err}") from err
    raw = schema.metadata or {}
    return schema, {k: raw[k.encode()].decode() for k in _METADATA_KEYS if k.encode() in raw}


def labelled_ids(votes: str | Path, schema: Schema, min_votes: int) -> pa.Array:
    """``id_str`` of galaxies with at least ``min_votes`` votes on the tree's first question (validated catalogue)."""
    table = read_votes(votes, schema)
    first = schema.questions[0]
    total = np.sum([table.column(c).to_numpy() for c in first.label_cols], axis=0)
    return table.column("id_str").combine_chunks().filter(pa.array(total >= min_votes))


def queued_ids(queue_dir: str | Path) -> pa.Array:
    """``id_str`` of every galaxy queued by earlier runs in ``queue_dir`` (empty for a new directory)."""
    runs = Path(queue_dir) / RUNS_DIR
    files = sorted(p for p in runs.glob("*.parquet") if not p.name.startswith((".", "_"))) if runs.is_dir() else []
    arrays = [pq.read_table(p, columns=["id_str"]).column("id_str").combine_chunks() for p in files]
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
    """The best ``k`` rows seen so far (score descending, then ``id_str``), at most ``quota`` per group."""

    def __init__(self, k: int, quota: int | None) -> None:
        self.k = k
        self.quota = quota
        self.rows: dict[str, np.ndarray] | None = None

    def offer(self, rows: dict[str, np.ndarray]) -> None:
        if self.rows is not None and len(self.rows["score"]) >= self.k:
            worst_score, worst_id = self.rows["score"][-1], self.rows["id_str"][-1]
            beats = (rows["score"] > worst_score) | ((rows["score"] == worst_score) & (rows["id_str"] < worst_id))
            if not beats.any():
                return
            rows = {name: values[beats] for name, values in rows.items()}
        if self.rows is not None:
            rows = {name: np.concatenate([self.rows[name], values]) for name, values in rows.items()}
        order = np.lexsort((rows["id_str"], -rows["score"]))
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
            raise ValueError(f"{path}: row {offset + int(rows[i])} (id_str {batch.column('id_str')[i]}): column "
                             f"{name!r} is {value} in a row with no flag")
    raise ValueError(f"{path}: row {offset + int(rows[i])}: acquisition score is not finite")


def _magnitude_groups(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    groups = np.digitize(values, edges)
    groups[~np.isfinite(values)] = -1
    return groups


@dataclass
class _Scan:
    """One pass over the catalogue: how to score, what to skip, the best rows so far and counts of what was seen."""

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
    rows: int = 0
    flagged: int = 0
    labelled: int = 0
    queued: int = 0

    def offer(self, batch: pa.RecordBatch, path: Path, offset: int) -> None:
        """Score the eligible rows of ``batch`` (row ``offset`` onwards of ``path``) and offer them to the best."""
        self.rows += batch.num_rows
        ids = batch.column("id_str")
        if ids.type != pa.string():
            ids = ids.cast(pa.string())
        if ids.null_count:
            row = pc.index(pc.is_null(ids), True).as_py()
            raise ValueError(f"{path}: row {offset + row}: column 'id_str' is null")
        scored = pc.is_null(batch.column("flag")).to_numpy(zero_copy_only=False)
        labelled = pc.is_in(ids, value_set=self.excluded_labelled).to_numpy(zero_copy_only=False) & scored
        queued = pc.is_in(ids, value_set=self.excluded_queued).to_numpy(zero_copy_only=False) & scored & ~labelled
        self.flagged += int((~scored).sum())
        self.labelled += int(labelled.sum())
        self.queued += int(queued.sum())
        rows = np.flatnonzero(scored & ~labelled & ~queued)
        if not len(rows):
            return
        kept = batch.take(pa.array(rows))
        scores, top = acq.score(kept, self.acquisition, self.questions, self.weights, self.seed)
        _check_scored(kept, scores, self.score_columns, path, offset, rows)
        offered = {
            "score": scores,
            "top": top,
            "id_str": kept.column("id_str").to_numpy(zero_copy_only=False).astype(str),
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
        self.best.offer(offered)


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
    per_tile_quota: int | None = None,
    magnitude_bins: Sequence[float] | None = None,
    per_bin_quota: int | None = None,
    magnitude_column: str = "mag_r",
    seed: int = 0,
    batch_size: int = 65_536,
    created: datetime | None = None,
) -> pa.Table:
    """Rank ``catalogue`` by ``acquisition`` and return the ``top_k`` most wanted galaxies (:data:`QUEUE_SCHEMA`).

    ``schema`` (name or :class:`Schema`) reads ``exclude_votes``; by default the catalogue's ``schema`` metadata.
    With ``queue_dir`` the galaxies already queued there are skipped and the result is written there as a new run
    (see the module docstring). Counts of what was read and skipped are in the table's schema metadata.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if per_tile_quota is not None and (magnitude_bins is not None or per_bin_quota is not None):
        raise ValueError("use a per-tile quota or magnitude-bin quotas, not both")
    if (magnitude_bins is None) != (per_bin_quota is None):
        raise ValueError("magnitude bins and a per-bin quota go together: give both or neither")
    quota = per_tile_quota if per_tile_quota is not None else per_bin_quota
    if quota is not None and quota < 1:
        raise ValueError(f"quotas must be at least 1, got {quota}")
    edges = None
    if magnitude_bins is not None:
        edges = np.asarray(magnitude_bins, dtype=np.float64)
        if edges.ndim != 1 or not len(edges) or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError(f"magnitude bin edges must be finite and increasing, got {list(magnitude_bins)}")

    files = catalogue_files(catalogue)
    first_schema, meta = _file_metadata(files[0])
    questions = acq.catalogue_questions(first_schema)
    if acquisition != "random" and not questions:
        raise ValueError(f"{files[0]}: no {{question}}{acq.MI_SUFFIX} columns to compute {acquisition!r} from")
    score_columns = acq.required_columns(acquisition, questions)
    acq.resolve_weights(questions, weights)
    columns = list(dict.fromkeys([*_BASE_COLUMNS, *score_columns]))
    if edges is not None:
        columns.append(magnitude_column)

    excluded_labelled = pa.array([], pa.string())
    if exclude_votes is not None:
        name = schema if schema is not None else meta.get("schema")
        if name is None:
            raise ValueError(f"{files[0]}: no 'schema' in the catalogue metadata; name the tree to read "
                             f"{exclude_votes} with")
        tree = name if isinstance(name, Schema) else get_schema(name)
        excluded_labelled = labelled_ids(exclude_votes, tree, min_votes)
    excluded_queued = queued_ids(queue_dir) if queue_dir is not None else pa.array([], pa.string())

    scan = _Scan(_Best(top_k, quota), acquisition, questions, weights, seed, score_columns, excluded_labelled,
                 excluded_queued, edges, magnitude_column, per_tile_quota is not None)
    for path in files:
        file_schema, file_meta = _file_metadata(path)
        for key in _METADATA_KEYS:
            if file_meta.get(key) != meta.get(key):
                raise ValueError(f"{path}: {key} {file_meta.get(key)!r} differs from {meta.get(key)!r} in "
                                 f"{files[0]}; rank one model's catalogue of one release at a time")
        missing = [c for c in columns if c not in file_schema.names]
        if missing:
            raise ValueError(f"{path}: missing catalogue column(s) {', '.join(missing)}")
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            scan.offer(batch, path, offset)
            offset += batch.num_rows

    created = created or datetime.now(UTC)
    run_id = created.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    table = _queue_table(scan.best.rows, questions, acquisition, meta, created, run_id,
                         magnitude_column if edges is not None else None)
    if pc.count_distinct(table.column("id_str")).as_py() != table.num_rows:
        twice = sorted(i for i, n in Counter(table.column("id_str").to_pylist()).items() if n > 1)
        raise ValueError(f"{catalogue}: id_str {', '.join(twice[:5])} appear(s) in more than one catalogue row")
    settings: dict[str, Any] = {
        "run_id": run_id, "catalogue": str(catalogue), "top_k": top_k, "acquisition": acquisition,
        "weights": dict(weights or {}), "seed": seed, "per_tile_quota": per_tile_quota, "per_bin_quota": per_bin_quota,
        "magnitude_bins": None if edges is None else edges.tolist(), "magnitude_column": magnitude_column,
        "exclude_votes": None if exclude_votes is None else str(exclude_votes), "min_votes": min_votes,
        "rows_read": scan.rows, "skipped_flagged": scan.flagged, "skipped_labelled": scan.labelled,
        "skipped_queued": scan.queued, "code_version": __version__, **meta,
    }
    table = table.replace_schema_metadata({"zoobot_pipeline.rank": json.dumps(settings)})
    if queue_dir is not None:
        _write_queue(table, Path(queue_dir), run_id)
    return table


def _queue_table(rows: dict[str, np.ndarray] | None, questions: list[str], acquisition: str, meta: dict[str, str],
                 created: datetime, run_id: str, magnitude_column: str | None) -> pa.Table:
    n = 0 if rows is None else len(rows["score"])

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
        "model_sha256": pa.array([meta.get("model_sha256")] * n, pa.string()),
        "release": pa.array([meta.get("release")] * n, pa.string()),
        "created": pa.array([created] * n, pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    schema = QUEUE_SCHEMA
    if magnitude_column is not None:
        data[magnitude_column] = pa.array(column("magnitude"), pa.float64())
        schema = schema.append(pa.field(magnitude_column, pa.float64(), metadata={"unit": "mag"}))
    return pa.table(data, schema=schema)


def _write_queue(table: pa.Table, queue_dir: Path, run_id: str) -> None:
    run_path = queue_dir / RUNS_DIR / f"{run_id}.parquet"
    if run_path.exists():
        raise ValueError(f"{run_path}: a run with this id already exists")
    write_parquet_atomic(table, run_path)
    write_parquet_atomic(table, queue_dir / QUEUE_FILE)
