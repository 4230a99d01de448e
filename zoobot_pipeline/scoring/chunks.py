"""One chunk of one tile, the unit of scoring work in both execution paths.

A chunk is up to ``chunk_size`` consecutive sources of a tile, in catalogue order. :func:`prepare_chunk` cuts and
preprocesses them (CPU work: a Ray Data task in the Ray path); :class:`ChunkScorer` runs the model and turns its
outputs into catalogue rows (an actor in the Ray path). Both paths call these on the same chunks, so they write the
same catalogue: the MC-dropout masks are per galaxy, and the sampled vote-space estimates of a call depend only on
the chunk's scored galaxies and their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_pipeline.catalogue import BASE_FIELDS, FLAG_FIELDS, catalogue_schema
from zoobot_pipeline.data.cutouts import MAX_NAN_FRACTION, CutoutBatch, cut_batch
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess_windows
from zoobot_pipeline.data.release import ReleaseError, Tile, TileRows
from zoobot_pipeline.runtime.package import ModelPackage
from zoobot_pipeline.runtime.session import PackageSession, galaxy_seeds
from zoobot_pipeline.scoring.columns import OutputColumns

__all__ = ["ChunkConfig", "ChunkScorer", "KernelThreads", "ModelOutputs", "PreparedChunk", "ScoredChunk", "TileJob",
           "failure_reason", "image_buffer", "open_tile", "prepare_chunk"]

_ROW_FIELDS = [*BASE_FIELDS, *FLAG_FIELDS]
CUT_BATCH = 32


@dataclass(frozen=True)
class ChunkConfig:
    """How to cut and preprocess: the release's bands and pixel scale, and the model's preprocessing (cutout sizing
    included)."""

    bands: tuple[str, ...]
    pixel_scale_arcsec: float
    preprocessing: PreprocessingConfig


@dataclass(frozen=True)
class TileJob:
    """A tile to score: its id, file and sources (``id_str``, ``ra``, ``dec``, ``tile_id``, optional size column):
    the rows, or where to read them (:class:`~zoobot_pipeline.data.release.TileRows`: the files holding the tile of
    a partitioned catalogue, read a chunk at a time, so that a plan holds no rows). Both have ``num_rows`` and
    ``slice``."""

    tile_id: str
    path: Path
    sources: pa.Table | TileRows

    def n_chunks(self, chunk_size: int) -> int:
        """Number of chunks of ``chunk_size`` sources."""
        return -(-self.sources.num_rows // chunk_size)

    def chunk(self, index: int, chunk_size: int) -> pa.Table:
        """Sources of chunk ``index`` (a zero-copy slice, or read from the files that hold them)."""
        return self.sources.slice(index * chunk_size, chunk_size)


@dataclass
class ScoredChunk:
    """Catalogue rows of chunk ``index`` of ``n_chunks`` of a tile, the tile's read error if any, and where it was
    scored (a Ray node id, or ``"local"``)."""

    tile_id: str
    index: int
    n_chunks: int
    table: pa.Table
    tile_error: str | None
    scored_on: str = "local"


@dataclass
class PreparedChunk:
    """A chunk ready for the model: ``rows`` (id, position, tile, flags; null ``flag`` = to score) and ``images``,
    one ``(C, H, W)`` image per unflagged row in row order (a list of arrays, or one array); ``tile_error`` when the
    tile could not be read.

    A list is stacked one model batch at a time; an array's batches are read in place. Stacking a whole chunk into
    fresh memory cost more than the cutting itself (faulting in new pages for every chunk, see
    ``benchmarks/README.md``), so the images are usually the first rows of ``buffer``, a block the caller hands back
    for the next chunk once the model has run (or, on Ray, a block shipped to the actor as it is).
    """

    rows: pa.Table
    images: Sequence[np.ndarray] | np.ndarray
    tile_error: str | None = None
    buffer: np.ndarray | None = None


class KernelThreads:
    """``count`` threads (the caller's and ``count - 1`` more) that share one compiled call over a batch of windows,
    each a contiguous part: the kernels release the GIL, so when nothing else runs beside the preparing thread (the
    in-process path on a CPU, where the stages take turns) preparing uses every core, as the model does."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"kernel threads must be >= 1, got {count}")
        self.count = count
        self._pool = ThreadPoolExecutor(count - 1, thread_name_prefix="kernel") if count > 1 else None

    def run(self, n: int, work: Callable[[int, int], object]) -> None:
        """``work(start, stop)`` over ``range(n)`` in up to ``count`` contiguous parts at once; the caller runs the
        first."""
        bounds = np.linspace(0, n, min(self.count, max(n, 1)) + 1).astype(int)
        futures = [] if self._pool is None else [self._pool.submit(work, int(a), int(b))
                                                 for a, b in zip(bounds[1:-1], bounds[2:], strict=True)]
        try:
            work(int(bounds[0]), int(bounds[1]))
        finally:
            for future in futures:
                future.result()

    def close(self) -> None:
        """Stop the extra threads."""
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> KernelThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def failure_reason(err: BaseException) -> str:
    """One line for a flag or the failures table: the message of a release error (it names the file), else the
    exception type and message."""
    text = str(err) if isinstance(err, ReleaseError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def open_tile(tile_id: str, path: str | Path, bands: Sequence[str]) -> tuple[Tile | None, str | None]:
    """``(tile, None)``, or ``(None, reason)`` when the tile cannot be opened (missing, truncated, no WCS, missing
    band, or anything else astropy refuses): one bad tile must not stop a release."""
    try:
        return Tile(tile_id, Path(path), bands), None
    except Exception as err:  # noqa: BLE001 - any failure to read a tile is recorded, not raised
        return None, failure_reason(err)


def _preprocess(batch: CutoutBatch, keep: np.ndarray, config: ChunkConfig, kernels: KernelThreads | None,
                block: np.ndarray) -> None:
    """Preprocess windows ``keep`` of ``batch`` into ``block`` ``(len(keep), C, S, S)``, split over ``kernels``."""
    p = config.preprocessing
    if kernels is None or kernels.count == 1:
        preprocess_windows(batch.data, batch.offsets[keep], batch.sizes[keep], batch.n_bands, p, config.bands,
                           out=block)
        return

    def part(start: int, stop: int) -> None:
        preprocess_windows(batch.data, batch.offsets[keep[start:stop]], batch.sizes[keep[start:stop]], batch.n_bands,
                           p, config.bands, out=block[start:stop])

    kernels.run(len(keep), part)


def image_buffer(config: ChunkConfig, chunk_size: int) -> np.ndarray:
    """A block for the images of a chunk of ``chunk_size`` sources (see :class:`PreparedChunk`)."""
    p = config.preprocessing
    return np.empty((chunk_size, p.n_channels, p.input_size, p.input_size), np.float32)


def prepare_chunk(tile: Tile | None, tile_error: str | None, sources: pa.Table, config: ChunkConfig,
                  kernels: KernelThreads | None = None, buffer: np.ndarray | None = None) -> PreparedChunk:
    """Cut and preprocess ``sources`` (``id_str``, ``ra``, ``dec``, ``tile_id``, optional size column) from ``tile``;
    flag what cannot be scored. With ``tile_error`` (or a failure while cutting) every row is ``tile_failed``.

    Cutouts are cut and preprocessed :data:`CUT_BATCH` at a time, each batch in a few compiled calls that release the
    GIL (so preparing threads scale; ``kernels`` share each batch's preprocessing), and at most that many raw cutouts
    are held at once. The images are the same whatever the threads. With ``buffer`` (:func:`image_buffer`, at least
    as many images as ``sources`` has rows) the images are ``buffer[:len(images)]``, an array, else a list of views of
    new arrays.
    """
    n = sources.num_rows
    edge: list[bool | None] = [None] * n
    nan_fraction: list[float | None] = [None] * n
    flags: list[str | None] = [None] * n
    images: list[np.ndarray] = []
    p = config.preprocessing
    if buffer is not None and (len(buffer) < n or buffer.shape[1:] != (p.n_channels, p.input_size, p.input_size)):
        raise ValueError(f"an image buffer of shape {buffer.shape} cannot hold {n} images of "
                         f"{(p.n_channels, p.input_size, p.input_size)}")
    for start in range(0, n if tile_error is None else 0, CUT_BATCH):
        assert tile is not None
        try:
            batch = cut_batch(tile, sources.slice(start, CUT_BATCH), p.cutout, config.pixel_scale_arcsec)
        except Exception as err:  # noqa: BLE001 - e.g. an I/O error reading the memory-mapped tile
            tile_error = failure_reason(err)
            break
        edge[start : start + len(batch)] = batch.edge.tolist()
        nan_fraction[start : start + len(batch)] = batch.nan_fraction.tolist()
        for g in np.flatnonzero(batch.rejected):
            flags[start + g] = ("off_tile" if batch.off_tile[g]
                                else f"nan_fraction {batch.nan_fraction[g]:.2f} >= {MAX_NAN_FRACTION}")
        keep = np.flatnonzero(~batch.rejected)
        block = (np.empty((len(keep), p.n_channels, p.input_size, p.input_size), np.float32) if buffer is None
                 else buffer[len(images) : len(images) + len(keep)])
        try:
            _preprocess(batch, keep, config, kernels, block)
        except ValueError as err:
            reason = f"preprocessing_failed: {failure_reason(err)}"
            for g in keep:
                flags[start + g] = reason
            continue
        images.extend(block)
    if tile_error is not None:
        edge, nan_fraction, flags, images = [None] * n, [None] * n, [f"tile_failed: {tile_error}"] * n, []
    rows = pa.Table.from_arrays(
        [sources["id_str"], sources["ra"], sources["dec"], sources["tile_id"], pa.array(edge, pa.bool_()),
         pa.array(nan_fraction, pa.float32()), pa.array(flags, pa.string())],
        schema=pa.schema(_ROW_FIELDS))
    # with a buffer, the same views as one array: the model reads its batches from it in place
    return PreparedChunk(rows, images if buffer is None else buffer[: len(images)], tile_error, buffer)


@dataclass(frozen=True)
class ModelOutputs:
    """What the model gave for a chunk: the indices of its unflagged ``rows``, their ``ids`` and ``outputs``
    ``(len(rows), S, n_outputs)``."""

    rows: np.ndarray
    ids: list[str]
    outputs: np.ndarray


def _scatter(values: np.ndarray, rows: np.ndarray, n: int, field: pa.Field) -> pa.Array:
    """A column of ``n`` rows holding ``values`` at ``rows`` and nulls elsewhere."""
    full = np.full(n, None if pa.types.is_string(field.type) else np.nan,
                   dtype=object if pa.types.is_string(field.type) else np.float32)
    full[rows] = values
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return pa.array(full, type=field.type, mask=mask)


class ChunkScorer:
    """Runs one model package on prepared chunks and returns catalogue rows (schema :func:`catalogue_schema`)."""

    def __init__(self, package: ModelPackage, *, variant: str = "fp32", device: str = "cpu",
                 threads: int | None = None, batch_size: int = 32, mc_samples: int | None = None,
                 seed: int = 0) -> None:
        self.session = PackageSession(package, variant=variant, device=device, threads=threads)
        self.columns = OutputColumns.for_package(package)
        self.schema = catalogue_schema(self.columns.fields())
        self.batch_size = batch_size
        self.mc_samples = package.mc_samples if mc_samples is None else mc_samples
        self.seed = seed
        self._buffer: np.ndarray | None = None

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, ids: list[str]) -> np.ndarray:
        """Model outputs ``(n, S, n_outputs)`` for ``(C, H, W)`` images, in batches of ``batch_size`` (slices of an
        array, or a list's images stacked into one reused buffer)."""
        outputs = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            if not isinstance(batch, np.ndarray):
                if self._buffer is None or len(self._buffer) < len(batch):
                    self._buffer = np.empty((self.batch_size, *self.session.package.input_shape), np.float32)
                batch = np.stack(batch, out=self._buffer[: len(batch)])
            outputs.append(self.session.predict(batch, ids[i : i + self.batch_size], self.mc_samples, self.seed))
        if outputs:
            return np.concatenate(outputs)
        return np.zeros((0, max(self.mc_samples, 1), len(self.columns.output_names)), np.float32)

    def model_outputs(self, chunk: PreparedChunk) -> ModelOutputs:
        """The model half of :meth:`score`: outputs for the chunk's unflagged rows."""
        to_score = np.flatnonzero(pc.is_null(chunk.rows["flag"]).to_numpy(zero_copy_only=False))
        ids = pc.take(chunk.rows["id_str"], pa.array(to_score)).to_pylist()
        return ModelOutputs(to_score, ids, self.predict(chunk.images, ids))

    def table(self, chunk: PreparedChunk, model: ModelOutputs) -> pa.Table:
        """The catalogue half of :meth:`score`: model columns for the scored rows, nulls for the rest."""
        rows, to_score, ids, outputs = chunk.rows, model.rows, model.ids, model.outputs
        finite = np.isfinite(outputs).all(axis=(1, 2))
        flags = rows["flag"].to_pylist()
        for i in to_score[~finite]:
            flags[i] = "outputs_not_finite"
        scored = to_score[finite]
        seeds = galaxy_seeds([ids[i] for i in np.flatnonzero(finite)], self.seed)
        values = self.columns.compute(outputs[finite], seeds)
        n = rows.num_rows
        model_columns = [_scatter(values[field.name], scored, n, field) for field in self.columns.fields()]
        base = [rows[field.name] for field in BASE_FIELDS]
        quality = [rows["edge"], rows["nan_fraction"], pa.array(flags, pa.string())]
        return pa.Table.from_arrays([*base, *model_columns, *quality], schema=self.schema)

    def score(self, chunk: PreparedChunk) -> pa.Table:
        """Catalogue rows of a prepared chunk: model columns for the unflagged rows, nulls for the rest."""
        return self.table(chunk, self.model_outputs(chunk))
