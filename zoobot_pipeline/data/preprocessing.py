"""The one preprocessing definition shared by training, scoring and rendering.

The cutout of each source is cut from its survey tile as ``cutout`` (:class:`CutoutSizing`) says: fixed, or scaled
with the source's half-light radius. It is part of the preprocessing because it sets the angular scale the model
sees: a model package records it, and scoring cuts exactly as training did.

Steps, in order, for a cutout of shape ``(n_bands, H, W)``:

1. select ``bands`` (by name when the cutout's band names are given) and divide each by its ``band_scales`` entry;
2. mix bands into output channels: ``grey`` = mean of bands (1 channel), ``bands`` = one channel per band,
   ``rgb`` = 3 channels from ``channel_mixing`` (rows R, G, B; columns bands). Without a matrix, bands are taken
   as listed blue to red: 3 bands give R = band 3, G = band 2, B = band 1 (GZ DECaLS g,r,z -> B,G,R) and 2 bands give
   R = band 2, G = their mean, B = band 1 (Euclid Q1: R = Y, G = mean(VIS, Y), B = VIS);
3. stretch: ``arcsinh(q * x)`` (or ``linear``: ``x``);
4. map [lo, hi] to [0, 1] and clip, with lo = stretch(``clip_min``) and hi = stretch(``clip_max``) (``fixed``) or
   the ``clip_percentile`` of the stretched finite values (``percentile``, per channel or over all channels);
5. replace NaN by ``nan_fill`` (0 by default);
6. centre-crop to ``crop_fraction`` of each side, then resize to ``input_size`` with Pillow's float ('F' mode)
   bilinear filter, which averages over the source footprint when shrinking (anti-aliased) and is deterministic.

The steps run as compiled kernels (:mod:`.image_kernels`): the resize reproduces Pillow's to float32 rounding, and
the other steps numpy's float32 arithmetic to within a few units in the last place.

Output: float32 ``(C, input_size, input_size)`` in [0, 1].

Named presets (:func:`preset`, :func:`available_presets`, :func:`register_preset`) are the configurations a command
line or a flow can ask for by name: ``gz_decals``, ``euclid`` and ``from_images`` are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoobot_pipeline.errors import check_name

__all__ = [
    "CutoutSizing", "PreprocessingConfig", "PresetFactory", "available_presets", "preprocess", "preprocess_batch",
    "preprocess_windows", "preset", "register_preset",
]

# Legacy Survey DR2-style divisors (nanomaggies) and limits used for GZ DECaLS subject images.
_GZ_DECALS_SCALES = (0.008, 0.014, 0.019)
_GZ_DECALS_LIMITS = (-0.5, 300.0)


class CutoutSizing(BaseModel):
    """Cutout width in pixels: fixed, or scaled with source size (Galaxy Zoo style).

    With ``r50_factor`` set (the default), half-width = clip(r50_factor * r50_arcsec / pixel_scale, min_half_px,
    max_half_px), so the galaxy fills a similar share of every image as in Galaxy Zoo DESI; a source without a
    finite, positive size gets the fixed ``size_px``. Set ``r50_factor=None`` for fixed-size cutouts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="cutout sizing")

    size_px: int = Field(default=128, ge=1)
    r50_factor: float | None = Field(default=5.0, gt=0)
    min_half_px: int = Field(default=24, ge=1)
    max_half_px: int = Field(default=256, ge=1)
    size_column: str = "r50_arcsec"

    def sizes(self, r50_arcsec: np.ndarray | None, pixel_scale_arcsec: float, n: int) -> np.ndarray:
        """Full widths in pixels for ``n`` sources with half-light radii ``r50_arcsec`` (or None)."""
        sizes = np.full(n, self.size_px, dtype=np.int64)
        if self.r50_factor is None or r50_arcsec is None:
            return sizes
        r50 = np.asarray(r50_arcsec, dtype=np.float64)
        ok = np.isfinite(r50) & (r50 > 0)
        half = np.clip(self.r50_factor * r50[ok] / pixel_scale_arcsec, self.min_half_px, self.max_half_px)
        sizes[ok] = 2 * np.round(half).astype(np.int64)
        return sizes


class PreprocessingConfig(BaseModel):
    """Serialisable preprocessing parameters (see the module docstring for the steps)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="preprocessing settings")

    bands: tuple[str, ...] = Field(min_length=1)
    band_scales: tuple[float, ...] | None = None
    mode: Literal["rgb", "grey", "bands"] = "grey"
    channel_mixing: tuple[tuple[float, ...], ...] | None = None
    stretch: Literal["arcsinh", "linear"] = "arcsinh"
    q: float = Field(default=1.0, gt=0)
    clip: Literal["percentile", "fixed"] = "percentile"
    clip_percentile: float = Field(default=99.85, gt=0, le=100)
    clip_per_channel: bool = True
    clip_min: float = 0.0
    clip_max: float | None = None
    nan_fill: float = Field(default=0.0, ge=0, le=1)
    crop_fraction: float = Field(default=1.0, gt=0, le=1)
    input_size: int = Field(default=224, ge=1)
    cutout: CutoutSizing = Field(default_factory=CutoutSizing)

    @field_validator("input_size", mode="before")
    @classmethod
    def _plain_input_size(cls, value: object) -> object:
        """Say what ``input_size`` is when it is too small (the ``ge=1`` bound stays, for the schema)."""
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError("the side of the images, in pixels, must be at least 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingConfig:
        n = len(self.bands)
        if len(set(self.bands)) != n:
            raise ValueError(f"bands must be distinct, got {self.bands}")
        if self.band_scales is not None and (len(self.band_scales) != n or min(self.band_scales) <= 0):
            raise ValueError(f"band_scales needs {n} positive values, got {self.band_scales}")
        if self.channel_mixing is not None:
            if self.mode != "rgb":
                raise ValueError("channel_mixing applies only to mode 'rgb'")
            if len(self.channel_mixing) != 3 or any(len(row) != n for row in self.channel_mixing):
                raise ValueError(f"channel_mixing must be 3 rows of {n} weights (R, G, B by bands)")
        elif self.mode == "rgb" and n not in (2, 3):
            raise ValueError(f"mode 'rgb' with {n} band(s) needs an explicit channel_mixing")
        if self.clip == "fixed" and (self.clip_max is None or self.clip_max <= self.clip_min):
            raise ValueError("clip 'fixed' needs clip_max > clip_min")
        return self

    @property
    def n_channels(self) -> int:
        """Number of output channels."""
        return {"rgb": 3, "grey": 1, "bands": len(self.bands)}[self.mode]

    def mixing_matrix(self) -> np.ndarray:
        """The (channels, bands) matrix mapping scaled band fluxes to output channels."""
        n = len(self.bands)
        if self.mode == "grey":
            return np.full((1, n), 1.0 / n)
        if self.mode == "bands":
            return np.eye(n)
        if self.channel_mixing is not None:
            return np.asarray(self.channel_mixing, dtype=np.float64)
        if n == 3:
            return np.eye(3)[::-1].copy()
        return np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])

    @classmethod
    def gz_decals(
        cls, input_size: int = 224, mode: Literal["rgb", "grey"] = "rgb", crop_fraction: float = 0.75
    ) -> PreprocessingConfig:
        """GZ DECaLS: g, r, z divided by 0.008, 0.014, 0.019, ``arcsinh``, fixed limits (-0.5, 300) before stretch."""
        return cls(
            bands=("g", "r", "z"),
            band_scales=_GZ_DECALS_SCALES,
            mode=mode,
            stretch="arcsinh",
            q=1.0,
            clip="fixed",
            clip_min=_GZ_DECALS_LIMITS[0],
            clip_max=_GZ_DECALS_LIMITS[1],
            crop_fraction=crop_fraction,
            input_size=input_size,
        )

    @classmethod
    def euclid(
        cls, input_size: int = 224, q: float = 100.0, mode: Literal["rgb", "grey"] = "rgb", crop_fraction: float = 1.0
    ) -> PreprocessingConfig:
        """Euclid Q1 style: VIS and Y, ``arcsinh(flux * q)``, clip at the 99.85th percentile; R=Y, G=mean, B=VIS."""
        return cls(
            bands=("VIS", "Y"),
            mode=mode,
            stretch="arcsinh",
            q=q,
            clip="percentile",
            clip_percentile=99.85,
            clip_min=0.0,
            crop_fraction=crop_fraction,
            input_size=input_size,
        )

    @classmethod
    def from_images(
        cls, input_size: int = 224, mode: Literal["rgb", "grey"] = "grey", crop_fraction: float = 1.0
    ) -> PreprocessingConfig:
        """Already-stretched PNG/JPEG cutouts (channels R, G, B in [0, 1]): no stretch, fixed limits [0, 1]."""
        identity = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
        return cls(
            bands=("R", "G", "B"),
            mode=mode,
            channel_mixing=identity if mode == "rgb" else None,
            stretch="linear",
            clip="fixed",
            clip_min=0.0,
            clip_max=1.0,
            crop_fraction=crop_fraction,
            input_size=input_size,
        )


PresetFactory = Callable[..., PreprocessingConfig]
"""Makes a preset's configuration; called with ``input_size=`` (pixels)."""

_PRESETS: dict[str, PresetFactory] = {
    "gz_decals": PreprocessingConfig.gz_decals,
    "euclid": PreprocessingConfig.euclid,
    "from_images": PreprocessingConfig.from_images,
}


def register_preset(name: str, factory: PresetFactory) -> None:
    """Make ``factory(input_size=...)`` available as the preset ``name`` (replacing one of that name)."""
    _PRESETS[name] = factory


def available_presets() -> tuple[str, ...]:
    """Names accepted by :func:`preset`, in registration order."""
    return tuple(_PRESETS)


def preset(name: str, input_size: int = 224) -> PreprocessingConfig:
    """The preset ``name`` at ``input_size`` pixels; :class:`~zoobot_pipeline.errors.UnknownNameError` if unknown."""
    return _PRESETS[check_name(name, available_presets(), "preprocessing preset")](input_size=input_size)


def _band_index(n_bands: int, config: PreprocessingConfig, bands: Sequence[str] | None) -> np.ndarray:
    """Index of each of ``config.bands`` among a cutout's ``n_bands`` bands (named ``bands``, or already in order)."""
    if bands is None:
        if n_bands != len(config.bands):
            raise ValueError(f"cutout has {n_bands} band(s), config expects {len(config.bands)} {config.bands}")
        return np.arange(n_bands, dtype=np.int64)
    bands = list(bands)
    if len(bands) != n_bands:
        raise ValueError(f"{len(bands)} band name(s) given for a cutout with {n_bands} band(s)")
    missing = [b for b in config.bands if b not in bands]
    if missing:
        raise ValueError(f"cutout lacks band(s) {missing} required by the preprocessing config (has {bands})")
    return np.array([bands.index(b) for b in config.bands], dtype=np.int64)


def _stretch_value(x: float, config: PreprocessingConfig) -> float:
    """A clip limit stretched as the pixels are (float32, like them)."""
    value = np.float32(x) * np.float32(config.q)
    return float(np.arcsinh(np.float32(value))) if config.stretch == "arcsinh" else float(np.float32(x))


def _crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centre crop keeping ``fraction`` of each side (at least 1 pixel)."""
    if fraction >= 1.0:
        return 0, 0, height, width
    ch, cw = max(1, round(height * fraction)), max(1, round(width * fraction))
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def _percentile_limits(stretched: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Upper limit per channel: the ``clip_percentile`` of the finite stretched values (per channel or over all)."""
    finite = np.isfinite(stretched)
    samples = stretched if config.clip_per_channel else stretched.reshape(1, -1)
    mask = finite if config.clip_per_channel else finite.reshape(1, -1)
    limits = [np.percentile(s[m], config.clip_percentile) if m.any() else np.nan
              for s, m in zip(samples, mask, strict=True)]
    return np.broadcast_to(np.asarray(limits, dtype=np.float64), (stretched.shape[0],)).copy()


def preprocess(cutout_data: np.ndarray, config: PreprocessingConfig, bands: Sequence[str] | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Preprocess one cutout ``(n_bands, H, W)`` (or ``(H, W)``) into float32 ``(C, S, S)`` in [0, 1].

    ``bands`` names the cutout's bands in order; without it the cutout must already hold ``config.bands`` in order.
    ``out``, a float32 ``(C, S, S)`` array (e.g. one row of a model batch), receives the result instead of a new
    array. With fixed clip limits only the centre crop is stretched (every step before the resize is per pixel);
    percentile limits are taken over the whole cutout, as the module docstring says.
    """
    from zoobot_pipeline.data.image_kernels import normalise_resize, stretch_mix

    data = np.asarray(cutout_data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) cutout, got shape {data.shape}")
    if 0 in data.shape[1:]:
        raise ValueError(f"cutout has no pixels (shape {data.shape})")
    band_index = _band_index(data.shape[0], config, bands)
    size = (config.n_channels, config.input_size, config.input_size)
    if out is None:
        out = np.empty(size, dtype=np.float32)
    elif out.shape != size or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {size}, got {out.dtype} {out.shape}")
    data = np.ascontiguousarray(data)
    scales = np.asarray(config.band_scales or (1.0,) * len(config.bands), dtype=np.float32)
    mixing = np.ascontiguousarray(config.mixing_matrix(), dtype=np.float32)
    top, left, height, width = _crop_box(*data.shape[1:], config.crop_fraction)
    arcsinh = config.stretch == "arcsinh"
    low = _stretch_value(config.clip_min, config)
    if config.clip == "fixed":
        stretched = stretch_mix(data, band_index, scales, mixing, config.q, arcsinh, top, left, height, width)
        high = np.full(config.n_channels, _stretch_value(config.clip_max, config))
        top = left = 0
    else:
        stretched = stretch_mix(data, band_index, scales, mixing, config.q, arcsinh, 0, 0, *data.shape[1:])
        high = _percentile_limits(stretched, config)
    normalise_resize(stretched, low, high, config.nan_fill, top, left, height, width, out)
    return out


def preprocess_windows(data: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, n_bands: int,
                       config: PreprocessingConfig, bands: Sequence[str] | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Preprocess square windows laid end to end in the float32 buffer ``data`` (window ``g`` is ``data[offsets[g]:]``
    as ``(n_bands, sizes[g], sizes[g])``, as :class:`~zoobot_pipeline.data.cutouts.CutoutBatch` holds them) into
    ``out`` ``(len(offsets), C, S, S)`` (a new array when None): the same numbers as :func:`preprocess` per window,
    in one compiled call without the GIL when the clip limits are fixed."""
    from zoobot_pipeline.data.image_kernels import preprocess_windows as kernel

    n = len(offsets)
    shape = (n, config.n_channels, config.input_size, config.input_size)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    band_index = _band_index(n_bands, config, bands)
    if config.clip != "fixed" or n == 0 or int(np.min(sizes, initial=1)) == 0:
        for g in range(n):
            size = int(sizes[g])
            window = data[int(offsets[g]) : int(offsets[g]) + n_bands * size * size].reshape(n_bands, size, size)
            preprocess(window, config, bands, out=out[g])
        return out
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    if config.crop_fraction >= 1.0:
        heights = sizes
    else:  # _crop_box for square windows: Python's round (half to even) is numpy's
        heights = np.maximum(1, np.round(sizes * config.crop_fraction).astype(np.int64))
    starts = (sizes - heights) // 2
    crops = np.ascontiguousarray(np.stack([starts, starts, heights, heights], axis=1), dtype=np.int64)
    scales = np.asarray(config.band_scales or (1.0,) * len(config.bands), dtype=np.float32)
    mixing = np.ascontiguousarray(config.mixing_matrix(), dtype=np.float32)
    high = np.full(config.n_channels, _stretch_value(config.clip_max, config))
    kernel(np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(offsets, dtype=np.int64), sizes,
           n_bands, band_index, scales, mixing, config.q, config.stretch == "arcsinh",
           _stretch_value(config.clip_min, config), high, config.nan_fill, crops, out)
    return out


def preprocess_batch(
    cutouts: Sequence[np.ndarray] | np.ndarray, config: PreprocessingConfig, bands: Sequence[str] | None = None
) -> np.ndarray:
    """Preprocess a batch (list of cutouts, possibly of different sizes, or an array) into ``(N, C, S, S)``."""
    batch = np.empty((len(cutouts), config.n_channels, config.input_size, config.input_size), dtype=np.float32)
    for row, cutout_data in zip(batch, cutouts, strict=True):
        preprocess(cutout_data, config, bands, out=row)
    return batch
