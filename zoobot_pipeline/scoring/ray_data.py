"""Scoring on Ray Data: chunks are read and preprocessed in tasks and scored by a pool of onnxruntime actors.

The dataset has one row per chunk (:mod:`.chunks`): ``from_items`` of chunk descriptors (:func:`chunk_items`: tile
id and file, and where the chunk's sources are, a :class:`~zoobot_pipeline.data.release.TileRows` naming the
catalogue files that hold them and the row range, never the rows) -> ``map_batches`` of :func:`_read` (CPU tasks,
one chunk per call: reads the chunk's sources, cuts and preprocesses) ->
``map_batches`` of :class:`_Scorer` (an actor pool, ``ActorPoolStrategy(size=n)``, one
:class:`~.chunks.ChunkScorer` per actor) -> rows holding each chunk's catalogue rows as Arrow IPC bytes, iterated on
the driver in input order (``preserve_order``), so that the driver holds one tile's rows at a time and writes each
tile as soon as its last chunk arrives. Arrays travel as Arrow IPC or raw float32 bytes, never pickled.

Streaming: the descriptors are made lazily from the plan and run as a sequence of datasets of at most
:data:`CHUNKS_PER_DATASET` chunks each (one after the other, results in order), so that the driver holds at most that
many descriptors (a few hundred bytes each) whatever the size of the release; each dataset starts its own actor pool
(a second or so, against hours of scoring per dataset at full size).

Resources: actors reserve :data:`ACTOR_CPUS` (0.5) CPU, so that read tasks (1 CPU each) can always be scheduled; when
actors hold every CPU, Ray Data waits forever for read tasks. Each actor runs onnxruntime with ``threads`` intra-op
threads (default 2). Pool size: ``workers``, else one actor per two CPUs of the cluster, or per ``gpus_per_worker``
of its GPUs. The tiles and the package must be readable at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from zoobot_pipeline.data.release import TileRows
from zoobot_pipeline.errors import PackageError, ScoringError, UnavailableError
from zoobot_pipeline.raycluster import ray_cluster
from zoobot_pipeline.runtime.package import ModelPackage
from zoobot_pipeline.runtime.session import check_device
from zoobot_pipeline.scoring.chunks import (
    ChunkConfig,
    ChunkScorer,
    PreparedChunk,
    ScoredChunk,
    TileJob,
    open_tile,
    prepare_chunk,
)

__all__ = ["ACTOR_CPUS", "CHUNKS_PER_DATASET", "chunk_items", "pool_size", "ray_chunks"]

ACTOR_CPUS = 0.5
DEFAULT_ACTOR_THREADS = 2
CHUNKS_PER_DATASET = 4096  # 10^6 galaxies at the default chunk size; descriptors held by the driver at once

_PREPARED = pa.schema([("tile_id", pa.string()), ("chunk", pa.int64()), ("n_chunks", pa.int64()),
                       ("rows", pa.large_binary()), ("images", pa.large_binary()), ("shape", pa.list_(pa.int64())),
                       ("tile_error", pa.string())])
_SCORED = pa.schema([("tile_id", pa.string()), ("chunk", pa.int64()), ("n_chunks", pa.int64()),
                     ("table", pa.large_binary()), ("tile_error", pa.string()), ("node", pa.string())])


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _read(batch: pa.Table, config: ChunkConfig) -> pa.Table:
    """Ray Data task: cut and preprocess each chunk of ``batch`` (one row per chunk)."""
    out = []
    for row in batch.to_pylist():
        sources = TileRows.from_json(row["rows"]).slice(row["offset"], row["length"])
        tile, error = open_tile(row["tile_id"], row["path"], config.bands)
        try:
            prepared = prepare_chunk(tile, error, sources, config)
        finally:
            if tile is not None:
                tile.close()
        p = config.preprocessing
        images = (np.stack(prepared.images) if len(prepared.images)
                  else np.zeros((0, p.n_channels, p.input_size, p.input_size), np.float32))
        out.append({"tile_id": row["tile_id"], "chunk": row["chunk"], "n_chunks": row["n_chunks"],
                    "rows": _to_ipc(prepared.rows), "images": images.tobytes(), "shape": list(images.shape),
                    "tile_error": prepared.tile_error})
    return pa.Table.from_pylist(out, schema=_PREPARED)


class _Scorer:
    """Ray Data actor: one onnxruntime session; checks that this node's package is the driver's."""

    def __init__(self, package_path: str, sha256: str, options: dict[str, Any]) -> None:
        package = ModelPackage.open(package_path)
        if package.sha256 != sha256:
            raise PackageError(f"{package_path}: model sha256 {package.sha256[:12]}... on this node differs from the "
                               f"driver's {sha256[:12]}...")
        self.scorer = ChunkScorer(package, **options)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            images = np.frombuffer(row["images"], dtype=np.float32).reshape(row["shape"])
            table = self.scorer.score(PreparedChunk(_from_ipc(row["rows"]), images, row["tile_error"]))
            out.append({"tile_id": row["tile_id"], "chunk": row["chunk"], "n_chunks": row["n_chunks"],
                        "table": _to_ipc(table), "tile_error": row["tile_error"], "node": self.node})
        return pa.Table.from_pylist(out, schema=_SCORED)


def _device_problem(device: str) -> str | None:
    """Ray task: why ``device`` cannot be used on the node running it, or None."""
    try:
        check_device(device)
    except RuntimeError as err:
        return f"on Ray node {ray.get_runtime_context().get_node_id()[:12]}: {err}"
    return None


def pool_size(resources: dict[str, float], workers: int | None, gpus_per_worker: float) -> int:
    """Actors for a cluster's total ``resources``; a clear error when they cannot all be scheduled beside a read
    task."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_worker > 0:
        size = workers or int(gpus // gpus_per_worker)
        if size < 1 or size * gpus_per_worker > gpus:
            raise UnavailableError(f"{size or 1} actor(s) x {gpus_per_worker:g} GPU do not fit the cluster's "
                                   f"{gpus:g} GPU(s)")
    else:
        size = workers or max(1, int(cpus // 2))
    if size * ACTOR_CPUS + 1 > cpus:
        raise UnavailableError(f"{size} actor(s) x {ACTOR_CPUS} CPU plus one read task need more than the cluster's "
                         f"{cpus:g} CPU(s); use fewer workers")
    return size


def chunk_items(jobs: list[TileJob], chunk_size: int) -> Iterator[dict[str, Any]]:
    """One descriptor per chunk, in order: tile id, tile file, chunk index and count, and where its sources are
    (``rows``: :class:`~zoobot_pipeline.data.release.TileRows` JSON naming only the files this chunk reads, ``offset``
    and ``length`` in them); jobs must carry ``TileRows``, not rows."""
    for job in jobs:
        if not isinstance(job.sources, TileRows):
            raise TypeError(f"tile {job.tile_id}: a Ray job names where its sources are (TileRows), not the rows")
        n_chunks = job.n_chunks(chunk_size)
        for index in range(n_chunks):
            rows, offset = job.sources.narrow(index * chunk_size, chunk_size)
            yield {"tile_id": job.tile_id, "path": str(job.path), "chunk": index, "n_chunks": n_chunks,
                   "rows": rows.to_json(), "offset": offset, "length": chunk_size}


def ray_chunks(jobs: list[TileJob], package: ModelPackage, config: ChunkConfig, chunk_size: int,
               options: dict[str, Any], *, ray_address: str | None = None, workers: int | None = None,
               gpus_per_worker: float = 0.0) -> Iterator[ScoredChunk]:
    """Scored chunks of ``jobs`` in order, computed on Ray Data (connects to ``ray_address``, or starts a local Ray,
    unless Ray is already initialised; a Ray started here is shut down at the end)."""
    with ray_cluster(ray_address, include_dashboard=False, log_to_driver=False):
        size = pool_size(ray.cluster_resources(), workers, gpus_per_worker)
        device = options.get("device", "cpu")
        if device != "cpu":
            probe = ray.remote(num_cpus=0, num_gpus=gpus_per_worker)(_device_problem)
            problem = ray.get(probe.remote(device))
            if problem is not None:
                raise ScoringError(problem)
        actor_options = {**options, "threads": options.get("threads") or DEFAULT_ACTOR_THREADS}
        items = chunk_items(jobs, chunk_size)
        while window := list(itertools.islice(items, CHUNKS_PER_DATASET)):
            dataset = ray.data.from_items(window, override_num_blocks=len(window))
            dataset.context.execution_options.preserve_order = True
            dataset.context.enable_progress_bars = False
            scored = (
                dataset.map_batches(_read, batch_size=1, batch_format="pyarrow", fn_kwargs={"config": config})
                .map_batches(_Scorer, batch_size=1, batch_format="pyarrow",
                             compute=ray.data.ActorPoolStrategy(size=size), num_cpus=ACTOR_CPUS,
                             num_gpus=gpus_per_worker or None,
                             fn_constructor_kwargs={"package_path": str(package.path.resolve()),
                                                    "sha256": package.sha256, "options": actor_options})
            )
            for row in scored.iter_rows():
                yield ScoredChunk(row["tile_id"], row["chunk"], row["n_chunks"], _from_ipc(row["table"]),
                                  row["tile_error"], row["node"])
