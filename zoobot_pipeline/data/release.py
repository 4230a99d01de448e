"""Data releases: ``release.json`` + FITS tiles + ``sources.parquet``, or a Zoobot image catalogue.

Release directory layout::

    release.json        name, survey, bands, pixel_scale_arcsec, created; optional zeropoint, schema, tiles
    sources.parquet     id_str, ra, dec, tile_id (optional r50_arcsec for cutout sizing)
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

Image catalogue (Zoobot convention): a CSV or Parquet file with ``id_str`` and ``file_loc`` (absolute, or relative to
the catalogue's folder) pointing at FITS, PNG or JPEG cutouts, read by :func:`load_cutout_file`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageCatalogue",
    "Release",
    "ReleaseError",
    "ReleaseInfo",
    "SOURCE_COLUMNS",
    "Tile",
    "load_cutout_file",
    "open_release",
    "plain_tile_id",
]

SOURCE_COLUMNS: tuple[str, ...] = ("id_str", "ra", "dec", "tile_id")
CATALOGUE_COLUMNS: tuple[str, ...] = ("id_str", "file_loc")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


def _check_columns(table: pa.Table, required: Sequence[str], path: Path) -> pa.Table:
    """Check the table has rows and the required columns, without nulls, and that ``id_str`` is unique and not blank;
    cast ``id_str``/``tile_id``/``file_loc`` to strings."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ReleaseError(f"{path}: missing required column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise ReleaseError(f"{path}: the table has no rows; a release needs at least one source")
    with_nulls = [c for c in required if table[c].null_count]
    if with_nulls:
        raise ReleaseError(f"{path}: null values in required column(s) {', '.join(with_nulls)}")
    for name in ("id_str", "tile_id", "file_loc"):
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            try:
                cast = pc.cast(table[name], pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ReleaseError(f"{path}: column {name!r} of type {table.schema.field(name).type} cannot be read "
                                   f"as text ({err})") from None
            table = table.set_column(table.schema.get_field_index(name), name, cast)
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

    def __init__(self, path: Path, info: ReleaseInfo, sources: pa.Table, tile_paths: dict[str, Path]) -> None:
        self.path = path
        self.info = info
        self.tile_paths = tile_paths
        tiles = sources["tile_id"]
        grouped = len(tiles) < 2 or pc.all(pc.less_equal(tiles[:-1], tiles[1:])).as_py()
        # one copy in memory, grouped by tile (stable: catalogue order within a tile); none if already grouped
        self.sources = sources if grouped else sources.take(pc.sort_indices(tiles))
        ids = self.sources["tile_id"].to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=np.int64)
        ends = np.r_[starts[1:], len(ids)] if len(ids) else np.array([], dtype=np.int64)
        self._slices = {str(ids[a]): (int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)}

    @classmethod
    def open(cls, path: str | Path, *, allow_missing_tiles: bool = False,
             columns: Sequence[str] | None = None) -> Release:
        """Read ``release.json`` and ``sources.parquet`` and locate every tile; no image is opened yet.

        ``sources`` holds the source rows grouped by tile (catalogue order within each tile), with every column, or
        only the required ones plus those of ``columns`` the file has (a survey-size catalogue then costs only what
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
        if sources_path.exists() and not sources_path.is_file():
            kind = "a directory" if sources_path.is_dir() else "not a regular file"
            raise ReleaseError(f"{sources_path}: is {kind}, not the source catalogue file")
        if not sources_path.is_file():
            raise ReleaseError(f"{sources_path}: sources.parquet not found")
        wanted = None if columns is None else [*SOURCE_COLUMNS, *(c for c in columns if c not in SOURCE_COLUMNS)]
        sources = _check_columns(read_table(sources_path, ReleaseError, "source catalogue", wanted), SOURCE_COLUMNS,
                                 sources_path)
        _check_sources(sources, sources_path)
        tile_paths = {}
        for tile_id in sorted(pc.unique(sources["tile_id"]).to_pylist()):
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
        return cls(path, info, sources, tile_paths)

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

    def tile_sources(self, tile_id: str) -> pa.Table:
        """Source rows of one tile, in catalogue order."""
        offset, length = self._slices.get(tile_id, (0, 0))
        return self.sources.slice(offset, length)

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
