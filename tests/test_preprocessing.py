from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess, preprocess_batch, preprocess_windows


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


def _reference(cutout: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """The module docstring's steps with numpy's float32 arithmetic and Pillow's own 'F' bilinear resize."""
    data = np.asarray(cutout, dtype=np.float32)
    if config.band_scales is not None:
        data = data / np.asarray(config.band_scales, dtype=np.float32)[:, None, None]
    mixed = np.tensordot(config.mixing_matrix().astype(np.float32), data, axes=1)

    def stretch(x):
        return np.arcsinh(np.multiply(x, config.q, dtype=np.float32)) if config.stretch == "arcsinh" else (
            np.asarray(x, dtype=np.float32))

    stretched = stretch(mixed)
    low = float(stretch(config.clip_min))
    if config.clip == "fixed":
        high = np.full(len(stretched), float(stretch(config.clip_max)))
    else:
        pool = stretched if config.clip_per_channel else stretched.reshape(1, -1)
        limits = [np.percentile(s[np.isfinite(s)], config.clip_percentile) for s in pool]
        high = np.broadcast_to(np.asarray(limits), (len(stretched),))
    out = np.zeros_like(stretched)
    for c in range(len(stretched)):
        if np.isfinite(high[c]) and high[c] > low:
            out[c] = (stretched[c] - low) / (high[c] - low)
    out = np.clip(out, 0, 1)
    out[np.isnan(out)] = config.nan_fill
    height, width = out.shape[1:]
    ch, cw = max(1, round(height * config.crop_fraction)), max(1, round(width * config.crop_fraction))
    out = out[:, (height - ch) // 2 : (height - ch) // 2 + ch, (width - cw) // 2 : (width - cw) // 2 + cw]
    size = config.input_size
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((size, size), Image.Resampling.BILINEAR))
               for c in out]
    return np.clip(np.stack(resized), 0, 1)


@pytest.mark.parametrize("side", [7, 48, 60, 81, 224, 300, 512])
@pytest.mark.parametrize(
    "config",
    [
        PreprocessingConfig.gz_decals(input_size=224),
        PreprocessingConfig.gz_decals(input_size=64, mode="grey", crop_fraction=0.5),
        PreprocessingConfig.euclid(input_size=96).model_copy(update={"bands": ("g", "r", "z"), "mode": "bands",
                                                                       "nan_fill": 0.25, "crop_fraction": 0.9}),
        PreprocessingConfig(bands=("g", "r", "z"), stretch="linear", clip="percentile", clip_per_channel=False,
                            mode="rgb", input_size=40),
    ],
    ids=["gz_decals_224", "grey_crop", "percentile_bands_nan_fill", "linear_shared_percentile"],
)
def test_matches_numpy_and_pillow(config, side):
    """Upsampling, downsampling and equal sizes, NaN and zero pixels, bright cores: the compiled steps equal numpy's
    float32 arithmetic and Pillow's resize to within 1e-6 (arcsinh differs from numpy's by at most one ulp)."""
    data = _galaxy(side, seed=side)
    data[:, : side // 5, :] = np.nan
    data[1, -2:, :] = 0.0
    expected = _reference(data, config)
    out = preprocess(data, config)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert 0 < expected.mean() < 1


def test_writes_into_given_array():
    config = PreprocessingConfig.gz_decals(input_size=32)
    batch = np.full((2, 3, 32, 32), -1.0, dtype=np.float32)
    returned = preprocess(_galaxy(40), config, out=batch[1])
    assert returned.base is batch and (batch[0] == -1).all()
    np.testing.assert_array_equal(batch[1], preprocess(_galaxy(40), config))
    with pytest.raises(ValueError, match="out must be a float32 array of shape"):
        preprocess(_galaxy(40), config, out=np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="no pixels"):
        preprocess(np.zeros((3, 0, 5), np.float32), config)


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


@pytest.mark.parametrize(
    "config",
    [PreprocessingConfig.gz_decals(input_size=48), PreprocessingConfig.gz_decals(input_size=40, mode="grey"),
     PreprocessingConfig.euclid(input_size=32).model_copy(update={"bands": ("g", "r", "z"), "mode": "bands"})],
    ids=["fixed_rgb_crop", "fixed_grey_crop", "percentile"],
)
def test_windows_in_one_buffer_equal_one_at_a_time(config):
    """preprocess_windows (one compiled call for fixed limits, per window otherwise) gives preprocess's numbers."""
    windows = [_galaxy(side, seed=side) for side in (7, 30, 48, 61, 100)]
    windows[2][:, :5] = np.nan
    sizes = np.array([w.shape[1] for w in windows])
    lengths = 3 * sizes * sizes
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    data = np.concatenate([w.astype(np.float32).ravel() for w in windows])
    expected = np.stack([preprocess(w, config) for w in windows])
    got = preprocess_windows(data, offsets, sizes, 3, config)
    np.testing.assert_array_equal(got, expected)
    subset = preprocess_windows(data, offsets[[3, 1]], sizes[[3, 1]], 3, config, bands=("g", "r", "z"))
    np.testing.assert_array_equal(subset, expected[[3, 1]])
    assert preprocess_windows(data, offsets[:0], sizes[:0], 3, config).shape == (0, *expected.shape[1:])
