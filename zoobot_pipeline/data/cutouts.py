"""Cutouts around sky positions from a memory-mapped tile, through each band's WCS.

Windows are placed as ``astropy.nddata.utils.overlap_slices`` places them (the slicing step of ``extract_array``)
and copied into a NaN-filled native float32 ``(n_bands, H, W)`` array, which also says whether the window is cut by
the tile edge. float32 tiles (big-endian in FITS) go through compiled kernels (:mod:`.image_kernels`: every window of
a batch at once, bit-exact, without the GIL); other pixel types (integer images, where ``extract_array`` cannot fill
with NaN) through ``overlap_slices`` itself, one window at a time. Tests check that both give the same cutouts.

Padding: pixels outside the tile are NaN. ``nan_fraction`` counts NaN and exact-zero values (survey images use
both for no data); Galaxy Zoo rejects cutouts with a fraction of at least :data:`MAX_NAN_FRACTION`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_pipeline.data.preprocessing import CutoutSizing
from zoobot_pipeline.data.release import Release, Tile

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = [
    "MAX_NAN_FRACTION", "Cutout", "CutoutBatch", "CutoutSizing", "cut_batch", "cutout", "cutout_at_pixels",
    "release_cutouts", "tile_cutouts",
]

MAX_NAN_FRACTION = 0.2


@dataclass(frozen=True)
class Cutout:
    """A multi-band cutout: ``data`` is float32 ``(n_bands, H, W)``, NaN where there is no tile."""

    data: np.ndarray
    edge: bool
    off_tile: bool
    nan_fraction: float

    @property
    def rejected(self) -> bool:
        """True when the cutout is off the tile or at least :data:`MAX_NAN_FRACTION` of it is NaN or zero."""
        return self.off_tile or self.nan_fraction >= MAX_NAN_FRACTION


def cutout_at_pixels(images: Sequence[np.ndarray], positions: Sequence[tuple[float, float]], size: int) -> Cutout:
    """Cut a ``size`` x ``size`` window from each band image around its own (x, y) pixel position (0-based).

    The source lands on pixel ``size // 2`` (to within half a pixel) of each axis.
    """
    from astropy.nddata.utils import NoOverlapError, overlap_slices  # (with scipy) only for non-float32 images

    data = np.full((len(images), size, size), np.nan, dtype=np.float32)
    edge = False
    overlaps = 0
    for band, (image, (x, y)) in enumerate(zip(images, positions, strict=True)):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        try:
            large, small = overlap_slices(image.shape, (size, size), (y, x), mode="partial")
        except NoOverlapError:
            continue
        data[band][small] = image[large]
        overlaps += 1
        edge = edge or any(s.stop - s.start != size for s in small)
    off_tile = overlaps == 0
    edge = not off_tile and (edge or overlaps < len(images))
    nan_fraction = _nan_or_zero_fraction(data)
    return Cutout(data=data, edge=edge, off_tile=off_tile, nan_fraction=nan_fraction)


def _nan_or_zero_fraction(data: np.ndarray) -> float:
    """Fraction of values that are NaN or exactly zero (counting, without building a boolean mask union)."""
    if data.size == 0:
        return 1.0
    n_nan = data.size - np.count_nonzero(data == data)
    return (n_nan + np.count_nonzero(data == 0)) / data.size


def _band_pixels(wcs_list: Sequence[WCS], ra: np.ndarray, dec: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel (x, y) of every position in each band, converting once per distinct WCS."""
    pixels: list[tuple[np.ndarray, np.ndarray]] = []
    for i, wcs in enumerate(wcs_list):
        same = next((j for j in range(i) if wcs_list[j].wcs.compare(wcs.wcs)), None)
        if same is not None:
            pixels.append(pixels[same])
        else:
            x, y = wcs.world_to_pixel_values(ra, dec)
            pixels.append((np.atleast_1d(x), np.atleast_1d(y)))
    return pixels


def cutout(tile: Tile, ra: float, dec: float, size: int) -> Cutout:
    """Cut a ``size`` x ``size`` multi-band cutout centred on (ra, dec) in degrees; off-tile gives ``off_tile``."""
    pixels = _band_pixels(tile.wcs, np.array([ra], dtype=np.float64), np.array([dec], dtype=np.float64))
    return cutout_at_pixels(tile.images, [(x[0], y[0]) for x, y in pixels], int(size))


def _float32_bits(image: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """A float32 image's pixels as uint32 bit patterns and whether their bytes need swapping; None for other types."""
    if image.ndim != 2 or image.dtype.kind != "f" or image.dtype.itemsize != 4:
        return None
    return image.view(np.uint32), not image.dtype.isnative


@dataclass(frozen=True)
class CutoutBatch:
    """The cutouts of a batch of sources in one native float32 buffer: window ``g`` is ``data[offsets[g]:]`` as
    ``(n_bands, sizes[g], sizes[g])`` (:meth:`window`), with its flags in ``edge``, ``off_tile``, ``nan_fraction``."""

    data: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    n_bands: int
    edge: np.ndarray
    off_tile: np.ndarray
    nan_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def rejected(self) -> np.ndarray:
        """Per window: off the tile, or at least :data:`MAX_NAN_FRACTION` NaN or zero."""
        return self.off_tile | (self.nan_fraction >= MAX_NAN_FRACTION)

    def window(self, g: int) -> np.ndarray:
        """Window ``g``, ``(n_bands, size, size)``: a view of :attr:`data`."""
        size, start = int(self.sizes[g]), int(self.offsets[g])
        return self.data[start : start + self.n_bands * size * size].reshape(self.n_bands, size, size)

    def cutout(self, g: int) -> Cutout:
        """Window ``g`` as a :class:`Cutout`."""
        return Cutout(data=self.window(g), edge=bool(self.edge[g]), off_tile=bool(self.off_tile[g]),
                      nan_fraction=float(self.nan_fraction[g]))


def _layout(n_bands: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sizes as int64, offsets, lengths)`` of windows laid end to end."""
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    lengths = n_bands * sizes * sizes
    offsets = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return sizes, offsets, lengths


def _cut_float32(band_bits: Sequence[tuple[np.ndarray, bool]], pixels: Sequence[tuple[np.ndarray, np.ndarray]],
                 sizes: np.ndarray) -> CutoutBatch:
    """Every window at once with the compiled kernels."""
    from zoobot_pipeline.data.image_kernels import cut_band, nan_or_zero_fractions

    n_bands, n = len(band_bits), len(sizes)
    sizes, offsets, lengths = _layout(n_bands, sizes)
    bits = np.empty(int(lengths.sum()), dtype=np.uint32)
    overlaps = np.zeros((n_bands, n), dtype=bool)
    edges = np.zeros(n, dtype=bool)
    for band, ((image_bits, swap), (x, y)) in enumerate(zip(band_bits, pixels, strict=True)):
        cut_band(image_bits, swap, np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64),
                 sizes, offsets, band, n_bands, bits, overlaps[band], edges)
    n_overlaps = overlaps.sum(axis=0)
    off_tile = n_overlaps == 0
    return CutoutBatch(bits.view(np.float32), offsets, sizes, n_bands, ~off_tile & (edges | (n_overlaps < n_bands)),
                       off_tile, nan_or_zero_fractions(bits, offsets, lengths))


def _cut_any(images: Sequence[np.ndarray], pixels: Sequence[tuple[np.ndarray, np.ndarray]],
             sizes: np.ndarray) -> CutoutBatch:
    """Window by window with :func:`cutout_at_pixels` (any pixel type), laid out as :func:`_cut_float32` does."""
    sizes, offsets, lengths = _layout(len(images), sizes)
    data = np.empty(int(lengths.sum()), dtype=np.float32)
    cutouts = [cutout_at_pixels(images, [(x[g], y[g]) for x, y in pixels], int(sizes[g])) for g in range(len(sizes))]
    for g, cut in enumerate(cutouts):
        data[offsets[g] : offsets[g] + lengths[g]] = cut.data.ravel()
    return CutoutBatch(data, offsets, sizes, len(images), np.array([c.edge for c in cutouts], dtype=bool),
                       np.array([c.off_tile for c in cutouts], dtype=bool),
                       np.array([c.nan_fraction for c in cutouts], dtype=np.float64))


def cut_batch(tile: Tile, sources: pa.Table, sizing: CutoutSizing, pixel_scale_arcsec: float) -> CutoutBatch:
    """The cutouts of every row of ``sources`` (columns ``ra``, ``dec``, optional size column), in row order.

    float32 tiles (what surveys ship; big-endian in FITS) are cut by compiled kernels, all windows at once and without
    the GIL; other pixel types one window at a time with :func:`cutout_at_pixels`. Both give the same cutouts.
    """
    ra = sources["ra"].to_numpy().astype(np.float64)
    dec = sources["dec"].to_numpy().astype(np.float64)
    r50 = None
    if sizing.size_column in sources.column_names:
        r50 = sources[sizing.size_column].to_numpy(zero_copy_only=False).astype(np.float64)
    sizes = sizing.sizes(r50, pixel_scale_arcsec, len(ra))
    pixels = _band_pixels(tile.wcs, ra, dec)
    band_bits = [_float32_bits(image) for image in tile.images]
    if len(ra) and all(bits is not None for bits in band_bits):
        return _cut_float32(band_bits, pixels, sizes)
    return _cut_any(tile.images, pixels, sizes)


def tile_cutouts(tile: Tile, sources: pa.Table, sizing: CutoutSizing, pixel_scale_arcsec: float) -> list[Cutout]:
    """:func:`cut_batch` as a list of :class:`Cutout` (views of the batch's buffer)."""
    batch = cut_batch(tile, sources, sizing, pixel_scale_arcsec)
    return [batch.cutout(g) for g in range(len(batch))]


def release_cutouts(release: Release, ids: Sequence[str] | None = None,
                    sizing: CutoutSizing | None = None) -> Iterator[tuple[str, Cutout]]:
    """``(id_str, cutout)`` for every source of a release (or only ``ids``), one tile open at a time, tile by tile."""
    sizing = sizing or CutoutSizing()
    wanted = None if ids is None else pa.array(list(ids), type=release.sources["id_str"].type)
    for tile, sources in release.iter_tiles():
        rows = sources if wanted is None else sources.filter(pc.is_in(sources["id_str"], value_set=wanted))
        if rows.num_rows:
            cutouts = tile_cutouts(tile, rows, sizing, release.info.pixel_scale_arcsec)
            yield from zip(rows["id_str"].to_pylist(), cutouts, strict=True)
