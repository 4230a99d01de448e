"""Synthetic galaxy morphology: draw true parameters and render them as PSF-convolved multi-band stamps.

Smooth profiles come from GalSim (Sersic, Exponential, InclinedExponential, Moffat PSF) drawn without a pixel
convolution; spiral arms, boxy bulges, tidal tails/shells, diffraction spikes and artifacts are numpy. Each component is
rendered once per source at unit flux and scaled per band by its colour, and the sum is convolved once with every band's
PSF. Fluxes are in nanomaggies (AB zeropoint 22.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import gammaincinv

try:
    import galsim
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("synthetic releases need GalSim: pip install 'zoobot-pipeline[simulate]'") from err

__all__ = [
    "KINDS",
    "Rendered",
    "SurveyConditions",
    "mag_to_flux",
    "flux_to_mag",
    "psf_kernels",
    "render_source",
    "sample_truth",
    "visibility",
]

KINDS = ("smooth", "featured", "edge_on", "merger", "star", "artifact")
DEFAULT_KIND_FRACTIONS = {"smooth": 0.35, "featured": 0.37, "edge_on": 0.13, "merger": 0.09, "star": 0.04,
                          "artifact": 0.02}
ZEROPOINT = 22.5

# g-r and r-z colours (AB mag) of each component; per-source scatter is added when rendering.
_COLOURS = {"bulge": (0.80, 0.45), "disc": (0.50, 0.30), "arms": (0.30, 0.15), "bar": (0.75, 0.42),
            "tidal": (0.60, 0.35)}
_PITCH_DEG = {"tight": (8.0, 14.0), "medium": (15.0, 24.0), "loose": (25.0, 38.0)}


@dataclass(frozen=True)
class SurveyConditions:
    """Bands, pixel scale, seeing and sky noise of a synthetic survey (DECaLS-like defaults)."""

    bands: tuple[str, ...] = ("g", "r", "z")
    pixel_scale: float = 0.262
    psf_fwhm: dict[str, float] = field(default_factory=lambda: {"g": 1.45, "r": 1.30, "z": 1.20})
    psf_beta: float = 3.5
    sky_sigma: dict[str, float] = field(default_factory=lambda: {"g": 0.0065, "r": 0.011, "z": 0.028})

    def __post_init__(self) -> None:
        missing = [b for b in self.bands if b not in self.psf_fwhm or b not in self.sky_sigma]
        if missing:
            raise ValueError(f"no PSF FWHM or sky noise given for bands {missing}")

    @property
    def reference_band(self) -> str:
        """The band whose magnitude is sampled ("r" when present, else the middle band)."""
        return "r" if "r" in self.bands else self.bands[len(self.bands) // 2]


def mag_to_flux(mag: np.ndarray | float) -> np.ndarray:
    """AB magnitude to flux in nanomaggies."""
    return 10.0 ** ((ZEROPOINT - np.asarray(mag, dtype=np.float64)) / 2.5)


def flux_to_mag(flux: np.ndarray | float) -> np.ndarray:
    """Flux in nanomaggies to AB magnitude (NaN for non-positive flux)."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, ZEROPOINT - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)


def sample_truth(n: int, rng: np.random.Generator, mag_range: tuple[float, float] = (14.0, 19.0),
                 kind_fractions: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Draw the true morphology of ``n`` sources as columns (see the module docs of ``simulate`` for their meaning)."""
    fractions = dict(DEFAULT_KIND_FRACTIONS if kind_fractions is None else kind_fractions)
    p = np.array([fractions.get(k, 0.0) for k in KINDS], dtype=np.float64)
    if p.sum() <= 0 or (p < 0).any():
        raise ValueError(f"kind fractions must be non-negative with a positive sum, got {fractions}")
    kind = np.asarray(KINDS, dtype=object)[rng.choice(len(KINDS), size=n, p=p / p.sum())]
    is_ = {k: kind == k for k in KINDS}
    galaxy = ~(is_["star"] | is_["artifact"])

    # Number counts rising towards faint magnitudes: pdf ~ 10**(0.3 m) on mag_range (inverse CDF).
    lo, hi = mag_range
    slope = 0.3 * np.log(10.0)
    u = rng.random(n)
    mag = np.log(np.exp(slope * lo) + u * (np.exp(slope * hi) - np.exp(slope * lo))) / slope
    log_r50 = 0.85 - 0.14 * (mag - 14.0) + rng.normal(0.0, 0.15, n)
    log_r50 += np.where(is_["smooth"], -0.06, 0.0) + np.where(is_["edge_on"] | is_["merger"], 0.08, 0.0)
    r50 = np.clip(10.0**log_r50, 0.6, 25.0)

    sersic_n = np.where(is_["smooth"], rng.uniform(2.0, 6.0, n), rng.uniform(1.0, 4.0, n))
    axis_ratio = np.select(
        [is_["smooth"], is_["featured"], is_["edge_on"]],
        [rng.uniform(0.3, 1.0, n), rng.uniform(0.3, 1.0, n), rng.uniform(0.08, 0.2, n)],
        rng.uniform(0.5, 1.0, n),
    )
    bulge_fraction = np.select(
        [is_["smooth"], is_["featured"], is_["edge_on"], is_["merger"]],
        [np.ones(n), rng.beta(1.3, 3.0, n) * 0.8, rng.uniform(0.1, 0.4, n), rng.uniform(0.0, 1.0, n)],
        np.nan,
    )
    bar = np.where(is_["featured"], rng.choice(np.array(["none", "weak", "strong"], dtype=object), n,
                                                p=[0.55, 0.25, 0.20]), "none")
    has_arms = is_["featured"] & (rng.random(n) < 0.8)
    n_arms = np.where(has_arms, rng.choice([1, 2, 3, 4, 5, 6], n, p=[0.07, 0.5, 0.2, 0.12, 0.06, 0.05]), 0)
    winding = np.where(has_arms, rng.choice(np.array(["tight", "medium", "loose"], dtype=object), n), None)
    pitch = np.full(n, np.nan)
    for name, (a, b) in _PITCH_DEG.items():
        sel = winding == name
        pitch[sel] = rng.uniform(a, b, sel.sum())
    arm_strength = np.where(has_arms, rng.uniform(0.15, 0.5, n), 0.0)
    edge_bulge = rng.choice(np.array(["none", "rounded", "boxy"], dtype=object), n, p=[0.3, 0.45, 0.25])
    edge_bulge = np.where(is_["edge_on"], edge_bulge, None)
    bulge_fraction = np.where(edge_bulge == "none", 0.0, bulge_fraction)
    has_bulge = np.where(is_["edge_on"], edge_bulge != "none", galaxy & (np.nan_to_num(bulge_fraction) > 0.02))
    tidal = is_["merger"] | ((is_["smooth"] | is_["featured"]) & (rng.random(n) < 0.1))
    artifact_type = np.where(
        is_["artifact"], rng.choice(np.array(["satellite_trail", "bad_column", "hot_pixels"], dtype=object), n),
        None)
    mag = np.where(is_["star"], rng.uniform(lo, hi + 1.0, n), mag)
    r50 = np.where(is_["star"], 0.0, r50)
    r50 = np.where(is_["artifact"], rng.uniform(2.0, 20.0, n), r50)

    def for_galaxies(values: np.ndarray) -> np.ndarray:
        return np.where(galaxy, values, np.nan)

    axis_ratio = for_galaxies(axis_ratio)
    return {
        "kind": kind,
        "mag_r": mag,
        "r50_arcsec": r50,
        "sersic_n": for_galaxies(np.where(is_["edge_on"], 1.0, sersic_n)),
        "axis_ratio": axis_ratio,
        "ellipticity": 1.0 - axis_ratio,
        "position_angle_deg": for_galaxies(rng.uniform(0.0, 180.0, n)),
        "bulge_fraction": bulge_fraction,
        "bar": bar,
        "n_arms": n_arms.astype(np.int32),
        "arm_winding": winding,
        "pitch_angle_deg": pitch,
        "arm_strength": arm_strength,
        "edge_on_bulge": edge_bulge,
        "has_bulge": has_bulge.astype(bool),
        "tidal": tidal,
        "merger_flux_ratio": np.where(is_["merger"], rng.uniform(0.25, 1.0, n), np.nan),
        "artifact_type": artifact_type,
    }


def visibility(truth: Mapping[str, np.ndarray], conditions: SurveyConditions) -> np.ndarray:
    """How visible a source's features are (0..1): resolution against the PSF times surface-brightness S/N."""
    band = conditions.reference_band
    r50 = np.asarray(truth["r50_arcsec"], dtype=np.float64)
    flux = mag_to_flux(truth["mag_r"])
    resolution = r50 / conditions.psf_fwhm[band]
    size_term = 1.0 / (1.0 + np.exp(-(resolution - 1.5) / 0.35))
    r50_px = np.maximum(r50 / conditions.pixel_scale, 0.5)
    mean_sb = 0.5 * flux / (np.pi * r50_px**2) / conditions.sky_sigma[band]
    sn_term = 1.0 / (1.0 + np.exp(-np.log10(mean_sb / 2.0) / 0.2))
    vis = size_term * sn_term
    kind = np.asarray(truth["kind"])
    return np.where((kind == "star") | (kind == "artifact"), 1.0, vis)


def psf_kernels(conditions: SurveyConditions, half_size: int = 15) -> np.ndarray:
    """Unit-sum Moffat PSF images ``(n_bands, 2h+1, 2h+1)`` sampled at pixel centres, for stamp convolution."""
    size = 2 * half_size + 1
    kernels = np.empty((len(conditions.bands), size, size))
    for i, band in enumerate(conditions.bands):
        psf = galsim.Moffat(beta=conditions.psf_beta, fwhm=conditions.psf_fwhm[band])
        img = psf.drawImage(nx=size, ny=size, scale=conditions.pixel_scale, method="no_pixel").array
        kernels[i] = img / img.sum()
    return kernels


@dataclass
class _Canvas:
    """An oversampled stamp grid centred on the source (coordinates in final pixels) plus its components."""

    half: int
    oversample: int
    dx: float
    dy: float
    scale: float
    components: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = (2 * self.half + 1) * self.oversample
        axis = (np.arange(n) + 0.5) / self.oversample - (2 * self.half + 1) / 2.0
        self.x, self.y = np.meshgrid(axis - self.dx, axis - self.dy)

    @property
    def n(self) -> int:
        return (2 * self.half + 1) * self.oversample

    def draw(self, profile: Any, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
        """Draw a GalSim profile centred at ``(x0, y0)`` pixels from the source, normalised to unit sum."""
        s = self.oversample
        img = profile.drawImage(nx=self.n, ny=self.n, scale=self.scale / s, method="no_pixel",
                                offset=((self.dx + x0) * s, (self.dy + y0) * s)).array
        return _unit(img)

    def add(self, image: np.ndarray, flux_r: float, colour: tuple[float, float], rng: np.random.Generator,
            bands: tuple[str, ...]) -> None:
        """Add a unit-sum component with r-band flux ``flux_r`` and (g-r, r-z) colour (with a little scatter)."""
        g_r = colour[0] + rng.normal(0.0, 0.05)
        r_z = colour[1] + rng.normal(0.0, 0.04)
        per_band = {"g": flux_r * 10 ** (0.4 * -g_r), "r": flux_r, "z": flux_r * 10 ** (0.4 * r_z)}
        self.components.append((image, np.array([per_band.get(b, flux_r) for b in bands])))


def _unit(img: np.ndarray) -> np.ndarray:
    total = img.sum()
    return img / total if total > 0 else img


def _deprojected(canvas: _Canvas, pa: float, q: float, x0: float = 0.0, y0: float = 0.0) -> tuple[np.ndarray, ...]:
    """Disc-plane radius and azimuth of every canvas pixel for a disc at angle ``pa`` (rad) with axis ratio ``q``."""
    x, y = canvas.x - x0, canvas.y - y0
    u = x * np.cos(pa) + y * np.sin(pa)
    v = (-x * np.sin(pa) + y * np.cos(pa)) / q
    return np.hypot(u, v), np.arctan2(v, u)


def _sersic_numpy(canvas: _Canvas, n: float, r50_px: float, q: float, pa: float, boxiness: float = 2.0) -> np.ndarray:
    """A Sersic profile with generalised-ellipse isophotes (``boxiness`` > 2 gives boxy isophotes)."""
    u = canvas.x * np.cos(pa) + canvas.y * np.sin(pa)
    v = -canvas.x * np.sin(pa) + canvas.y * np.cos(pa)
    r = (np.abs(u) ** boxiness + np.abs(v / q) ** boxiness) ** (1.0 / boxiness)
    b_n = gammaincinv(2.0 * n, 0.5)
    return _unit(np.exp(-b_n * (r / r50_px) ** (1.0 / n)))


def _arc(canvas: _Canvas, cx: float, cy: float, radius: float, start: float, extent: float, width: float) -> np.ndarray:
    """A faint arc (tidal tail or shell) around ``(cx, cy)`` fading along its length."""
    x, y = canvas.x - cx, canvas.y - cy
    rho = np.hypot(x, y)
    phi = np.mod(np.arctan2(y, x) - start, 2 * np.pi)
    along = np.clip(phi / extent, 0.0, None)
    inside = phi < extent
    radial = np.exp(-0.5 * ((rho - radius * (1.0 + 0.3 * along)) / width) ** 2)
    return _unit(np.where(inside, radial * (1.0 - 0.8 * along), 0.0))


def _smooth_body(canvas: _Canvas, truth: Mapping[str, Any], flux: float, r50_px: float, q: float, pa: float,
                 rng: np.random.Generator, bands: tuple[str, ...], x0: float = 0.0, y0: float = 0.0) -> None:
    n = float(np.clip(round(float(truth["sersic_n"]) * 20) / 20, 0.5, 6.0))
    profile = galsim.Sersic(n=n, half_light_radius=r50_px * canvas.scale).shear(q=q, beta=pa * galsim.radians)
    canvas.add(canvas.draw(profile, x0, y0), flux, _COLOURS["bulge"], rng, bands)


def _disc_body(canvas: _Canvas, truth: Mapping[str, Any], flux: float, r50_px: float, q: float, pa: float,
               rng: np.random.Generator, bands: tuple[str, ...], x0: float = 0.0, y0: float = 0.0) -> None:
    """Exponential disc + Sersic bulge + optional bar + logarithmic spiral arms."""
    scale = canvas.scale
    bulge_fraction = float(np.nan_to_num(truth["bulge_fraction"]))
    bar_kind = str(truth["bar"])
    bar_fraction = {"none": 0.0, "weak": rng.uniform(0.04, 0.08), "strong": rng.uniform(0.12, 0.2)}[bar_kind]
    arm_fraction = float(truth["arm_strength"]) * (1.0 - bulge_fraction - bar_fraction)
    disc_fraction = 1.0 - bulge_fraction - bar_fraction - arm_fraction
    beta = pa * galsim.radians
    disc = canvas.draw(galsim.Exponential(half_light_radius=r50_px * scale).shear(q=q, beta=beta), x0, y0)
    canvas.add(disc, flux * disc_fraction, _COLOURS["disc"], rng, bands)
    r_bulge = r50_px * rng.uniform(0.15, 0.4)
    if bulge_fraction > 0:
        n_b = float(np.clip(round(float(truth["sersic_n"]) * 20) / 20, 0.5, 6.0))
        bulge = galsim.Sersic(n=n_b, half_light_radius=r_bulge * scale).shear(q=max(q, rng.uniform(0.7, 0.95)),
                                                                               beta=beta)
        canvas.add(canvas.draw(bulge, x0, y0), flux * bulge_fraction, _COLOURS["bulge"], rng, bands)
    r_inner = 0.8 * r_bulge
    if bar_fraction > 0:
        bar_len = r50_px * rng.uniform(0.5, 0.9)
        bar_profile = (galsim.Gaussian(half_light_radius=bar_len * scale)
                       .shear(q=rng.uniform(0.2, 0.35), beta=rng.uniform(0, np.pi) * galsim.radians)
                       .shear(q=q, beta=beta))
        canvas.add(canvas.draw(bar_profile, x0, y0), flux * bar_fraction, _COLOURS["bar"], rng, bands)
        r_inner = max(r_inner, 1.2 * bar_len)
    m = int(truth["n_arms"])
    if m > 0 and arm_fraction > 0:
        radius, theta = _deprojected(canvas, pa, q, x0, y0)
        radius = np.maximum(radius, 1e-3)
        tan_pitch = np.tan(np.radians(float(truth["pitch_angle_deg"])))
        wobble = 0.25 * np.sin(theta + rng.uniform(0, 2 * np.pi))  # break perfect m-fold symmetry
        phase = m * (theta - np.log(radius / max(r_inner, 1.0)) / tan_pitch + wobble) + rng.uniform(0, 2 * np.pi)
        sharpness = rng.uniform(2.0, 5.0)
        modulation = ((1.0 + np.cos(phase)) / 2.0) ** sharpness * (1.0 - np.exp(-((radius / r_inner) ** 2)))
        canvas.add(_unit(disc * modulation), flux * arm_fraction, _COLOURS["arms"], rng, bands)


def _edge_on_body(canvas: _Canvas, truth: Mapping[str, Any], flux: float, r50_px: float, pa: float,
                  rng: np.random.Generator, bands: tuple[str, ...]) -> None:
    scale = canvas.scale
    bulge_fraction = float(np.nan_to_num(truth["bulge_fraction"]))
    disc = galsim.InclinedExponential(inclination=rng.uniform(83.0, 90.0) * galsim.degrees,
                                      half_light_radius=r50_px * scale, scale_h_over_r=rng.uniform(0.06, 0.14))
    canvas.add(canvas.draw(disc.rotate(pa * galsim.radians)), flux * (1.0 - bulge_fraction), _COLOURS["disc"], rng,
               bands)
    shape = truth["edge_on_bulge"]
    if shape == "none" or bulge_fraction <= 0:
        return
    r_bulge = r50_px * rng.uniform(0.2, 0.4)
    if shape == "boxy":
        bulge = _sersic_numpy(canvas, rng.uniform(1.0, 2.0), r_bulge, rng.uniform(0.6, 0.8), pa, boxiness=4.0)
    else:
        bulge = _sersic_numpy(canvas, rng.uniform(2.0, 4.0), r_bulge, rng.uniform(0.75, 0.95), pa)
    canvas.add(bulge, flux * bulge_fraction, _COLOURS["bulge"], rng, bands)


def _tidal(canvas: _Canvas, flux: float, r50_px: float, rng: np.random.Generator, bands: tuple[str, ...],
           shells: bool) -> None:
    """Faint tails (arcs leaving the galaxy) or shells (arcs around it), a few per cent of the light."""
    for _ in range(int(rng.integers(1, 3))):
        radius = r50_px * rng.uniform(1.5, 3.0)
        start = rng.uniform(0, 2 * np.pi)
        if shells:
            arc = _arc(canvas, 0.0, 0.0, radius, start, rng.uniform(1.5, 2.5), max(1.0, 0.08 * radius))
        else:
            cx, cy = radius * np.cos(start + np.pi / 2), radius * np.sin(start + np.pi / 2)
            arc = _arc(canvas, cx, cy, radius, start - np.pi / 2, rng.uniform(1.0, 2.2), max(1.5, 0.15 * radius))
        canvas.add(arc, flux * rng.uniform(0.02, 0.05), _COLOURS["tidal"], rng, bands)


def _galaxy_half_size(truth: Mapping[str, Any], r50_px: float) -> int:
    extent = 5.0 * r50_px
    if truth["kind"] == "merger":
        extent *= 1.6
    if truth["tidal"]:
        extent = max(extent, 4.5 * r50_px * 1.6)
    return int(np.clip(np.ceil(extent) + 12, 20, 240))


def _render_star(truth: Mapping[str, Any], dx: float, dy: float, conditions: SurveyConditions,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    flux_r = float(mag_to_flux(truth["mag_r"]))
    g_r, r_z = rng.uniform(0.2, 1.4), rng.uniform(0.0, 0.8)
    per_band = {"g": flux_r * 10 ** (-0.4 * g_r), "r": flux_r, "z": flux_r * 10 ** (0.4 * r_z)}
    fluxes = np.array([per_band.get(b, flux_r) for b in conditions.bands])
    spikes = float(truth["mag_r"]) < 16.0
    half = 60 if spikes else 20
    size = 2 * half + 1
    axis = np.arange(size) - half
    x, y = np.meshgrid(axis - dx, axis - dy)
    stamp = np.empty((len(conditions.bands), size, size))
    for i, band in enumerate(conditions.bands):
        psf = galsim.Moffat(beta=conditions.psf_beta, fwhm=conditions.psf_fwhm[band], flux=fluxes[i])
        stamp[i] = psf.drawImage(nx=size, ny=size, scale=conditions.pixel_scale, offset=(dx, dy)).array
        if spikes:
            sigma = conditions.psf_fwhm[band] / conditions.pixel_scale / 2.355 / 2
            length = 5.0 * (16.0 - float(truth["mag_r"]) + 1.0) ** 2
            spike = (np.exp(-0.5 * (y / sigma) ** 2) * np.exp(-np.abs(x) / length)
                     + np.exp(-0.5 * (x / sigma) ** 2) * np.exp(-np.abs(y) / length))
            stamp[i] += 0.02 * fluxes[i] * _unit(spike)
    return stamp, fluxes


def _render_artifact(truth: Mapping[str, Any], dx: float, dy: float, conditions: SurveyConditions,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Satellite trail (one band, PSF-wide line), bad column segment, or hot-pixel cluster (one band, unconvolved)."""
    nb = len(conditions.bands)
    band = int(rng.integers(nb))
    kind = truth["artifact_type"]
    sigma_sky = conditions.sky_sigma[conditions.bands[band]]
    half = int(np.clip(truth["r50_arcsec"] / conditions.pixel_scale * 2.5, 8, 200))
    size = 2 * half + 1
    axis = np.arange(size) - half
    x, y = np.meshgrid(axis - dx, axis - dy)
    stamp = np.zeros((nb, size, size))
    if kind == "satellite_trail":
        angle = rng.uniform(0, np.pi)
        width = conditions.psf_fwhm[conditions.bands[band]] / conditions.pixel_scale / 2.355
        across = -x * np.sin(angle) + y * np.cos(angle)
        along = x * np.cos(angle) + y * np.sin(angle)
        stamp[band] = rng.uniform(5.0, 40.0) * sigma_sky * np.exp(-0.5 * (across / width) ** 2) * (np.abs(along) < half)
    elif kind == "bad_column":
        column = half + int(rng.integers(-2, 3))
        stamp[:, :, column] = rng.uniform(20.0, 200.0) * np.array([conditions.sky_sigma[b] for b in conditions.bands])[
            :, None]
    else:
        hot = rng.normal(0.0, 2.0, (int(rng.integers(3, 16)), 2)).round().astype(int) + half
        stamp[band, np.clip(hot[:, 1], 0, size - 1), np.clip(hot[:, 0], 0, size - 1)] = (
            rng.uniform(50.0, 500.0, len(hot)) * sigma_sky)
    return stamp, stamp.sum(axis=(1, 2))


class Rendered(NamedTuple):
    """A rendered source: ``image`` ``(n_bands, 2h+1, 2h+1)`` in nanomaggies/pixel centred on its central pixel, the
    total flux per band, and whether the PSF is already applied (stars and artifacts always; galaxies when
    ``render_source`` was given PSF kernels)."""

    image: np.ndarray
    band_flux: np.ndarray
    psf_applied: bool


def render_source(truth: Mapping[str, Any], dx: float, dy: float, conditions: SurveyConditions,
                  rng: np.random.Generator, kernels: np.ndarray | None = None) -> Rendered:
    """Render one source, one row of ``sample_truth``, offset by ``(dx, dy)`` pixels from the stamp's central pixel.

    With ``kernels`` (from ``psf_kernels``) a galaxy comes back convolved with each band's PSF; without, it comes back
    intrinsic (pixel-integrated) so that a caller can convolve a whole tile at once, which is much faster.
    """
    kind = truth["kind"]
    if kind == "star":
        return Rendered(*_render_star(truth, dx, dy, conditions, rng), psf_applied=True)
    if kind == "artifact":
        return Rendered(*_render_artifact(truth, dx, dy, conditions, rng), psf_applied=True)
    bands = conditions.bands
    r50_px = float(truth["r50_arcsec"]) / conditions.pixel_scale
    flux = float(mag_to_flux(truth["mag_r"]))
    q = float(truth["axis_ratio"])
    pa = np.radians(float(truth["position_angle_deg"]))
    canvas = _Canvas(half=_galaxy_half_size(truth, r50_px), oversample=2 if r50_px < 8 else 1, dx=dx, dy=dy,
                     scale=conditions.pixel_scale)
    if kind == "smooth":
        _smooth_body(canvas, truth, flux, r50_px, q, pa, rng, bands)
    elif kind == "featured":
        _disc_body(canvas, truth, flux, r50_px, q, pa, rng, bands)
    elif kind == "edge_on":
        _edge_on_body(canvas, truth, flux, r50_px, pa, rng, bands)
    elif kind == "merger":
        ratio = float(truth["merger_flux_ratio"])
        primary, secondary = flux / (1.0 + ratio), flux * ratio / (1.0 + ratio)
        sep = r50_px * rng.uniform(0.7, 1.8)
        angle = rng.uniform(0, 2 * np.pi)
        ox, oy = sep * np.cos(angle), sep * np.sin(angle)
        for body_flux, x0, y0, size in ((primary, -ox * ratio / 2, -oy * ratio / 2, 0.8),
                                        (secondary, ox / 2, oy / 2, 0.8 * np.sqrt(ratio))):
            body_q, body_pa = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
            body = _disc_body if rng.random() < 0.5 else _smooth_body
            body(canvas, truth, body_flux, r50_px * size, body_q, body_pa, rng, bands, x0, y0)
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    if truth["tidal"]:
        _tidal(canvas, flux, r50_px, rng, bands, shells=kind == "smooth")
    # tidal light and colour scatter must not change the total: scale to the true reference-band flux
    reference = bands.index(conditions.reference_band)
    norm = flux / sum(fluxes[reference] for _, fluxes in canvas.components)
    intrinsic = sum(img[None] * (norm * fluxes)[:, None, None] for img, fluxes in canvas.components)
    if canvas.oversample > 1:
        s, m = canvas.oversample, 2 * canvas.half + 1
        intrinsic = intrinsic.reshape(len(bands), m, s, m, s).sum(axis=(2, 4))
    band_flux = norm * sum(fluxes for _, fluxes in canvas.components)
    if kernels is None:
        return Rendered(intrinsic, band_flux, psf_applied=False)
    return Rendered(fftconvolve(intrinsic, kernels, mode="same", axes=(1, 2)), band_flux, psf_applied=True)
