"""The Hubble Deep Field release: real galaxies through the release reader, cutouts and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import hubble_deep_field

from zoobot_pipeline.data.cutouts import cutout
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.synthetic.hubble import detect_sources, hubble_deep_field_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return Release.open(hubble_deep_field_release(tmp_path_factory.mktemp("hxdf") / "release", max_sources=60))


def test_release_has_detected_galaxies_on_the_tile(release):
    sources = release.sources
    assert release.tile_ids == ["hxdf"] and 30 <= sources.num_rows <= 60
    assert len(set(sources["id_str"].to_pylist())) == sources.num_rows
    with release.open_tile("hxdf") as tile:
        for ra, dec in zip(sources["ra"].to_pylist()[:10], sources["dec"].to_pylist()[:10], strict=True):
            cut = cutout(tile, ra, dec, 32)
            assert not cut.off_tile and not cut.rejected
            # a detected source is brighter at its centre than around it
            assert cut.data[:, 14:18, 14:18].mean() > np.nanmedian(cut.data)


def test_model_preprocessing_gives_back_the_jpeg(release):
    """Fluxes invert GZ DECaLS preprocessing: the model sees the JPEG's colours (blue=g, green=r, red=z)."""
    rgb = hubble_deep_field().astype(np.float64) / 255
    config = PreprocessingConfig.gz_decals(input_size=41, crop_fraction=1.0)
    with release.open_tile("hxdf") as tile:
        x, y = tile.wcs[0].world_to_pixel_values(release.sources["ra"][0].as_py(), release.sources["dec"][0].as_py())
        col, row = int(round(float(x))), int(round(float(y)))
        ra, dec = tile.wcs[0].pixel_to_world_values(col, row)  # an odd window centred on a whole pixel
        data = cutout(tile, float(ra), float(dec), 41).data
    image = preprocess(data, config, release.bands)  # channels R, G, B
    jpeg_rows = rgb.shape[0] - 1 - np.arange(row - 20, row + 21)  # FITS rows go up, JPEG rows go down
    expected = rgb[jpeg_rows][:, col - 20 : col + 21].transpose(2, 0, 1)
    np.testing.assert_allclose(image, expected, atol=2e-3)


def test_detection_finds_planted_sources():
    rng = np.random.default_rng(0)
    image = rng.normal(10, 1, (200, 300))
    yy, xx = np.mgrid[:200, :300]
    planted = [(50.0, 60.0, 40.0), (220.0, 150.0, 20.0)]
    for x, y, amplitude in planted:
        image += amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2))
    found = detect_sources(image)
    assert len(found) == 2
    for (x, y, _), (fx, fy, _, _) in zip(planted, found, strict=True):
        assert abs(fx - x) < 0.5 and abs(fy - y) < 0.5
