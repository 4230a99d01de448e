from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoobot_pipeline.data.cutouts import cutout
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import MAX_IMAGE_BYTES, encode_image, render_image, render_rgb


@pytest.fixture
def centre_cutout(tiny_release) -> np.ndarray:
    release = Release.open(tiny_release.path)
    row = release.sources.slice(0, 1)
    assert row["id_str"][0].as_py() == "centre"
    with release.open_tile("t0") as tile:
        return cutout(tile, row["ra"][0].as_py(), row["dec"][0].as_py(), size=40).data


def _brightness(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64).sum(axis=-1)


def test_png_is_424_rgb_under_limit_and_bright_at_source(centre_cutout, tmp_path):
    path = render_image(centre_cutout, tmp_path / "subjects" / "centre.png", bands=("g", "r", "z"))
    assert path.stat().st_size <= MAX_IMAGE_BYTES
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (424, 424)
        rgb = np.asarray(image)
    brightness = _brightness(rgb)
    assert brightness[212, 212] > 3 * brightness[10, 10]
    weights = np.clip(brightness - np.median(brightness), 0, None)
    rows, cols = np.indices(weights.shape)
    centroid = (float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum()))
    assert centroid == pytest.approx((212, 212), abs=15)
    assert [p.name for p in path.parent.iterdir()] == ["centre.png"], "no temporary files left behind"


def test_composite_is_red_where_z_is_brightest(centre_cutout):
    rgb = render_rgb(
        centre_cutout,
        bands=("g", "r", "z"),
        size=64,
        config=PreprocessingConfig(
            bands=("g", "r", "z"), mode="rgb", clip="fixed", clip_max=3.0, crop_fraction=1.0, input_size=64
        ),
    )
    red, green, blue = rgb[32, 32].astype(int)
    assert red > green > blue  # z (amplitude 3) -> R, r (2) -> G, g (1) -> B


def test_jpeg_and_gz_decals_style(centre_cutout, tmp_path):
    config = PreprocessingConfig.gz_decals(input_size=424, crop_fraction=1.0)
    path = render_image(centre_cutout * 0.05, tmp_path / "centre.jpg", bands=("g", "r", "z"), config=config, fmt="jpeg")
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (424, 424) and image.mode == "RGB"
        brightness = _brightness(np.asarray(image))
    assert path.stat().st_size <= MAX_IMAGE_BYTES
    assert brightness[212, 212] > brightness[5, 5] + 100


def test_rgb_array_for_grids_and_single_band(centre_cutout):
    rgb = render_rgb(centre_cutout, size=100)
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8
    grey = render_rgb(centre_cutout[1], size=50)
    assert grey.shape == (50, 50, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_size_limit_is_enforced():
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="over 1000"):
        encode_image(noise, "png", max_bytes=1000)
    with pytest.raises(ValueError, match="exceeds 1000 bytes"):
        encode_image(noise, "jpeg", max_bytes=1000)
    jpeg = encode_image(noise, "jpeg", max_bytes=60_000)
    assert len(jpeg) <= 60_000


def test_rows_are_flipped_so_north_is_up():
    data = np.full((3, 32, 32), 0.01, dtype=np.float32)
    data[:, 28, 16] = 10.0  # high FITS y: north for a standard sky WCS
    config = PreprocessingConfig(bands=("g", "r", "z"), mode="rgb", clip="fixed", clip_max=10.0, input_size=32)
    rgb = render_rgb(data, bands=("g", "r", "z"), config=config)
    row, _ = np.unravel_index(_brightness(rgb).argmax(), (32, 32))
    assert row == 32 - 1 - 28
