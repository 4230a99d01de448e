from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess, preprocess_batch


def _galaxy(size: int = 48, bands: int = 3, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * 4.0**2))
    noise = np.random.default_rng(seed).normal(0, 0.01, size=(bands, size, size))
    return (np.arange(1, bands + 1)[:, None, None] * blob + noise).astype(">f4")


@pytest.mark.parametrize(
    "config",
    [
        PreprocessingConfig.gz_decals(),
        PreprocessingConfig.euclid(input_size=64),
        PreprocessingConfig.from_images(mode="rgb"),
        PreprocessingConfig(
            bands=("u", "g", "r", "i"),
            band_scales=(1.0, 2.0, 3.0, 4.0),
            mode="rgb",
            channel_mixing=((0, 0, 0.5, 0.5), (0, 1, 0, 0), (1, 0, 0, 0)),
            clip_per_channel=False,
            input_size=32,
        ),
    ],
)
def test_config_round_trips_through_json_and_dict(config):
    assert PreprocessingConfig.model_validate_json(config.model_dump_json()) == config
    assert PreprocessingConfig.model_validate(json.loads(json.dumps(config.model_dump()))) == config


@pytest.mark.parametrize(("mode", "channels"), [("grey", 1), ("rgb", 3), ("bands", 3)])
def test_output_shape_dtype_range(mode, channels):
    config = PreprocessingConfig(bands=("g", "r", "z"), mode=mode, input_size=24, crop_fraction=0.75)
    out = preprocess(_galaxy(), config)
    assert out.shape == (channels, 24, 24) and config.n_channels == channels
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5
    assert out[:, 12, 12].min() > out[:, 0, 0].max(), "centre must be brighter than the corner"


def test_arcsinh_fixed_clip_matches_numpy():
    values = np.array([-1.0, 0.0, 0.5, 2.0, 5.0, 10.0, 50.0, 300.0, 1.0, 3.0, 7.0, 20.0, 0.1, 0.2, 40.0, -0.2])
    x = np.stack([values.reshape(4, 4), 3.0 * values.reshape(4, 4)]).astype(np.float32)
    config = PreprocessingConfig(
        bands=("a", "b"),
        band_scales=(0.5, 1.5),
        mode="bands",
        q=0.7,
        clip="fixed",
        clip_min=-0.5,
        clip_max=30.0,
        input_size=4,
    )
    scales = np.array([0.5, 1.5])[:, None, None]
    lo, hi = np.arcsinh(0.7 * -0.5), np.arcsinh(0.7 * 30.0)
    expected = np.clip((np.arcsinh(0.7 * x / scales) - lo) / (hi - lo), 0, 1)
    assert 0 < expected.mean() < 1 and (expected == 0).any() and (expected == 1).any()
    np.testing.assert_allclose(preprocess(x, config), expected, rtol=1e-5, atol=1e-6)


def test_percentile_clip_matches_numpy():
    x = np.random.default_rng(1).gamma(1.0, 2.0, size=(1, 16, 16)).astype(np.float32)
    config = PreprocessingConfig(bands=("VIS",), mode="bands", q=3.0, clip_percentile=90.0, input_size=16)
    stretched = np.arcsinh(3.0 * x)
    expected = np.clip(stretched / np.percentile(stretched, 90.0), 0, 1)
    np.testing.assert_allclose(preprocess(x, config), expected, rtol=1e-5, atol=1e-6)
    assert (preprocess(x, config) == 1.0).sum() == pytest.approx(0.1 * 256, abs=2)


def test_rgb_default_mixing_is_gz_and_euclid_convention():
    data = _galaxy(size=16)
    grz = PreprocessingConfig(bands=("g", "r", "z"), mode="rgb", clip="fixed", clip_max=3.0, input_size=16)
    per_band = preprocess(data, grz.model_copy(update={"mode": "bands"}))
    np.testing.assert_array_equal(preprocess(data, grz), per_band[::-1])  # R = z, G = r, B = g
    euclid = PreprocessingConfig(bands=("VIS", "Y"), mode="rgb", clip="fixed", clip_max=3.0, input_size=16, q=1.0)
    two = data[:2]
    rgb = preprocess(two, euclid)
    expected_g = np.clip(np.arcsinh(two.astype(np.float32).mean(axis=0)) / np.arcsinh(3.0), 0, 1)
    np.testing.assert_allclose(rgb[1], expected_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        rgb[0], np.clip(np.arcsinh(two[1].astype(np.float32)) / np.arcsinh(3.0), 0, 1), rtol=1e-5, atol=1e-6
    )


def test_grey_is_mean_of_bands():
    data = _galaxy(size=16)
    config = PreprocessingConfig(bands=("g", "r", "z"), mode="grey", clip="fixed", clip_max=3.0, input_size=16)
    expected = np.clip(np.arcsinh(data.astype(np.float32).mean(axis=0)) / np.arcsinh(3.0), 0, 1)
    np.testing.assert_allclose(preprocess(data, config)[0], expected, rtol=1e-5, atol=1e-6)


def test_bands_selected_by_name():
    data = _galaxy(bands=4)
    config = PreprocessingConfig.gz_decals(input_size=32)
    shuffled = data[[2, 0, 3, 1]]  # z, g, i, r
    np.testing.assert_array_equal(
        preprocess(shuffled, config, bands=("z", "g", "i", "r")), preprocess(data[[0, 1, 2]], config, ("g", "r", "z"))
    )
    with pytest.raises(ValueError, match=r"lacks band\(s\) \['z'\]"):
        preprocess(data[:2], config, bands=("g", "r"))


def test_resize_is_deterministic_and_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None] * 2.0
    config = PreprocessingConfig(
        bands=("a",), mode="bands", stretch="linear", clip="fixed", clip_max=2.0, input_size=16
    )
    first, second = preprocess(checker, config), preprocess(checker, config)
    assert first.tobytes() == second.tobytes()
    np.testing.assert_allclose(first[0, 2:-2, 2:-2], 0.5, atol=0.02)  # averaged, not sampled


def test_centre_crop_removes_border():
    data = np.full((1, 40, 40), 0.1, dtype=np.float32)
    data[0, :4, :4] = 100.0
    config = PreprocessingConfig(bands=("a",), mode="bands", clip="fixed", clip_max=100.0, input_size=20)
    assert preprocess(data, config)[0, 0, 0] > 0.9
    cropped = preprocess(data, config.model_copy(update={"crop_fraction": 0.5}))
    assert cropped.max() < 0.2


def test_nan_input_gives_no_nan_output():
    data = _galaxy(size=32)
    data[:, :10, :] = np.nan
    for config in (PreprocessingConfig.gz_decals(input_size=16), PreprocessingConfig.euclid(input_size=16)):
        out = preprocess(data[: len(config.bands)], config)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    all_nan = np.full((3, 8, 8), np.nan, dtype=np.float32)
    assert (preprocess(all_nan, PreprocessingConfig(bands=("g", "r", "z"), input_size=8)) == 0).all()


def test_batch_accepts_mixed_sizes_and_arrays():
    config = PreprocessingConfig.gz_decals(input_size=32, mode="grey")
    batch = preprocess_batch([_galaxy(40), _galaxy(64, seed=1)], config)
    assert batch.shape == (2, 1, 32, 32) and batch.dtype == np.float32
    stacked = preprocess_batch(np.stack([_galaxy(40), _galaxy(40, seed=2)]), config)
    np.testing.assert_array_equal(stacked[0], batch[0])
    assert preprocess_batch([], config).shape == (0, 1, 32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bands": ("g", "r", "z", "i"), "mode": "rgb"},
        {"bands": ("g", "r"), "band_scales": (1.0,)},
        {"bands": ("g", "r"), "clip": "fixed"},
        {"bands": ("g", "r"), "mode": "grey", "channel_mixing": ((1, 0), (0, 1), (1, 1))},
        {"bands": ("g", "g")},
        {"bands": ("g",), "unknown": 1},
    ],
)
def test_invalid_configs_rejected(kwargs):
    with pytest.raises(ValidationError):
        PreprocessingConfig(**kwargs)
