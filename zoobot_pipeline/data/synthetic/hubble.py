"""A one-tile data release from the Hubble eXtreme Deep Field image that scikit-image ships (no download).

``skimage.data.hubble_deep_field()`` is an already-stretched 872 x 1000 RGB JPEG (public domain). To score it with a
model trained on GZ DECaLS-style fluxes, each channel is mapped back through the inverse of that preprocessing
(``x = scale * sinh(lo + v * (hi - lo))`` for a pixel value ``v`` in [0, 1], with ``lo, hi = arcsinh(-0.5),
arcsinh(300)``, the GZ DECaLS limits), so that the model's own preprocessing
renders the galaxies as the JPEG shows them: blue -> ``g``, green -> ``r``, red -> ``z``. The tile gets a TAN WCS at
the XDF's position with an approximate pixel scale (the JPEG is a downsampled mosaic), and sources come from a simple
detection: Gaussian smoothing of the mean channel, a threshold at the median plus ``nsigma`` robust standard deviations,
connected regions of at least ``min_area`` pixels (scipy.ndimage), centroids and a half-light-radius estimate from
each region's area. Good enough to put real galaxies through the pipeline; not photometry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from zoobot_pipeline._version import __version__
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.io import atomic_path, write_json_atomic, write_parquet_atomic

__all__ = ["HXDF_CENTRE_DEG", "HXDF_PIXEL_SCALE_ARCSEC", "detect_sources", "hubble_deep_field_release"]

HXDF_CENTRE_DEG = (53.1625, -27.7914)
HXDF_PIXEL_SCALE_ARCSEC = 0.15
TILE_ID = "hxdf"


def _fluxes(rgb: np.ndarray, preprocessing: PreprocessingConfig) -> dict[str, np.ndarray]:
    """Per band (g, r, z) float32 images that ``preprocessing`` maps back to the JPEG's channels."""
    scales = preprocessing.band_scales or (1.0, 1.0, 1.0)
    low = np.arcsinh(preprocessing.q * preprocessing.clip_min)
    high = np.arcsinh(preprocessing.q * (preprocessing.clip_max or 1.0))
    values = rgb.astype(np.float64) / 255.0
    channel = {"g": 2, "r": 1, "z": 0}
    return {band: (scale * np.sinh(low + values[..., channel[band]] * (high - low)) / preprocessing.q)
            .astype(np.float32) for band, scale in zip(("g", "r", "z"), scales, strict=True)}


def detect_sources(grey: np.ndarray, nsigma: float = 4.0, min_area: int = 25, max_sources: int = 200,
                   smoothing: float = 1.5) -> list[tuple[float, float, float, int]]:
    """``(x, y, flux, area)`` of detected sources (0-based pixel centroids), brightest first."""
    smoothed = ndimage.gaussian_filter(grey.astype(np.float64), smoothing)
    median = np.median(smoothed)
    sigma = 1.4826 * np.median(np.abs(smoothed - median))
    labels, n = ndimage.label(smoothed > median + nsigma * max(sigma, 1e-12))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(grey), labels, index)
    fluxes = ndimage.sum_labels(grey - median, labels, index)
    centres = ndimage.center_of_mass(grey - median, labels, index)
    found = [(float(c[1]), float(c[0]), float(f), int(a))
             for c, f, a in zip(centres, fluxes, areas, strict=True) if a >= min_area and f > 0]
    return sorted(found, key=lambda s: -s[2])[:max_sources]


def _wcs(shape: tuple[int, int], pixel_scale: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(HXDF_CENTRE_DEG)
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    wcs.wcs.cdelt = [-pixel_scale / 3600, pixel_scale / 3600]
    return wcs


def hubble_deep_field_release(out_dir: str | Path, *, input_size: int = 224, max_sources: int = 200,
                              pixel_scale_arcsec: float = HXDF_PIXEL_SCALE_ARCSEC) -> Path:
    """Write the one-tile release (``release.json``, ``tiles/hxdf.fits``, ``sources.parquet``); returns ``out_dir``.

    Fluxes are made for GZ DECaLS preprocessing at ``input_size`` (the band scales and limits do not depend on it).
    """
    from skimage.data import hubble_deep_field

    out = Path(out_dir)
    rgb = hubble_deep_field()
    preprocessing = PreprocessingConfig.gz_decals(input_size=input_size)
    images = {band: np.flipud(image) for band, image in _fluxes(rgb, preprocessing).items()}  # FITS rows go up
    wcs = _wcs(rgb.shape[:2], pixel_scale_arcsec)
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(images[b], header=wcs.to_header(), name=b) for b in ("g", "r", "z")]
    with atomic_path(out / "tiles" / f"{TILE_ID}.fits") as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)

    sources = detect_sources(np.flipud(rgb.astype(np.float64).mean(axis=2)), max_sources=max_sources)
    x = np.array([s[0] for s in sources])
    y = np.array([s[1] for s in sources])
    ra, dec = wcs.pixel_to_world_values(x, y) if len(sources) else (np.array([]), np.array([]))
    # Half-light radius of a disc holding the region's area, halved: the region reaches well past r50.
    r50 = 0.5 * np.sqrt(np.array([s[3] for s in sources], dtype=np.float64) / np.pi) * pixel_scale_arcsec
    table = pa.table({
        "id_str": pa.array([f"hxdf_{i:04d}" for i in range(len(sources))], pa.string()),
        "ra": pa.array(np.asarray(ra, dtype=np.float64)),
        "dec": pa.array(np.asarray(dec, dtype=np.float64)),
        "tile_id": pa.array([TILE_ID] * len(sources), pa.string()),
        "r50_arcsec": pa.array(r50),
        "detection_flux": pa.array(np.array([s[2] for s in sources], dtype=np.float64)),
    })
    write_parquet_atomic(table, out / "sources.parquet")
    write_json_atomic({
        "name": "hubble-xdf-skimage",
        "survey": "HST XDF (scikit-image sample image, restretched to GZ DECaLS-like fluxes)",
        "bands": ["g", "r", "z"],
        "pixel_scale_arcsec": pixel_scale_arcsec,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiles": [TILE_ID],
        "source": {"image": "skimage.data.hubble_deep_field()", "detection": "threshold + connected regions",
                   "n_sources": len(sources), "code_version": __version__},
    }, out / "release.json")
    return out
