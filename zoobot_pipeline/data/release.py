"""Data releases: ``release.json`` + FITS tiles + ``sources.parquet``, or a Zoobot image catalogue.

Release directory layout::

    release.json        name, survey, bands, pixel_scale_arcsec, created; optional zeropoint, schema, tiles
    sources.parquet     id_str, ra, dec, tile_id (optional r50_arcsec for cutout sizing): one Parquet file, or a
                        directory of Parquet files (a partitioned dataset, below)
    tiles/{tile_id}.fits          one image HDU per band, EXTNAME = band name
    tiles/{tile_id}/{band}.fits   or: one file per band (image in the first HDU that has data)

The per-band layout uses a folder per tile rather than ``{tile_id}_{band}.fits`` because tile ids often contain
underscores. ``release.json`` may list the tile ids under ``tiles`` (each must then have a file), or map tile ids to
paths relative to the release to override the discovery (each must resolve inside the release directory). Every
image must carry a celestial WCS. Tiles are memory-mapped and opened only when asked for.

The source catalogue is checked when a release is opened: at least one row; ``id_str`` present, not blank and unique
(across all tiles); ``ra`` in [0, 360) and ``dec`` in [-90, 90] degrees, finite; ``tile_id`` a plain name (no ``/``,
``\\``, and not ``.`` or ``..``), since it names the tile's file. Each refusal is a :class:`ReleaseError` naming the
file, the column and example rows.

Partitioned sources (survey-size releases): ``sources.parquet`` may be a directory of Parquet files, as Spark, Dask,
polars or ``pyarrow.dataset.write_dataset`` write them: every ``*.parquet`` (``.parq``, ``.pq``) file under it, in
plain or hive-style ``key=value`` folders (``tile_id=.../``, ``healpix_29=.../``, ``Norder=.../Npix=...``); files
and folders whose names start with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``, ``.crc``) are ignored. A hive key is
read as text, so ``tile_id=007`` is tile ``'007'``; a ``tile_id`` folder key may replace the column. Release order
is the files' paths in sorted order, then the rows of each file. Opening such a release reads the files one at a
time, keeping only per-tile counts per file (:class:`SourceCatalogue`), so memory is bounded by the largest file, not
by the catalogue: each file gets every check above, with ``id_str`` unique within the file; an id repeated in two
files of the same tile is refused when that tile's rows are read whole (:func:`check_tile_ids`, at the latest when
scoring assembles the tile); an id repeated in two files and two different tiles is not detected (only
:attr:`Release.sources`, which reads the whole catalogue, checks that). A tile's rows are read when asked for
(:meth:`Release.tile_rows`), from the files that hold the tile, filtered by ``tile_id`` (Parquet row-group statistics
skip the rest of a file sorted by tile).

Image catalogue (Zoobot convention): a CSV or Parquet file with ``id_str`` and ``file_loc`` (absolute, or relative to
the catalogue's folder) pointing at FITS, PNG or JPEG cutouts, read by :func:`load_cutout_file`.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoobot_pipeline._safe_load import load_json_object
from zoobot_pipeline.errors import ReleaseError, ZoobotPipelineError
from zoobot_pipeline.io import path_inside, read_table

if TYPE_CHECKING:
    import pyarrow.dataset as ds

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageCatalogue",
    "Release",
    "ReleaseError",
    "ReleaseInfo",
    "SOURCE_COLUMNS",
    "SourceCatalogue",
    "Tile",
    "TileRows",
    "check_tile_ids",
    "load_cutout_file",
    "open_release",
    "plain_tile_id",
]

SOURCE_COLUMNS: tuple[str, ...] = ("id_str", "ra", "dec", "tile_id")
CATALOGUE_COLUMNS: tuple[str, ...] = ("id_str", "file_loc")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


class ReleaseInfo(BaseModel):
    """Contents of ``release.json``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    survey: str
    bands: tuple[str, ...] = Field(min_length=1)
    pixel_scale_arcsec: float = Field(gt=0)
    created: str
    zeropoint: float | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    tiles: list[str] | dict[str, str] | None = None


def _rows(mask: np.ndarray, table: pa.Table, limit: int = 5) -> str:
    """``row 3 (id_str 'a'), row 7 (id_str 'b')``: the first ``limit`` rows where ``mask`` is true (0-based)."""
    ids = table["id_str"]
    return ", ".join(f"row {row} (id_str {ids[int(row)].as_py()!r})" for row in np.flatnonzero(mask)[:limit])


def _as_text(table: pa.Table, path: Path | str) -> pa.Table:
    """``id_str``/``tile_id``/``file_loc`` cast to strings where the file stores them otherwise (numbers, large or
    dictionary strings)."""
    for name in ("id_str", "tile_id", "file_loc"):
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            try:
                cast = pc.cast(table[name], pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ReleaseError(f"{path}: column {name!r} of type {table.schema.field(name).type} cannot be read "
                                   f"as text ({err})") from None
            table = table.set_column(table.schema.get_field_index(name), name, cast)
    return table


def _check_columns(table: pa.Table, required: Sequence[str], path: Path, allow_empty: bool = False) -> pa.Table:
    """Check the table has rows (unless ``allow_empty``) and the required columns, without nulls, and that ``id_str``
    is unique and not blank; cast ``id_str``/``tile_id``/``file_loc`` to strings."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ReleaseError(f"{path}: missing required column(s) {', '.join(missing)}")
    if table.num_rows == 0 and not allow_empty:
        raise ReleaseError(f"{path}: the table has no rows; a release needs at least one source")
    with_nulls = [c for c in required if table[c].null_count]
    if with_nulls:
        raise ReleaseError(f"{path}: null values in required column(s) {', '.join(with_nulls)}")
    table = _as_text(table, path)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table["id_str"])), 0).to_numpy(zero_copy_only=False)
    if blank.any():
        raise ReleaseError(f"{path}: column 'id_str' is empty or blank in {int(blank.sum())} row(s): "
                           f"{_rows(blank, table)}; every source needs an id")
    counts = pc.value_counts(table["id_str"])
    duplicated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        shown = ", ".join(duplicated.to_pylist()[:5])
        first = pc.is_in(table["id_str"], value_set=duplicated.slice(0, 1)).to_numpy(zero_copy_only=False)
        tiles = table["tile_id"] if "tile_id" in table.column_names else None
        where = " and ".join(f"row {row}" + (f" (tile {tiles[int(row)].as_py()!r})" if tiles is not None else "")
                             for row in np.flatnonzero(first)[:5])
        raise ReleaseError(f"{path}: {len(duplicated)} duplicate id_str value(s), e.g. {shown}: "
                           f"{duplicated[0].as_py()!r} is at {where}; every id_str must be unique")
    return table


def plain_tile_id(tile_id: str) -> bool:
    """Whether ``tile_id`` can name a file in ``tiles/``: not empty, not ``.`` or ``..``, and without ``/``, ``\\``
    or NUL (so ``tiles/{tile_id}.fits`` stays a plain entry of ``tiles/``)."""
    return tile_id not in ("", ".", "..") and not any(c in tile_id for c in "/\\\0")


def _check_sources(table: pa.Table, path: Path) -> None:
    """Positions finite and on the sky (ra in [0, 360), dec in [-90, 90] degrees); tile ids plain names."""
    for name, low, high, high_open in (("ra", 0.0, 360.0, True), ("dec", -90.0, 90.0, False)):
        column = table[name]
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise ReleaseError(f"{path}: column {name!r} must hold numbers (degrees), not {column.type}")
        values = column.to_numpy().astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            raise ReleaseError(f"{path}: column {name!r} has {int((~finite).sum())} non-finite value(s) (NaN or "
                               f"infinity): {_rows(~finite, table)}")
        outside = (values < low) | ((values >= high) if high_open else (values > high))
        if outside.any():
            interval = f"[{low:g}, {high:g})" if high_open else f"[{low:g}, {high:g}]"
            examples = ", ".join(f"{values[int(row)]:g}" for row in np.flatnonzero(outside)[:5])
            raise ReleaseError(f"{path}: column {name!r} has {int(outside.sum())} value(s) outside {interval} degrees "
                               f"({examples}): {_rows(outside, table)}")
    tile_ids = pc.unique(table["tile_id"]).to_pylist()
    bad = [tile_id for tile_id in tile_ids if not plain_tile_id(tile_id)]
    if bad:
        mask = pc.is_in(table["tile_id"], value_set=pa.array(bad[:5], pa.string())).to_numpy(zero_copy_only=False)
        raise ReleaseError(f"{path}: column 'tile_id' has {len(bad)} value(s) that are not plain names (a tile id "
                           f"names its file under tiles/, so it may not hold '/' or '\\' or be '.' or '..'): "
                           f"{', '.join(map(repr, bad[:5]))}, e.g. {_rows(mask, table, 3)}")


# ------------------------------------------------------------------------------------------------ source catalogue


def _partitioning(hive_keys: Sequence[str]) -> ds.Partitioning | None:
    """Hive partitioning with every key read as text (``tile_id=007`` stays ``'007'``), or None for plain files."""
    import pyarrow.dataset as ds  # ~0.25 s (it imports pandas): only partitioned catalogues need it

    return ds.partitioning(pa.schema([(key, pa.string()) for key in hive_keys]), flavor="hive") if hive_keys else None


def _part_dataset(root: str, file: str, hive_keys: Sequence[str]) -> ds.Dataset:
    """One Parquet file of the source catalogue as a dataset, its hive keys as columns (reads the footer only)."""
    import pyarrow.dataset as ds

    try:
        return ds.dataset([file], format="parquet", partitioning=_partitioning(hive_keys),
                          partition_base_dir=root if hive_keys else None)
    except (OSError, pa.ArrowInvalid) as err:
        raise ReleaseError(f"{file}: cannot read this file of the source catalogue {root}: {err}") from None


def _read_part(root: str, file: str, hive_keys: Sequence[str], columns: Sequence[str] | None,
               tile_id: str | None = None, dataset: ds.Dataset | None = None) -> pa.Table:
    """One Parquet file of the source catalogue (with its hive keys as columns): ``columns`` (None: all), missing
    ones as nulls; only tile ``tile_id``'s rows if given (filtered in the scan, so that row-group statistics skip what
    cannot match). ``id_str``/``tile_id`` become strings, ``ra``/``dec`` float64."""
    dataset = _part_dataset(root, file, hive_keys) if dataset is None else dataset
    try:
        present = dataset.schema.names if columns is None else [c for c in columns if c in dataset.schema.names]
        type_ = dataset.schema.field("tile_id").type if "tile_id" in dataset.schema.names else None
        in_scan = tile_id is not None and type_ is not None and pa.types.is_string(type_)
        table = dataset.to_table(columns=present, filter=(pc.field("tile_id") == tile_id) if in_scan else None)
    except (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ReleaseError(f"{file}: cannot read this file of the source catalogue {root}: {err}") from None
    table = _as_text(table, file)
    if tile_id is not None and not in_scan and "tile_id" in table.column_names:
        table = table.filter(pc.equal(table["tile_id"], tile_id))
    for name in ("ra", "dec"):
        if name in table.column_names and table.schema.field(name).type != pa.float64():
            try:
                table = table.set_column(table.schema.get_field_index(name), name, pc.cast(table[name], pa.float64()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ReleaseError(f"{file}: column {name!r} must hold numbers (degrees), not "
                                   f"{table.schema.field(name).type} ({err})") from None
    for name in columns or ():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table if columns is None else table.select(list(columns))


@functools.lru_cache(maxsize=4)
def _cached_tile_part(root: str, file: str, hive_keys: tuple[str, ...], tile_id: str, columns: tuple[str, ...],
                      mtime_ns: int, size: int) -> pa.Table:
    """:func:`_read_part` of one tile, kept for the next chunks of that tile (keyed on the file's mtime and size)."""
    return _read_part(root, file, hive_keys, columns, tile_id)


def check_tile_ids(ids: pa.Array | pa.ChunkedArray, tile_id: str, where: str | Path) -> None:
    """Refuse a tile whose assembled rows repeat an ``id_str`` (partitions are checked one file at a time, so an id
    written to two files of the same tile shows only here); ``where`` names the files."""
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).to_pylist()
    raise ReleaseError(f"{where}: tile {tile_id!r} has {len(repeated)} id_str value(s) in more than one row (in "
                       f"different files): {', '.join(map(repr, repeated[:5]))}; every id_str must be unique")


@dataclass(frozen=True)
class TileRows:
    """Where one tile's source rows are: the files that hold them (release order) with the tile's row count in each,
    and the columns to read. Small and picklable, so that a scoring plan or a Ray task carries this instead of rows;
    :meth:`slice` reads rows (the ``pa.Table`` method of the same name, but from the files)."""

    tile_id: str
    root: str
    files: tuple[str, ...]
    counts: tuple[int, ...]
    hive_keys: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def num_rows(self) -> int:
        """The tile's number of sources."""
        return sum(self.counts)

    def slice(self, offset: int = 0, length: int | None = None) -> pa.Table:
        """Rows ``[offset, offset + length)`` of the tile, read from the files that hold them; a file whose count of
        the tile's rows changed since the release was opened is an error. A column that none of these files has
        reads as float64 nulls (an optional number such as a size column)."""
        end = self.num_rows if length is None else min(self.num_rows, offset + length)
        parts, start = [], 0
        for file, count in zip(self.files, self.counts, strict=True):
            low, high = max(offset - start, 0), min(end - start, count)
            if low < high:
                stat = os.stat(file)
                rows = _cached_tile_part(self.root, file, self.hive_keys, self.tile_id, self.columns,
                                         stat.st_mtime_ns, stat.st_size)
                if rows.num_rows != count:
                    raise ReleaseError(f"{file}: holds {rows.num_rows} row(s) of tile {self.tile_id!r}, {count} when "
                                       "the release was opened: the source catalogue changed; score again")
                parts.append(rows.slice(low, high - low))
            start += count
        if not parts:
            raise IndexError(f"tile {self.tile_id!r}: rows from {offset} are past its {self.num_rows} row(s)")
        table = pa.concat_tables(parts, promote_options="permissive")
        for index, field in enumerate(table.schema):
            if pa.types.is_null(field.type):
                table = table.set_column(index, field.name, pa.nulls(table.num_rows, pa.float64()))
        return table

    def narrow(self, offset: int, length: int) -> tuple[TileRows, int]:
        """``(rows, start)``: these rows restricted to the files that hold rows ``[offset, offset + length)``, and
        where ``offset`` falls in them (a chunk's descriptor names only its own files)."""
        files, counts, first, start = [], [], None, 0
        for file, count in zip(self.files, self.counts, strict=True):
            if start < offset + length and offset < start + count:
                first = start if first is None else first
                files.append(file)
                counts.append(count)
            start += count
        if first is None:
            raise IndexError(f"tile {self.tile_id!r}: rows from {offset} are past its {self.num_rows} row(s)")
        return replace(self, files=tuple(files), counts=tuple(counts)), offset - first

    def to_json(self) -> str:
        """The descriptor as JSON text (it travels in Ray Data rows)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TileRows:
        """The descriptor :meth:`to_json` wrote."""
        fields = json.loads(text)
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


def _tile_slices(tiles: pa.ChunkedArray | pa.Array) -> dict[str, tuple[int, int]]:
    """``tile_id -> (offset, length)`` of each run of equal tile ids in a table grouped by tile."""
    ids = tiles.to_numpy(zero_copy_only=False)
    if not len(ids):
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {str(ids[a]): (int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)}


def _grouped(table: pa.Table) -> pa.Table:
    """``table`` grouped by tile (stable: catalogue order within a tile); the same table if already grouped."""
    tiles = table["tile_id"]
    if len(tiles) < 2 or pc.all(pc.less_equal(tiles[:-1], tiles[1:])).as_py():
        return table
    return table.take(pc.sort_indices(tiles))


class SourceCatalogue:
    """A release's ``sources.parquet``: one file, read whole and checked when opened (:meth:`read_file`), or a
    partitioned dataset (``partitioned``), checked one file at a time and summarised as per-tile row counts per file
    (:meth:`scan_directory`). Either gives a tile's rows (:meth:`tile_table`) or where they are (:meth:`tile_rows`);
    :attr:`table` is the whole catalogue grouped by tile, read on first use for a partitioned one (so not for a
    survey-size release)."""

    def __init__(self, path: Path, files: Sequence[str], hive_keys: Sequence[str], column_names: Sequence[str],
                 pieces: dict[str, list[tuple[int, int]]], table: pa.Table | None = None) -> None:
        self.path = path
        self.partitioned = path.is_dir()
        self.files = tuple(files)
        self.hive_keys = tuple(hive_keys)
        self.column_names = list(column_names)
        self._pieces = pieces
        self._table = table
        self._slices = None if table is None else _tile_slices(table["tile_id"])
        self.n_sources = sum(count for parts in pieces.values() for _, count in parts)

    @classmethod
    def read_file(cls, path: Path, columns: Sequence[str] | None) -> SourceCatalogue:
        """Read and check one Parquet file (every column, or the required ones plus those of ``columns`` it has)."""
        wanted = None if columns is None else [*SOURCE_COLUMNS, *(c for c in columns if c not in SOURCE_COLUMNS)]
        table = _check_columns(read_table(path, ReleaseError, "source catalogue", wanted), SOURCE_COLUMNS, path)
        _check_sources(table, path)
        table = _grouped(table)
        slices = _tile_slices(table["tile_id"])
        return cls(path, [str(path)], (), table.column_names,
                   {tile_id: [(0, length)] for tile_id, (_, length) in slices.items()}, table)

    @classmethod
    def scan_directory(cls, path: Path, columns: Sequence[str] | None) -> SourceCatalogue:
        """Check a partitioned catalogue file by file (see the module docstring) and count each tile's rows per
        file; holds one file's required columns at a time."""
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file()
                       and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
        if not files:
            raise ReleaseError(f"{path}: is a directory without Parquet files; a partitioned source catalogue holds "
                               f"*.parquet files (in key=value folders or not)")
        hive_keys = sorted({part.split("=", 1)[0] for file in files for part in Path(file).relative_to(path).parts[:-1]
                            if "=" in part})
        names: dict[str, None] = dict.fromkeys(SOURCE_COLUMNS)
        pieces: dict[str, list[tuple[int, int]]] = {}
        for index, file in enumerate(files):
            dataset = _part_dataset(str(path), file, hive_keys)
            names.update(dict.fromkeys(dataset.schema.names))
            required = [c for c in SOURCE_COLUMNS if c in dataset.schema.names]  # a missing one is refused next
            table = _check_columns(_read_part(str(path), file, hive_keys, required, dataset=dataset), SOURCE_COLUMNS,
                                   Path(file), allow_empty=True)
            _check_sources(table, Path(file))
            counts = pc.value_counts(table["tile_id"])
            for tile_id, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                      strict=True):
                pieces.setdefault(tile_id, []).append((index, count))
            del table, counts
            pa.default_memory_pool().release_unused()  # else the allocator's cache grows RSS ~5 B per source
        if not pieces:
            raise ReleaseError(f"{path}: the table has no rows in any of its {len(files)} file(s); a release needs at "
                               "least one source")
        wanted = None if columns is None else {*SOURCE_COLUMNS, *columns}
        column_names = [name for name in names if wanted is None or name in wanted]
        return cls(path, files, hive_keys, column_names, dict(sorted(pieces.items())))

    @property
    def tile_ids(self) -> list[str]:
        """Sorted ids of the tiles that have sources."""
        return sorted(self._pieces)

    def tile_count(self, tile_id: str) -> int:
        """The number of sources of a tile (0 for a tile without sources)."""
        return sum(count for _, count in self._pieces.get(tile_id, ()))

    def tile_rows(self, tile_id: str, columns: Sequence[str] | None = None) -> TileRows:
        """Where tile ``tile_id``'s rows are, to read ``columns`` (default: :attr:`column_names`)."""
        parts = self._pieces.get(tile_id, [])
        return TileRows(tile_id, str(self.path), tuple(self.files[i] for i, _ in parts),
                        tuple(count for _, count in parts), self.hive_keys,
                        tuple(self.column_names if columns is None else columns))

    def tile_table(self, tile_id: str) -> pa.Table:
        """A tile's rows in catalogue order (a slice of the table read when opened, or read from the files now)."""
        if self._table is not None and self._slices is not None:
            offset, length = self._slices.get(tile_id, (0, 0))
            return self._table.slice(offset, length)
        rows = self.tile_rows(tile_id)
        if not rows.files:  # no such tile: no rows, with the columns' types
            return _read_part(str(self.path), self.files[0], self.hive_keys, self.column_names, tile_id)
        table = rows.slice()
        if len(rows.files) > 1:
            check_tile_ids(table["id_str"], tile_id, f"{self.path} ({', '.join(rows.files[:3])})")
        return table

    @property
    def table(self) -> pa.Table:
        """Every source, grouped by tile (catalogue order within a tile), checked as a whole (``id_str`` unique across
        all files). For a partitioned catalogue this reads every file now: not for a survey-size release."""
        if self._table is None:
            parts = [_read_part(str(self.path), file, self.hive_keys, self.column_names) for file in self.files]
            table = _check_columns(pa.concat_tables(parts, promote_options="permissive"), SOURCE_COLUMNS, self.path)
            self._table = _grouped(table)
            self._slices = _tile_slices(self._table["tile_id"])
        return self._table


def _open_fits(path: Path) -> fits.HDUList:
    """Open a FITS file memory-mapped, raising :class:`ReleaseError` if it is unreadable or truncated."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
            hdul = fits.open(path, memmap=True, lazy_load_hdus=False)
    except (OSError, AstropyUserWarning, ValueError) as exc:
        raise ReleaseError(f"{path}: not a readable FITS file ({exc})") from exc
    size = path.stat().st_size
    for hdu in hdul:
        info = hdu.fileinfo()
        if info is not None and info["datLoc"] + info["datSpan"] > size:
            hdul.close()
            raise ReleaseError(f"{path}: FITS file is truncated (HDU {hdu.name!r} extends past the end of the file)")
    return hdul


def _celestial_wcs(header: fits.Header, where: str) -> WCS:
    try:
        wcs = WCS(header).celestial
    except Exception as exc:  # astropy raises many types for malformed WCS keywords
        raise ReleaseError(f"{where}: invalid WCS ({exc})") from exc
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise ReleaseError(f"{where}: image has no celestial WCS")
    return wcs


class Tile:
    """One tile's band images, memory-mapped; opened on construction, closed by :meth:`close` or ``with``."""

    def __init__(self, tile_id: str, path: Path, bands: Sequence[str]) -> None:
        self.tile_id = tile_id
        self.path = path
        self.bands = tuple(bands)
        self._hduls: list[fits.HDUList] = []
        self._images: list[np.ndarray] = []
        self._wcs: list[WCS] = []
        if not path.exists():
            raise ReleaseError(f"{path}: tile {tile_id!r} has no file")
        try:
            if path.is_dir():
                self._open_per_band()
            else:
                self._open_multi_extension()
        except BaseException:
            self.close()
            raise

    def _open_multi_extension(self) -> None:
        hdul = _open_fits(self.path)
        self._hduls.append(hdul)
        names = {hdu.name.upper(): hdu for hdu in hdul}
        for band in self.bands:
            hdu = names.get(band.upper())
            if hdu is None:
                raise ReleaseError(f"{self.path}: band {band!r} missing (EXTNAMEs present: {sorted(names)})")
            self._add(hdu, f"{self.path}[{band}]")

    def _open_per_band(self) -> None:
        for band in self.bands:
            band_path = self.path / f"{band}.fits"
            if not band_path.exists():
                raise ReleaseError(f"{band_path}: band {band!r} missing for tile {self.tile_id!r}")
            hdul = _open_fits(band_path)
            self._hduls.append(hdul)
            hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), None)
            if hdu is None:
                raise ReleaseError(f"{band_path}: no 2-D image HDU")
            self._add(hdu, str(band_path))

    def _add(self, hdu: Any, where: str) -> None:
        if not hdu.is_image or hdu.header.get("NAXIS", 0) != 2:
            raise ReleaseError(f"{where}: expected a 2-D image HDU")
        self._wcs.append(_celestial_wcs(hdu.header, where))
        self._images.append(hdu.data)

    @property
    def images(self) -> list[np.ndarray]:
        """Band images in ``bands`` order (memory-mapped, possibly big-endian)."""
        return self._images

    @property
    def wcs(self) -> list[WCS]:
        """Celestial WCS of each band image, in ``bands`` order."""
        return self._wcs

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (ny, nx) of the first band image."""
        return self._images[0].shape

    def close(self) -> None:
        """Release the memory maps and file handles."""
        self._images = []
        for hdul in self._hduls:
            hdul.close()
        self._hduls = []

    def __enter__(self) -> Tile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Release:
    """A data release directory; see the module docstring for the layout."""

    def __init__(self, path: Path, info: ReleaseInfo, catalogue: SourceCatalogue, tile_paths: dict[str, Path]) -> None:
        self.path = path
        self.info = info
        self.catalogue = catalogue
        self.tile_paths = tile_paths

    @classmethod
    def open(cls, path: str | Path, *, allow_missing_tiles: bool = False,
             columns: Sequence[str] | None = None) -> Release:
        """Read ``release.json``, check ``sources.parquet`` and locate every tile; no image is opened yet.

        A single-file catalogue is read whole now (:attr:`sources`, grouped by tile); a partitioned one is checked
        file by file and only its per-tile counts kept (see the module docstring). Either way with every column, or
        only the required ones plus those of ``columns`` the files have (a survey-size catalogue then costs only what
        the caller reads). A tile that sources reference but that has no file is an error, or with
        ``allow_missing_tiles`` is kept at its expected path, where opening the tile fails (scoring records that tile
        as failed and goes on).
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ReleaseError(f"{path}: not a release directory (it is a file); give the directory that holds "
                               "release.json")
        meta_path = path / "release.json"
        if not meta_path.exists() and not meta_path.is_symlink():
            raise ReleaseError(f"{meta_path}: release.json not found")
        try:
            info = ReleaseInfo.model_validate(load_json_object(meta_path, ReleaseError, "release.json"))
        except FileNotFoundError:  # a dangling symlink
            raise ReleaseError(f"{meta_path}: release.json not found (a link to a missing file)") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
            raise ReleaseError(f"{meta_path}: invalid release metadata ({problems})") from exc
        cls._check_listed_tiles(path, info, meta_path)
        sources_path = path / "sources.parquet"
        if sources_path.is_dir():
            catalogue = SourceCatalogue.scan_directory(sources_path, columns)
        elif sources_path.is_file():
            catalogue = SourceCatalogue.read_file(sources_path, columns)
        elif sources_path.exists():
            raise ReleaseError(f"{sources_path}: is not a regular file or directory, not a source catalogue")
        else:
            raise ReleaseError(f"{sources_path}: sources.parquet not found")
        tile_paths = {}
        for tile_id in catalogue.tile_ids:
            tile_path = cls._locate_tile(path, info, tile_id)
            if tile_path is None and allow_missing_tiles:
                tile_path = cls._expected_tile_path(path, info, tile_id)
            elif tile_path is None:
                raise ReleaseError(
                    f"{sources_path}: tile {tile_id!r} is referenced by sources but has no file under {path / 'tiles'}"
                )
            tile_paths[tile_id] = tile_path
        for tile_id in info.tiles or ():
            if tile_id not in tile_paths and cls._locate_tile(path, info, tile_id) is None:
                raise ReleaseError(f"{meta_path}: tile {tile_id!r} is listed but has no file under {path / 'tiles'}")
        return cls(path, info, catalogue, tile_paths)

    @staticmethod
    def _check_listed_tiles(root: Path, info: ReleaseInfo, meta_path: Path) -> None:
        """Tile ids listed in ``release.json`` are plain names; mapped tile paths resolve inside the release."""
        bad = [tile_id for tile_id in info.tiles or () if not plain_tile_id(tile_id)]
        if bad:
            raise ReleaseError(f"{meta_path}: 'tiles' lists tile id(s) that are not plain names (no '/' or '\\', "
                               f"not '.' or '..'): {', '.join(map(repr, bad[:5]))}")
        if isinstance(info.tiles, dict):
            for tile_id, listed in info.tiles.items():
                try:
                    path_inside(root, listed, f"{meta_path}: tiles[{tile_id!r}]")
                except ZoobotPipelineError as err:
                    raise ReleaseError(str(err)) from None

    @staticmethod
    def _locate_tile(root: Path, info: ReleaseInfo, tile_id: str) -> Path | None:
        if isinstance(info.tiles, dict):
            listed = info.tiles.get(tile_id)
            return root / listed if listed is not None and (root / listed).exists() else None
        for candidate in (root / "tiles" / f"{tile_id}.fits", root / "tiles" / tile_id):
            if candidate.exists():
                return candidate
        return None

    @staticmethod
    def _expected_tile_path(root: Path, info: ReleaseInfo, tile_id: str) -> Path:
        listed = info.tiles.get(tile_id) if isinstance(info.tiles, dict) else None
        return root / listed if listed is not None else root / "tiles" / f"{tile_id}.fits"

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names, in the order cutouts stack them."""
        return self.info.bands

    @property
    def tile_ids(self) -> list[str]:
        """Sorted ids of the tiles that have sources."""
        return list(self.tile_paths)

    def open_tile(self, tile_id: str) -> Tile:
        """Open one tile (memory-mapped); use it as a context manager to close it."""
        if tile_id not in self.tile_paths:
            raise ReleaseError(f"{self.path}: no tile {tile_id!r} in this release")
        return Tile(tile_id, self.tile_paths[tile_id], self.info.bands)

    @property
    def sources(self) -> pa.Table:
        """Every source row, grouped by tile (catalogue order within a tile). A partitioned catalogue is read whole on
        first use (and ``id_str`` checked unique across all its files): not for a survey-size release; use
        :meth:`tile_sources` or :meth:`tile_rows` there."""
        return self.catalogue.table

    @property
    def n_sources(self) -> int:
        """The number of sources (without reading a partitioned catalogue)."""
        return self.catalogue.n_sources

    @property
    def source_columns(self) -> list[str]:
        """Names of the source columns opened (those of every file, for a partitioned catalogue)."""
        return self.catalogue.column_names

    @property
    def partitioned(self) -> bool:
        """Whether ``sources.parquet`` is a partitioned dataset (a directory of files)."""
        return self.catalogue.partitioned

    def tile_count(self, tile_id: str) -> int:
        """The number of sources of one tile (without reading them)."""
        return self.catalogue.tile_count(tile_id)

    def tile_sources(self, tile_id: str) -> pa.Table:
        """Source rows of one tile, in catalogue order (read from the files holding the tile, if partitioned)."""
        return self.catalogue.tile_table(tile_id)

    def tile_rows(self, tile_id: str, columns: Sequence[str] | None = None) -> TileRows:
        """Where one tile's source rows are, to read ``columns`` (default: :attr:`source_columns`) later or elsewhere
        (a Ray task): see :class:`TileRows`."""
        return self.catalogue.tile_rows(tile_id, columns)

    def iter_tiles(self) -> Iterator[tuple[Tile, pa.Table]]:
        """Yield ``(tile, sources)`` one tile at a time; each tile is closed before the next is opened."""
        for tile_id in self.tile_ids:
            with self.open_tile(tile_id) as tile:
                yield tile, self.tile_sources(tile_id)


def load_cutout_file(path: str | Path) -> np.ndarray:
    """Load a cutout file as float32 ``(C, H, W)``.

    FITS: the first image HDU with data (2-D gives one channel, 3-D is taken as ``(C, H, W)``), native byte order.
    PNG/JPEG: RGB (or single-channel greyscale) scaled to [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path}: cutout file not found")
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        with _open_fits(path) as hdul:
            hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), None)
            if hdu is None:
                raise ReleaseError(f"{path}: no image HDU with 2 or 3 axes")
            data = np.array(hdu.data, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ReleaseError(f"{path}: expected a 2-D or 3-D image, got shape {data.shape}")
        return data
    if name.endswith(IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                mode = "L" if image.mode in ("L", "I", "I;16", "F") else "RGB"
                array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        except OSError as exc:
            raise ReleaseError(f"{path}: unreadable image ({exc})") from exc
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    raise ReleaseError(f"{path}: unsupported cutout type (expected FITS, PNG or JPEG)")


class ImageCatalogue:
    """A Zoobot-style image catalogue: ``id_str`` and ``file_loc`` columns pointing at cutout files."""

    def __init__(self, path: Path, table: pa.Table) -> None:
        self.path = path
        self.table = table

    @classmethod
    def open(cls, path: str | Path, check_files: bool = True) -> ImageCatalogue:
        """Read the catalogue; ``file_loc`` is resolved relative to the catalogue's folder.

        With ``check_files``, every referenced file must exist (the error names the first missing ones).
        """
        path = Path(path)
        if not path.is_file():
            raise ReleaseError(f"{path}: image catalogue not found")
        table = _check_columns(read_table(path, ReleaseError, "image catalogue"), CATALOGUE_COLUMNS, path)
        locations = [str(path.parent / loc) for loc in table["file_loc"].to_pylist()]
        table = table.set_column(table.schema.get_field_index("file_loc"), "file_loc", pa.array(locations))
        if check_files:
            missing = [loc for loc in locations if not Path(loc).is_file()]
            if missing:
                raise ReleaseError(f"{path}: {len(missing)} file_loc path(s) do not exist, e.g. {missing[:3]}")
        return cls(path, table)

    def __len__(self) -> int:
        return self.table.num_rows

    def load(self, index: int) -> np.ndarray:
        """Load row ``index``'s cutout as float32 ``(C, H, W)``."""
        return load_cutout_file(self.table["file_loc"][index].as_py())

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[pa.Table, list[np.ndarray]]]:
        """Yield ``(rows, cutouts)`` in batches of at most ``batch_size`` rows."""
        for start in range(0, len(self), batch_size):
            rows = self.table.slice(start, batch_size)
            yield rows, [load_cutout_file(loc) for loc in rows["file_loc"].to_pylist()]


def open_release(path: str | Path) -> Release | ImageCatalogue:
    """Open a release directory as :class:`Release`, or a ``.csv``/``.parquet`` file as :class:`ImageCatalogue`."""
    path = Path(path)
    if path.is_dir():
        return Release.open(path)
    if path.suffix.lower() in (".csv", ".parquet"):
        return ImageCatalogue.open(path)
    raise ReleaseError(f"{path}: expected a release directory or an image catalogue (.csv or .parquet)")
