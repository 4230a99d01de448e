from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from conftest import TINY_BAND_AMPLITUDE, TINY_BANDS, gaussian_image, tiny_wcs

from zoobot_pipeline.data.cutouts import (
    MAX_NAN_FRACTION,
    Cutout,
    CutoutSizing,
    cutout,
    cutout_at_pixels,
    tile_cutouts,
)
from zoobot_pipeline.data.release import Release, Tile


def _source(release: Release, id_str: str) -> tuple[float, float]:
    row = release.sources.filter(pa.compute.equal(release.sources["id_str"], id_str))
    return row["ra"][0].as_py(), row["dec"][0].as_py()


def _peak(image: np.ndarray) -> tuple[int, int]:
    return np.unravel_index(np.nanargmax(image), image.shape)


@pytest.mark.parametrize("size", [20, 21, 40])
@pytest.mark.parametrize("id_str", ["centre", "offcentre"])
def test_cutout_is_centred_on_source(tiny_release, size, id_str):
    release = Release.open(tiny_release.path)
    with release.open_tile("t0") as tile:
        result = cutout(tile, *_source(release, id_str), size=size)
    assert result.data.shape == (3, size, size)
    assert result.data.dtype == np.float32 and result.data.dtype.isnative
    for band, image in zip(TINY_BANDS, result.data, strict=True):
        y, x = _peak(image)
        assert abs(y - size // 2) <= 1 and abs(x - size // 2) <= 1
        assert image.max() == pytest.approx(TINY_BAND_AMPLITUDE[band] + 0.01, abs=0.01)
    assert not result.edge and not result.off_tile and not result.rejected
    assert result.nan_fraction == 0.0


def test_source_near_edge_is_padded_with_nan(tiny_release):
    release = Release.open(tiny_release.path)
    with release.open_tile("t0") as tile:
        result = cutout(tile, *_source(release, "edge"), size=20)
    # Source at x = 3: the window starts at column ceil(3 - 10) = -7, so 7 of 20 columns lie off the tile.
    assert result.edge and not result.off_tile
    assert np.isnan(result.data[:, :, :7]).all()
    assert np.isfinite(result.data[:, :, 7:]).all()
    assert result.nan_fraction == pytest.approx(7 / 20)
    assert result.rejected and result.nan_fraction >= MAX_NAN_FRACTION
    y, x = _peak(result.data[0])
    assert abs(y - 10) <= 1 and abs(x - 10) <= 1


def test_source_off_tile_gives_flag_not_exception(tiny_release):
    release = Release.open(tiny_release.path)
    with release.open_tile("t0") as tile:
        result = cutout(tile, *_source(release, "off"), size=32)
    assert result.off_tile and not result.edge and result.rejected
    assert result.data.shape == (3, 32, 32) and np.isnan(result.data).all()
    assert result.nan_fraction == 1.0


def test_exact_zero_pixels_count_as_missing():
    data = np.ones((2, 10, 10), dtype=np.float32)
    data[:, :3, :] = 0.0
    images = [data[0], data[1]]
    result = cutout_at_pixels(images, [(4.5, 4.5), (4.5, 4.5)], 10)
    assert result.nan_fraction == pytest.approx(0.3)
    assert result.rejected
    assert Cutout(data=data, edge=False, off_tile=False, nan_fraction=0.19).rejected is False


def test_tile_cutouts_scale_with_size_and_keep_row_order(tiny_release):
    release = Release.open(tiny_release.path)
    sizing = CutoutSizing(size_px=24, r50_factor=2.0, min_half_px=8, max_half_px=12)
    results = {}
    for tile, sources in release.iter_tiles():
        for id_str, result in zip(sources["id_str"].to_pylist(), tile_cutouts(tile, sources, sizing, 1.0), strict=True):
            results[id_str] = result
    # r50 4" at 1"/px, k=2 -> half 8 -> 16 px; r50 8" -> half 16 clipped to 12 -> 24 px; NaN r50 -> fixed 24 px.
    assert results["centre"].data.shape == (3, 16, 16)
    assert results["offcentre"].data.shape == (3, 24, 24)
    assert results["t1-centre"].data.shape == (3, 24, 24)
    assert results["off"].off_tile and results["edge"].edge
    for id_str in ("centre", "offcentre", "t1-centre"):
        size = results[id_str].data.shape[-1]
        y, x = _peak(results[id_str].data[2])
        assert abs(y - size // 2) <= 1 and abs(x - size // 2) <= 1


def test_fixed_sizing_ignores_size_column():
    sizes = CutoutSizing(size_px=40, r50_factor=None).sizes(np.array([1.0, 100.0]), 0.262, 2)
    assert sizes.tolist() == [40, 40]


def test_each_band_uses_its_own_wcs(tmp_path):
    # Band r's WCS is offset by (5, -3) px, and its galaxy drawn where that WCS puts the same sky position.
    path = tmp_path / "shifted.fits"
    base, shifted = tiny_wcs(), tiny_wcs(crpix_shift=(5.0, -3.0))
    ra, dec = base.pixel_to_world_values(50.0, 40.0)
    hdus = [fits.PrimaryHDU()]
    for band, wcs in zip(TINY_BANDS, (base, shifted, base), strict=True):
        x, y = wcs.world_to_pixel_values(ra, dec)
        hdus.append(fits.ImageHDU(gaussian_image([(float(x), float(y))], 1.0), header=wcs.to_header(), name=band))
    fits.HDUList(hdus).writeto(path)
    with Tile("shifted", path, TINY_BANDS) as tile:
        result = cutout(tile, float(ra), float(dec), size=21)
    for image in result.data:
        assert _peak(image) == (10, 10)


def _window_cases(rng: np.random.Generator, shape: tuple[int, int],
                  n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions inside, across every border, far off the image and non-finite, with even and odd window sizes."""
    xs = rng.uniform(-40, shape[1] + 40, n)
    ys = rng.uniform(-40, shape[0] + 40, n)
    xs[:4], ys[:4] = [0.0, shape[1] - 0.5, 12.5, -200.0], [0.0, shape[0] - 0.5, 12.0, 5.0]
    xs[4], ys[5] = np.nan, np.inf
    sizes = rng.integers(1, 50, n)
    return xs, ys, sizes


@pytest.mark.parametrize("byteorder", [">", "<"])
def test_compiled_cutting_equals_overlap_slices(tmp_path, byteorder):
    """The compiled path cuts the same windows, bit for bit, as astropy's overlap_slices, with the same flags."""
    from zoobot_pipeline.data.cutouts import _cut_any, _cut_float32, _float32_bits

    rng = np.random.default_rng(7)
    shape = (61, 83)
    images = []
    for band in range(3):
        image = rng.normal(size=shape).astype(f"{byteorder}f4")
        image[rng.random(shape) < 0.05] = np.nan
        image[rng.random(shape) < 0.05] = 0.0
        image[0, band] = -0.0
        images.append(image)
    xs, ys, sizes = _window_cases(rng, shape, 60)
    # band 2 is shifted by 30 pixels, so some windows meet one band and not another
    pixels = [(xs, ys), (xs, ys), (xs + 30.0, ys)]
    batch = _cut_float32([_float32_bits(image) for image in images], pixels, sizes)
    laid_out = _cut_any(images, pixels, sizes)
    fast = [batch.cutout(g) for g in range(len(batch))]
    for g, got in enumerate(fast):
        expected = cutout_at_pixels(images, [(x[g], y[g]) for x, y in pixels], int(sizes[g]))
        assert got.data.tobytes() == expected.data.tobytes() == laid_out.window(g).tobytes(), g
        assert (got.edge, got.off_tile) == (expected.edge, expected.off_tile), g
        assert got.nan_fraction == pytest.approx(expected.nan_fraction, abs=1e-12), g
    for name in ("edge", "off_tile", "nan_fraction", "offsets", "sizes"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(laid_out, name))
    assert any(c.off_tile for c in fast) and any(c.edge and not c.off_tile for c in fast)
    assert any(not c.edge for c in fast)


def test_tile_cutouts_of_float32_and_integer_tiles_agree(tmp_path):
    """A big-endian float32 FITS tile goes through the compiled path, an int16 one through overlap_slices: the
    cutouts of the same pixel values agree."""
    rng = np.random.default_rng(3)
    wcs = tiny_wcs()
    values = rng.integers(-50, 50, size=(40, 40)).astype(np.int16)
    paths = {}
    for kind, dtype in (("float", np.float32), ("int", np.int16)):
        hdus = [fits.PrimaryHDU()]
        for band in TINY_BANDS:
            hdus.append(fits.ImageHDU(values.astype(dtype), header=wcs.to_header(), name=band))
        paths[kind] = tmp_path / f"{kind}.fits"
        fits.HDUList(hdus).writeto(paths[kind])
    ra, dec = wcs.pixel_to_world_values(np.array([5.0, 20.0, 38.5, 100.0]), np.array([5.0, 19.5, 2.0, 3.0]))
    sources = pa.table({"ra": ra, "dec": dec, "r50_arcsec": [0.5, 1.0, 2.0, 1.0]})
    sizing = CutoutSizing(r50_factor=4.0, min_half_px=3, max_half_px=20)
    with Tile("f", paths["float"], TINY_BANDS) as tile_f, Tile("i", paths["int"], TINY_BANDS) as tile_i:
        assert tile_f.images[0].dtype == np.dtype(">f4")
        for a, b in zip(tile_cutouts(tile_f, sources, sizing, 0.262), tile_cutouts(tile_i, sources, sizing, 0.262),
                        strict=True):
            np.testing.assert_array_equal(a.data, b.data)
            assert (a.edge, a.off_tile, a.nan_fraction) == (b.edge, b.off_tile, b.nan_fraction)
            assert a.data.dtype == np.float32 and a.data.dtype.isnative
