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
