"""Scoring on Ray Data: chunks are read and preprocessed in tasks and scored by a pool of onnxruntime actors.

The dataset has one row per chunk (:mod:`.chunks`): ``from_items`` of chunk descriptors (:func:`chunk_items`: tile
id and file, and where the chunk's sources are, a :class:`~zoobot_pipeline.data.release.TileRows` naming the
catalogue files that hold them and the row range, never the rows) -> ``map_batches`` of :func:`_read` (CPU tasks,
one chunk per call: reads the chunk's sources, cuts and preprocesses) ->
``map_batches`` of :class:`_Scorer` (an actor pool, ``ActorPoolStrategy(size=n)``, one
:class:`~.chunks.ChunkScorer` per actor) -> rows holding each chunk's catalogue rows as Arrow IPC bytes, iterated on
the driver in input order (``preserve_order``), so that the driver holds one tile's rows at a time and writes each
tile as soon as its last chunk arrives. Arrays travel as Arrow IPC or raw float32 bytes, never pickled; a read
task prepares its chunks' images into one block that becomes the Arrow binary column as it is, and the actor reads
each chunk's images from the Arrow buffer in place (no copy on either side beyond Ray's own into its object store).

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
    image_buffer,
    open_tile,
    prepare_chunk,
)

__all__ = ["ACTOR_CPUS", "CHUNKS_PER_DATASET", "chunk_items", "pool_size", "ray_chunks"]

ACTOR_CPUS = 0.5
DEFAULT_ACTOR_THREADS = 2
CHUNKS_PER_DATASET = 4096  # 10^6 galaxies at the default chunk size; descriptors held by the driver at once

_DESCRIBED = pa.schema([("tile_id", pa.string()), ("chunk", pa.int64()), ("n_chunks", pa.int64()),
                        ("rows", pa.large_binary()), ("shape", pa.list_(pa.int64())), ("tile_error", pa.string())])
_IMAGES = pa.field("images", pa.large_binary())
_SCORED = pa.schema([("tile_id", pa.string()), ("chunk", pa.int64()), ("n_chunks", pa.int64()),
                     ("table", pa.large_binary()), ("tile_error", pa.string()), ("node", pa.string())])


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _binary_parts(data: np.ndarray, sizes: list[int]) -> pa.LargeBinaryArray:
    """The bytes of C-contiguous ``data`` as consecutive binary values of ``sizes`` bytes each, without a copy."""
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    if offsets[-1] != data.nbytes:
        raise ValueError(f"parts of {offsets[-1]} bytes in all do not cover an array of {data.nbytes} bytes")
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(sizes),
                                            [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _read(batch: pa.Table, config: ChunkConfig) -> pa.Table:
    """Ray Data task: cut and preprocess each chunk of ``batch`` (one row per chunk). The chunks' images go into one
    block, each chunk's after the last one's, and leave as the ``images`` column without being copied."""
    descriptors = batch.to_pylist()
    sources = [TileRows.from_json(d["rows"]).slice(d["offset"], d["length"]) for d in descriptors]
    block = image_buffer(config, sum(chunk.num_rows for chunk in sources))
    out, kept = [], 0
    for descriptor, chunk_sources in zip(descriptors, sources, strict=True):
        tile, error = open_tile(descriptor["tile_id"], descriptor["path"], config.bands)
        try:
            prepared = prepare_chunk(tile, error, chunk_sources, config, buffer=block[kept:])
        finally:
            if tile is not None:
                tile.close()
        out.append({"tile_id": descriptor["tile_id"], "chunk": descriptor["chunk"],
                    "n_chunks": descriptor["n_chunks"], "rows": _to_ipc(prepared.rows),
                    "shape": [len(prepared.images), *block.shape[1:]], "tile_error": prepared.tile_error})
        kept += len(prepared.images)
    image_bytes = block[0].nbytes if len(block) else 0
    images = _binary_parts(block[:kept], [row["shape"][0] * image_bytes for row in out])
    return pa.Table.from_pylist(out, schema=_DESCRIBED).append_column(_IMAGES, images)


def _binary_values(column: pa.ChunkedArray) -> Iterator[pa.Buffer]:
    """Each value of a ``large_binary`` column, as a view of the column's data (a scalar's ``as_buffer`` copies)."""
    for array in column.chunks:
        _, offsets, data = array.buffers()
        bounds = np.frombuffer(offsets, np.int64)[array.offset : array.offset + len(array) + 1]
        for start, stop in itertools.pairwise(bounds.tolist()):
            yield data.slice(start, stop - start) if data is not None else pa.py_buffer(b"")


def _chunks(batch: pa.Table) -> Iterator[tuple[dict[str, Any], PreparedChunk]]:
    """Each row of a batch :func:`_read` made, as its fields and its chunk, the images read in place."""
    rows = batch.drop_columns([_IMAGES.name]).to_pylist()
    for row, images in zip(rows, _binary_values(batch.column(_IMAGES.name)), strict=True):
        chunk_images = np.frombuffer(images, dtype=np.float32).reshape(row["shape"])
        yield row, PreparedChunk(_from_ipc(row["rows"]), chunk_images, row["tile_error"])


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
        for row, chunk in _chunks(batch):
            table = self.scorer.score(chunk)
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
