"""Shared fixtures. Release fixtures: ``tiny_release`` (a small 3-band data release on disk) and helpers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory, monkeypatch):
    """Where the CLI writes tracebacks of internal errors: a temporary folder, never the user's ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the tests of a module (no token file: RAY_AUTH_MODE=disabled)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


TINY_BANDS = ("g", "r", "z")
TINY_SHAPE = (100, 120)  # (ny, nx): not square, so x/y swaps show
TINY_PIXEL_SCALE = 1.0
TINY_BAND_AMPLITUDE = {"g": 1.0, "r": 2.0, "z": 3.0}
TINY_BACKGROUND = 0.01


def tiny_wcs(crval: tuple[float, float] = (150.0, 2.0), crpix_shift: tuple[float, float] = (0.0, 0.0)) -> WCS:
    """TAN WCS, 1 arcsec pixels, reference pixel at the tile centre (plus a shift)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [TINY_SHAPE[1] / 2 + 0.5 + crpix_shift[0], TINY_SHAPE[0] / 2 + 0.5 + crpix_shift[1]]
    wcs.wcs.cdelt = [-TINY_PIXEL_SCALE / 3600, TINY_PIXEL_SCALE / 3600]
    return wcs


def gaussian_image(
    pixels: list[tuple[float, float]], amplitude: float, sigma: float = 2.5, seed: int = 0
) -> np.ndarray:
    """Background + small noise + circular Gaussians at 0-based (x, y) pixel positions, float32."""
    ny, nx = TINY_SHAPE
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = TINY_BACKGROUND + 1e-3 * np.random.default_rng(seed).random(TINY_SHAPE)
    for x, y in pixels:
        image = image + amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def write_mef_tile(path: Path, wcs: WCS | None, pixels: list[tuple[float, float]], bands=TINY_BANDS) -> Path:
    """One FITS file, one image HDU per band (EXTNAME = band)."""
    header = wcs.to_header() if wcs is not None else fits.Header()
    hdus = [fits.PrimaryHDU()]
    for i, band in enumerate(bands):
        hdus.append(fits.ImageHDU(gaussian_image(pixels, TINY_BAND_AMPLITUDE[band], seed=i), header=header, name=band))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


@dataclass
class TinyRelease:
    """Paths and truth of the ``tiny_release`` fixture."""

    path: Path
    pixels: dict[str, tuple[float, float]]  # id_str -> (x, y) 0-based pixel in its tile
    tile_of: dict[str, str]


def write_tiny_release(root: Path) -> TinyRelease:
    """Two tiles: ``t0`` (one MEF file) and ``t1`` (one file per band); sources centred, near the edge and off-tile."""
    wcs0, wcs1 = tiny_wcs(), tiny_wcs(crval=(151.0, 2.0))
    pixels = {
        "centre": (60.0, 50.0),
        "offcentre": (30.0, 70.0),
        "edge": (3.0, 50.0),
        "off": (-300.0, 50.0),
        "t1-centre": (40.0, 40.0),
    }
    tile_of = {"centre": "t0", "offcentre": "t0", "edge": "t0", "off": "t0", "t1-centre": "t1"}
    drawn = [pixels[k] for k in ("centre", "offcentre", "edge")]
    write_mef_tile(root / "tiles" / "t0.fits", wcs0, drawn)
    for i, band in enumerate(TINY_BANDS):
        image = gaussian_image([pixels["t1-centre"]], TINY_BAND_AMPLITUDE[band], seed=10 + i)
        (root / "tiles" / "t1").mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(image, header=wcs1.to_header()).writeto(root / "tiles" / "t1" / f"{band}.fits")
    ids = list(pixels)
    ra, dec = [], []
    for id_str in ids:
        wcs = wcs0 if tile_of[id_str] == "t0" else wcs1
        coord = wcs.pixel_to_world_values(*pixels[id_str])
        ra.append(float(coord[0]))
        dec.append(float(coord[1]))
    table = pa.table(
        {
            "id_str": ids,
            "ra": ra,
            "dec": dec,
            "tile_id": [tile_of[i] for i in ids],
            "r50_arcsec": [4.0, 8.0, 4.0, 4.0, float("nan")],
        }
    )
    pq.write_table(table, root / "sources.parquet")
    meta = {
        "name": "tiny",
        "survey": "synthetic",
        "bands": list(TINY_BANDS),
        "pixel_scale_arcsec": TINY_PIXEL_SCALE,
        "created": "2025-01-01T00:00:00Z",
    }
    (root / "release.json").write_text(json.dumps(meta))
    return TinyRelease(root, pixels, tile_of)


@pytest.fixture
def tiny_release(tmp_path: Path) -> TinyRelease:
    """A small 3-band release on disk (see :func:`write_tiny_release`)."""
    return write_tiny_release(tmp_path / "release")
