"""The in-process scoring path: three stages on threads, so that the model never waits for the CPU work around it.

1. ``prepare``: worker threads cut and preprocess the next chunks (:func:`prepared_chunks`; the compiled
   preprocessing kernels release the GIL, the cutting holds it for about a third of its time);
2. ``model``: the calling thread runs the model on one chunk (onnxruntime releases the GIL);
3. ``columns``: one thread turns the previous chunk's model outputs into catalogue rows (vote-space uncertainties in
   numba kernels that release the GIL).

At most ``workers + 1`` prepared chunks wait, and one chunk's outputs, so memory stays bounded whatever the size of
the release; the chunks' image blocks are reused once the model has run (:class:`ImageBuffers`), so that preparing
does not fault in fresh pages for every chunk. Each prepare worker keeps the tile it last read open (memory-mapped,
with its own WCS objects: astropy's WCS is not shared between threads) and all are closed at the end. With
``workers=0`` every stage runs in the calling thread, one chunk after another, and each chunk's preprocessing is shared
by ``kernel_threads`` threads (the model's cores are idle meanwhile). A :class:`Timeline` records when each stage ran
(``benchmarks/scoring_throughput.py`` prints it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from zoobot_pipeline.data.release import Tile
from zoobot_pipeline.scoring.chunks import (
    ChunkConfig,
    ChunkScorer,
    KernelThreads,
    ModelOutputs,
    PreparedChunk,
    ScoredChunk,
    TileJob,
    image_buffer,
    open_tile,
    prepare_chunk,
)

__all__ = ["MAX_PREP_WORKERS", "ImageBuffers", "Stage", "Timeline", "prepared_chunks", "scored_chunks"]

MAX_PREP_WORKERS = 256


@dataclass(frozen=True)
class Stage:
    """One stage of one chunk: ``name`` (``prepare``, ``model`` or ``columns``), the thread it ran on, start and end
    (seconds of ``time.perf_counter``) and the galaxies it handled."""

    name: str
    thread: str
    start: float
    end: float
    galaxies: int


@dataclass
class Timeline:
    """Stages recorded by a scoring run (thread-safe appends)."""

    stages: list[Stage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, start: float, galaxies: int) -> None:
        """Record stage ``name`` of the current thread from ``start`` until now."""
        stage = Stage(name, threading.current_thread().name, start, time.perf_counter(), galaxies)
        with self._lock:
            self.stages.append(stage)

    def busy_seconds(self, name: str) -> float:
        """Total seconds spent in stage ``name`` (summed over threads)."""
        return sum(s.end - s.start for s in self.stages if s.name == name)

    def overlap_seconds(self, first: str, second: str) -> float:
        """Seconds during which a ``first`` stage and a ``second`` stage ran at the same time."""
        spans = [(s.start, s.end) for s in self.stages if s.name == second]
        return sum(max(0.0, min(a.end, end) - max(a.start, start))
                   for a in self.stages if a.name == first for start, end in spans)


class ImageBuffers:
    """Image blocks of chunks (:func:`~.chunks.image_buffer`), handed back once a chunk's images are no longer read
    and reused for the next chunk; as many exist as chunks are in flight at once (thread-safe)."""

    def __init__(self, config: ChunkConfig, chunk_size: int) -> None:
        self.config, self.chunk_size = config, chunk_size
        self.free: deque[np.ndarray] = deque()

    def take(self) -> np.ndarray:
        """A free block, or a new one."""
        try:
            return self.free.pop()
        except IndexError:
            return image_buffer(self.config, self.chunk_size)

    def give(self, buffer: np.ndarray | None) -> None:
        """Hand back a block whose images nothing reads any more."""
        if buffer is not None:
            self.free.append(buffer)


class _TileCache:
    """Each thread's currently open tile; every tile opened is closed by :meth:`close`."""

    def __init__(self, bands: tuple[str, ...]) -> None:
        self.bands = bands
        self.local = threading.local()
        self.opened: list[Tile] = []
        self.lock = threading.Lock()

    def get(self, job: TileJob) -> tuple[Tile | None, str | None]:
        current = getattr(self.local, "current", None)
        if current is None or current[0] != job.tile_id:
            if current is not None and current[1] is not None:
                with self.lock:
                    self.opened.remove(current[1])
                current[1].close()
            tile, error = open_tile(job.tile_id, job.path, self.bands)
            if tile is not None:
                with self.lock:
                    self.opened.append(tile)
            self.local.current = current = (job.tile_id, tile, error)
        return current[1], current[2]

    def close(self) -> None:
        with self.lock:
            for tile in self.opened:
                tile.close()
            self.opened.clear()


def _prepare(cache: _TileCache, job: TileJob, index: int, config: ChunkConfig, chunk_size: int,
             timeline: Timeline | None, kernels: KernelThreads | None = None,
             buffers: ImageBuffers | None = None) -> PreparedChunk:
    start = time.perf_counter()
    tile, error = cache.get(job)
    prepared = prepare_chunk(tile, error, job.chunk(index, chunk_size), config, kernels,
                             None if buffers is None else buffers.take())
    if timeline is not None:
        timeline.add("prepare", start, len(prepared.images))
    return prepared


def prepared_chunks(jobs: Iterable[TileJob], config: ChunkConfig, chunk_size: int, workers: int = 1,
                    timeline: Timeline | None = None, kernel_threads: int = 1, buffers: ImageBuffers | None = None,
                    ) -> Iterator[tuple[TileJob, int, int, PreparedChunk]]:
    """``(job, chunk index, number of chunks, prepared chunk)`` for every chunk of ``jobs``, in order.

    ``workers`` threads prepare up to ``workers + 1`` chunks ahead of the chunk the consumer holds; 0 prepares each
    chunk in the calling thread when it is asked for, its preprocessing shared by ``kernel_threads`` threads.
    ``timeline`` records each chunk's ``prepare`` stage. With ``buffers`` the images are views of its blocks, which
    the consumer hands back (:meth:`ImageBuffers.give`) when it no longer reads them.
    """
    if not 0 <= workers <= MAX_PREP_WORKERS:
        raise ValueError(f"prep workers must be between 0 and {MAX_PREP_WORKERS}, got {workers}")
    cache = _TileCache(config.bands)
    tasks = ((job, index, job.n_chunks(chunk_size)) for job in jobs for index in range(job.n_chunks(chunk_size)))
    try:
        if workers == 0:
            with KernelThreads(kernel_threads) as kernels:
                for job, index, n_chunks in tasks:
                    yield job, index, n_chunks, _prepare(cache, job, index, config, chunk_size, timeline, kernels,
                                                         buffers)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
            pending: deque[tuple[TileJob, int, int, Future[PreparedChunk]]] = deque()
            try:
                for job, index, n_chunks in tasks:
                    pending.append((job, index, n_chunks,
                                    pool.submit(_prepare, cache, job, index, config, chunk_size, timeline, None,
                                                buffers)))
                    if len(pending) > workers:
                        job_, index_, n_, future = pending.popleft()
                        yield job_, index_, n_, future.result()
                while pending:
                    job_, index_, n_, future = pending.popleft()
                    yield job_, index_, n_, future.result()
            finally:
                for *_, future in pending:
                    future.cancel()
    finally:
        cache.close()


def _columns(scorer: ChunkScorer, prepared: PreparedChunk, model: ModelOutputs, timeline: Timeline | None) -> pa.Table:
    start = time.perf_counter()
    table = scorer.table(prepared, model)
    if timeline is not None:
        timeline.add("columns", start, len(model.ids))
    return table


def scored_chunks(jobs: Iterable[TileJob], scorer: ChunkScorer, config: ChunkConfig, chunk_size: int,
                  workers: int = 1, timeline: Timeline | None = None, kernel_threads: int = 1,
                  ) -> Iterator[ScoredChunk]:
    """Every chunk of ``jobs`` scored by ``scorer``, in order: ``workers`` threads prepare, the calling thread runs
    the model, one more thread makes the catalogue rows (see the module docstring); ``workers=0`` runs each chunk's
    stages one after another in the calling thread, preprocessing on ``kernel_threads`` threads. Image blocks are
    reused from chunk to chunk."""
    buffers = ImageBuffers(config, chunk_size)
    chunks = prepared_chunks(jobs, config, chunk_size, workers, timeline, kernel_threads, buffers)
    pending: deque[tuple[TileJob, int, int, PreparedChunk, Future[pa.Table]]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="columns") as finisher:
        try:
            for job, index, n_chunks, prepared in chunks:
                start = time.perf_counter()
                model = scorer.model_outputs(prepared)
                buffers.give(prepared.buffer)  # the rows are made from the outputs, not the images
                if timeline is not None:
                    timeline.add("model", start, len(model.ids))
                if workers == 0:
                    yield ScoredChunk(job.tile_id, index, n_chunks, _columns(scorer, prepared, model, timeline),
                                      prepared.tile_error)
                    continue
                pending.append((job, index, n_chunks, prepared,
                                finisher.submit(_columns, scorer, prepared, model, timeline)))
                if len(pending) > 1:
                    job_, index_, n_, prepared_, table = pending.popleft()
                    yield ScoredChunk(job_.tile_id, index_, n_, table.result(), prepared_.tile_error)
            while pending:
                job_, index_, n_, prepared_, table = pending.popleft()
                yield ScoredChunk(job_.tile_id, index_, n_, table.result(), prepared_.tile_error)
        finally:
            chunks.close()
