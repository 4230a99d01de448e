"""One chunk of one tile, the unit of scoring work in both execution paths.

A chunk is up to ``chunk_size`` consecutive sources of a tile, in catalogue order. :func:`prepare_chunk` cuts and
preprocesses them (CPU work: a Ray Data task in the Ray path); :class:`ChunkScorer` runs the model and turns its
outputs into catalogue rows (an actor in the Ray path). Both paths call these on the same chunks, so they write the
same catalogue: the MC-dropout masks are per galaxy, and the sampled vote-space estimates of a call depend only on
the chunk's scored galaxies and their order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_pipeline.catalogue import BASE_FIELDS, FLAG_FIELDS, catalogue_schema
from zoobot_pipeline.data.cutouts import MAX_NAN_FRACTION, tile_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import ReleaseError, Tile
from zoobot_pipeline.runtime.package import ModelPackage
from zoobot_pipeline.runtime.session import PackageSession, galaxy_seeds
from zoobot_pipeline.scoring.columns import OutputColumns

__all__ = ["ChunkConfig", "ChunkScorer", "PreparedChunk", "ScoredChunk", "TileJob", "failure_reason", "open_tile",
           "prepare_chunk"]

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
    """A tile to score: its id, file and sources (``id_str``, ``ra``, ``dec``, ``tile_id``, optional size column)."""

    tile_id: str
    path: Path
    sources: pa.Table

    def n_chunks(self, chunk_size: int) -> int:
        """Number of chunks of ``chunk_size`` sources."""
        return -(-self.sources.num_rows // chunk_size)

    def chunk(self, index: int, chunk_size: int) -> pa.Table:
        """Sources of chunk ``index`` (zero-copy slice)."""
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
    one ``(C, H, W)`` image per unflagged row in row order (a list, or an array stacked for transport);
    ``tile_error`` when the tile could not be read.

    In-process the images stay a list and are stacked one model batch at a time: a whole chunk stacked at once is
    larger than the allocator reuses, and faulting in fresh pages for every chunk cost more than the cutting itself
    (see ``benchmarks/README.md``).
    """

    rows: pa.Table
    images: Sequence[np.ndarray]
    tile_error: str | None = None


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


def prepare_chunk(tile: Tile | None, tile_error: str | None, sources: pa.Table, config: ChunkConfig) -> PreparedChunk:
    """Cut and preprocess ``sources`` (``id_str``, ``ra``, ``dec``, ``tile_id``, optional size column) from ``tile``;
    flag what cannot be scored. With ``tile_error`` (or a failure while cutting) every row is ``tile_failed``.

    Cutouts are made :data:`CUT_BATCH` at a time, so at most that many raw cutouts are held at once.
    """
    n = sources.num_rows
    edge: list[bool | None] = [None] * n
    nan_fraction: list[float | None] = [None] * n
    flags: list[str | None] = [None] * n
    images: list[np.ndarray] = []
    for start in range(0, n if tile_error is None else 0, CUT_BATCH):
        assert tile is not None
        try:
            cutouts = tile_cutouts(tile, sources.slice(start, CUT_BATCH), config.preprocessing.cutout,
                                   config.pixel_scale_arcsec)
        except Exception as err:  # noqa: BLE001 - e.g. an I/O error reading the memory-mapped tile
            tile_error = failure_reason(err)
            break
        for i, cut in enumerate(cutouts, start):
            edge[i], nan_fraction[i] = cut.edge, cut.nan_fraction
            if cut.off_tile:
                flags[i] = "off_tile"
            elif cut.rejected:
                flags[i] = f"nan_fraction {cut.nan_fraction:.2f} >= {MAX_NAN_FRACTION}"
            else:
                try:
                    images.append(preprocess(cut.data, config.preprocessing, config.bands))
                except ValueError as err:
                    flags[i] = f"preprocessing_failed: {failure_reason(err)}"
    if tile_error is not None:
        edge, nan_fraction, flags, images = [None] * n, [None] * n, [f"tile_failed: {tile_error}"] * n, []
    rows = pa.Table.from_arrays(
        [sources["id_str"], sources["ra"], sources["dec"], sources["tile_id"], pa.array(edge, pa.bool_()),
         pa.array(nan_fraction, pa.float32()), pa.array(flags, pa.string())],
        schema=pa.schema(_ROW_FIELDS))
    return PreparedChunk(rows, images, tile_error)


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

    def predict(self, images: Sequence[np.ndarray], ids: list[str]) -> np.ndarray:
        """Model outputs ``(n, S, n_outputs)`` for ``(C, H, W)`` images, in batches of ``batch_size``."""
        outputs = [self.session.predict(np.asarray(images[i : i + self.batch_size], dtype=np.float32),
                                        ids[i : i + self.batch_size], self.mc_samples, self.seed)
                   for i in range(0, len(images), self.batch_size)]
        if outputs:
            return np.concatenate(outputs)
        return np.zeros((0, max(self.mc_samples, 1), len(self.columns.output_names)), np.float32)

    def score(self, chunk: PreparedChunk) -> pa.Table:
        """Catalogue rows of a prepared chunk: model columns for the unflagged rows, nulls for the rest."""
        rows = chunk.rows
        to_score = np.flatnonzero(pc.is_null(rows["flag"]).to_numpy(zero_copy_only=False))
        ids = pc.take(rows["id_str"], pa.array(to_score)).to_pylist()
        outputs = self.predict(chunk.images, ids)
        finite = np.isfinite(outputs).all(axis=(1, 2))
        flags = rows["flag"].to_pylist()
        for i in to_score[~finite]:
            flags[i] = "outputs_not_finite"
        scored = to_score[finite]
        seeds = galaxy_seeds([ids[i] for i in np.flatnonzero(finite)], self.seed)
        values = self.columns.compute(outputs[finite], seeds)
        n = rows.num_rows
        model = [_scatter(values[field.name], scored, n, field) for field in self.columns.fields()]
        base = [rows[field.name] for field in BASE_FIELDS]
        quality = [rows["edge"], rows["nan_fraction"], pa.array(flags, pa.string())]
        return pa.Table.from_arrays([*base, *model, *quality], schema=self.schema)
