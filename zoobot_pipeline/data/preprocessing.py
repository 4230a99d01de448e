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

Output: float32 ``(C, input_size, input_size)`` in [0, 1].

Named presets (:func:`preset`, :func:`available_presets`, :func:`register_preset`) are the configurations a command
line or a flow can ask for by name: ``gz_decals``, ``euclid`` and ``from_images`` are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoobot_pipeline.errors import check_name

__all__ = [
    "CutoutSizing", "PreprocessingConfig", "PresetFactory", "available_presets", "preprocess", "preprocess_batch",
    "preset", "register_preset", "resize_channels",
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


def _select_bands(data: np.ndarray, config: PreprocessingConfig, bands: Sequence[str] | None) -> np.ndarray:
    if bands is None:
        if data.shape[0] != len(config.bands):
            raise ValueError(f"cutout has {data.shape[0]} band(s), config expects {len(config.bands)} {config.bands}")
        return data
    bands = list(bands)
    if len(bands) != data.shape[0]:
        raise ValueError(f"{len(bands)} band name(s) given for a cutout with {data.shape[0]} band(s)")
    missing = [b for b in config.bands if b not in bands]
    if missing:
        raise ValueError(f"cutout lacks band(s) {missing} required by the preprocessing config (has {bands})")
    return data[[bands.index(b) for b in config.bands]]


def _stretch(x: np.ndarray | float, config: PreprocessingConfig) -> np.ndarray:
    if config.stretch == "arcsinh":
        return np.arcsinh(np.multiply(x, config.q, dtype=np.float32))
    return np.asarray(x, dtype=np.float32)


def _normalise(stretched: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    lo = float(_stretch(config.clip_min, config))
    if config.clip == "fixed":
        hi = np.full(stretched.shape[0], float(_stretch(config.clip_max, config)))
    else:
        finite = np.isfinite(stretched)
        samples = stretched if config.clip_per_channel else stretched.reshape(1, -1)
        mask = finite if config.clip_per_channel else finite.reshape(1, -1)
        hi_each = [
            np.percentile(s[m], config.clip_percentile) if m.any() else np.nan
            for s, m in zip(samples, mask, strict=True)
        ]
        hi = np.broadcast_to(np.asarray(hi_each, dtype=np.float64), (stretched.shape[0],))
    out = np.zeros_like(stretched)
    for c in range(stretched.shape[0]):
        if np.isfinite(hi[c]) and hi[c] > lo:
            out[c] = (stretched[c] - lo) / (hi[c] - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def resize_channels(data: np.ndarray, size: int) -> np.ndarray:
    """Resize float32 ``(C, H, W)`` to ``(C, size, size)`` with Pillow 'F' bilinear (anti-aliased when shrinking)."""
    if data.shape[1:] == (size, size):
        return np.ascontiguousarray(data, dtype=np.float32)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                    (size, size), Image.Resampling.BILINEAR
                ),
                dtype=np.float32,
            )
            for channel in data
        ]
    )


def _centre_crop(data: np.ndarray, fraction: float) -> np.ndarray:
    if fraction >= 1.0:
        return data
    h, w = data.shape[1:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return data[:, top : top + ch, left : left + cw]


def preprocess(cutout_data: np.ndarray, config: PreprocessingConfig, bands: Sequence[str] | None = None) -> np.ndarray:
    """Preprocess one cutout ``(n_bands, H, W)`` (or ``(H, W)``) into float32 ``(C, S, S)`` in [0, 1].

    ``bands`` names the cutout's bands in order; without it the cutout must already hold ``config.bands`` in order.
    """
    data = np.asarray(cutout_data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) cutout, got shape {data.shape}")
    data = _select_bands(data, config, bands)
    if config.band_scales is not None:
        data = data / np.asarray(config.band_scales, dtype=np.float32)[:, None, None]
    mixed = np.tensordot(config.mixing_matrix().astype(np.float32), data, axes=1)
    out = _normalise(_stretch(mixed, config), config)
    out[np.isnan(out)] = config.nan_fill
    out = resize_channels(_centre_crop(out, config.crop_fraction), config.input_size)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def preprocess_batch(
    cutouts: Sequence[np.ndarray] | np.ndarray, config: PreprocessingConfig, bands: Sequence[str] | None = None
) -> np.ndarray:
    """Preprocess a batch (list of cutouts, possibly of different sizes, or an array) into ``(N, C, S, S)``."""
    if len(cutouts) == 0:
        return np.zeros((0, config.n_channels, config.input_size, config.input_size), dtype=np.float32)
    return np.stack([preprocess(c, config, bands) for c in cutouts])
