"""Synthetic survey data releases with known truth: DECaLS-like tiles, a source catalogue, volunteer votes and truth.

``simulate_release`` writes a data release directory (the layout of DESIGN.md "Contracts")::

    release.json        name, survey, bands, pixel scale, zeropoint, schema, tiles, simulation settings
    tiles/tile_0000.fits  empty primary HDU + one float32 image HDU per band (EXTNAME g, r, z), celestial TAN WCS
    sources.parquet     id_str, ra, dec, tile_id, r50_arcsec, mag_g, mag_r, mag_z
    votes.parquet       id_str + one int32 column per answer of the schema (labelled subset only)
    truth.parquet       id_str + true morphology, visibility and the answer probabilities p_{label_col}

``n_galaxies`` counts every catalogue entry; a few per cent are stars and artifacts (``truth.kind``), as in a real
release. Everything is a deterministic function of ``seed`` (except the ``created`` timestamp): each source and each
tile has its own random stream (``SeedSequence([seed, stream, index])``), so the images do not depend on the order or
the number of processes that render them.

Truth columns: ``kind`` (smooth, featured, edge_on, merger, star, artifact); ``sersic_n`` (of the galaxy, or of the
bulge of a disc); ``axis_ratio`` and ``ellipticity`` (1 - axis ratio); ``position_angle_deg`` (from the tile's +x axis
towards +y); ``bulge_fraction`` (bulge share of the light); ``bar`` (none/weak/strong); ``n_arms`` (0 = no arms; 5 and
6 are "more than 4"); ``arm_winding`` (tight/medium/loose, null without arms), ``pitch_angle_deg``, ``arm_strength``
(arms' share of the disc light); ``edge_on_bulge`` (none/rounded/boxy for edge-on discs), ``has_bulge``; ``tidal``
(tails or shells; all mergers); ``merger_flux_ratio``; ``artifact_type`` (satellite_trail, bad_column, hot_pixels);
``mag_r``, ``r50_arcsec``; ``visibility`` (0..1: how visible features are given size against the PSF and surface
brightness against the sky noise; 1 for stars and artifacts).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from astropy.io import fits
from astropy.wcs import WCS
from scipy.signal import fftconvolve

from zoobot_pipeline._version import __version__
from zoobot_pipeline.data.synthetic.morphology import (
    KINDS,
    SurveyConditions,
    flux_to_mag,
    galsim,
    psf_kernels,
    render_source,
    sample_truth,
    visibility,
)
from zoobot_pipeline.data.synthetic.volunteers import answer_probabilities, simulate_votes
from zoobot_pipeline.io import atomic_path, write_json_atomic, write_parquet_atomic
from zoobot_pipeline.progress import progress_bar
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["default_tile_size", "simulate_release", "tile_wcs"]

SURVEY = "synthetic-decals"
# Catalogue positions keep this far from tile edges, like a survey brick's primary area; cutouts of large galaxies
# still reach past the edge.
EDGE_MARGIN_PX = 48
FLUX_UNIT = "nanomaggy"
SKY_AREA_PER_GALAXY_PX = 120  # each source gets about (120 px)^2 of sky
MIN_TILE_SIZE = 512
MAX_TILE_SIZE = 8192  # a tile's bands in float32: 8192^2 x 3 x 4 bytes = 768 MiB, rendered in memory
TILE_ORIGIN = (150.0, 2.0)  # RA, Dec of the first tile centre (COSMOS-like field), degrees
_STREAM_TRUTH, _STREAM_SOURCE, _STREAM_TILE, _STREAM_VOTES = 0, 1, 2, 3


def _stream(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def default_tile_size(n_galaxies: int, n_tiles: int) -> int:
    """Tile side in pixels giving each source about (120 px)^2 of sky, at least 512, rounded up to a multiple of 16."""
    per_tile = math.ceil(n_galaxies / n_tiles)
    side = max(MIN_TILE_SIZE, math.ceil(SKY_AREA_PER_GALAXY_PX * math.sqrt(per_tile)))
    return 16 * math.ceil(side / 16)


def tile_wcs(index: int, n_tiles: int, tile_size: int, pixel_scale: float = 0.262) -> WCS:
    """The TAN WCS of tile ``index``: tiles sit on a square grid near RA 150, Dec 2 with 5% gaps between them."""
    per_row = math.ceil(math.sqrt(n_tiles))
    side_deg = tile_size * pixel_scale / 3600.0 * 1.05
    row, col = divmod(index, per_row)
    dec = TILE_ORIGIN[1] + row * side_deg
    ra = TILE_ORIGIN[0] + col * side_deg / math.cos(math.radians(dec))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(tile_size + 1) / 2.0, (tile_size + 1) / 2.0]
    wcs.wcs.cd = np.array([[-pixel_scale / 3600.0, 0.0], [0.0, pixel_scale / 3600.0]])
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.equinox = 2000.0
    return wcs


@dataclass(frozen=True)
class _TileJob:
    """Everything one worker needs to render and write one tile."""

    path: Path
    tile_id: str
    index: int
    n_tiles: int
    tile_size: int
    seed: int
    source_index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    truth: list[dict[str, Any]]
    conditions: SurveyConditions


def _add_stamp(image: np.ndarray, stamp: np.ndarray, xc: int, yc: int) -> None:
    """Add a ``(bands, 2h+1, 2h+1)`` stamp centred on pixel ``(xc, yc)`` into ``image``, clipped at the edges."""
    size_y, size_x = image.shape[-2:]
    half = stamp.shape[-1] // 2
    y0, x0 = yc - half, xc - half
    ty = slice(max(y0, 0), min(y0 + stamp.shape[-2], size_y))
    tx = slice(max(x0, 0), min(x0 + stamp.shape[-1], size_x))
    if ty.start < ty.stop and tx.start < tx.stop:
        image[:, ty, tx] += stamp[:, ty.start - y0:ty.stop - y0, tx.start - x0:tx.stop - x0]


def _render_tile(job: _TileJob) -> np.ndarray:
    """Render the sources of one tile, add sky noise, write the FITS file; return the band fluxes of its sources.

    Galaxies are drawn intrinsic into the tile, which is then convolved with each band's PSF in one FFT; stars and
    artifacts (PSF already applied, or none) are added after the convolution.
    """
    conditions = job.conditions
    bands = conditions.bands
    size = job.tile_size
    image = np.zeros((len(bands), size, size), dtype=np.float32)
    direct: list[tuple[np.ndarray, int, int]] = []
    fluxes = np.zeros((len(job.truth), len(bands)))
    for k, (i, row) in enumerate(zip(job.source_index, job.truth, strict=True)):
        xc, yc = int(round(job.x[k])), int(round(job.y[k]))
        rendered = render_source(row, job.x[k] - xc, job.y[k] - yc, conditions,
                                 _stream(job.seed, _STREAM_SOURCE, int(i)))
        fluxes[k] = rendered.band_flux
        if rendered.psf_applied:
            direct.append((rendered.image, xc, yc))
        else:
            _add_stamp(image, rendered.image, xc, yc)
    kernels = psf_kernels(conditions).astype(np.float32)
    for b in range(len(bands)):
        image[b] = fftconvolve(image[b], kernels[b], mode="same")
    for stamp, xc, yc in direct:
        _add_stamp(image, stamp, xc, yc)
    noise_rng = _stream(job.seed, _STREAM_TILE, job.index)
    wcs_header = tile_wcs(job.index, job.n_tiles, size, conditions.pixel_scale).to_header()
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU()]
    hdus[0].header["TILEID"] = job.tile_id
    hdus[0].header["SURVEY"] = SURVEY
    hdus[0].header["SIMSEED"] = job.seed
    for b, band in enumerate(bands):
        sigma = conditions.sky_sigma[band]
        data = image[b] + np.float32(sigma) * noise_rng.standard_normal((size, size), dtype=np.float32)
        header = wcs_header.copy()
        header["BUNIT"] = FLUX_UNIT
        header["BAND"] = band
        header["ZPT"] = (22.5, "AB magnitude zeropoint of 1 nanomaggy")
        header["PSFFWHM"] = (conditions.psf_fwhm[band], "Moffat PSF FWHM, arcsec")
        header["PSFBETA"] = conditions.psf_beta
        header["SKYSIG"] = (sigma, "Gaussian sky noise per pixel, nanomaggy")
        hdus.append(fits.ImageHDU(data=data, header=header, name=band))
    with atomic_path(job.path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return fluxes


def _field(name: str, dtype: pa.DataType, unit: str | None = None, description: str | None = None) -> pa.Field:
    metadata = {k: v for k, v in (("unit", unit), ("description", description)) if v is not None}
    return pa.field(name, dtype, metadata=metadata or None)


def _table(columns: dict[str, tuple[np.ndarray | list[Any], pa.Field]]) -> pa.Table:
    fields = [f for _, f in columns.values()]
    arrays = [pa.array(values, type=f.type) for values, f in columns.values()]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _nullable(values: np.ndarray) -> list[Any]:
    return [None if v is None else str(v) for v in values]


def _tiles_needed(n_galaxies: int) -> int:
    """The fewest tiles whose default size stays within :data:`MAX_TILE_SIZE`."""
    tiles = math.ceil(n_galaxies / (MAX_TILE_SIZE // SKY_AREA_PER_GALAXY_PX) ** 2)
    while tiles > 1 and default_tile_size(n_galaxies, tiles - 1) <= MAX_TILE_SIZE:
        tiles -= 1
    while default_tile_size(n_galaxies, tiles) > MAX_TILE_SIZE:
        tiles += 1
    return tiles


def _validate(n_galaxies: int, n_tiles: int, labelled_fraction: float, n_volunteers: float, schema: str,
              tile_size: int | None, workers: int) -> Schema:
    if isinstance(n_galaxies, bool) or not isinstance(n_galaxies, int | np.integer) or n_galaxies < 1:
        raise ValueError(f"n_galaxies must be a positive integer, got {n_galaxies!r}")
    if isinstance(n_tiles, bool) or not isinstance(n_tiles, int | np.integer) or n_tiles < 1:
        raise ValueError(f"n_tiles must be a positive integer, got {n_tiles!r}")
    if not 0.0 <= labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be within [0, 1], got {labelled_fraction!r}")
    if isinstance(n_volunteers, bool) or not isinstance(n_volunteers, int | float | np.integer | np.floating) \
            or not 1 <= n_volunteers <= 1_000_000:
        raise ValueError(f"n_volunteers (volunteers per galaxy) must be a number from 1 to 1000000, got "
                         f"{n_volunteers!r}")
    if tile_size is not None and not 64 <= tile_size <= MAX_TILE_SIZE:
        raise ValueError(f"tile_size must be from 64 to {MAX_TILE_SIZE} pixels, got {tile_size!r}")
    if tile_size is None and default_tile_size(n_galaxies, n_tiles) > MAX_TILE_SIZE:
        raise ValueError(f"{n_galaxies} galaxies on {n_tiles} tile(s) need tiles of "
                         f"{default_tile_size(n_galaxies, n_tiles)} pixels, over the {MAX_TILE_SIZE} pixel limit; "
                         f"use more tiles (n_tiles of at least {_tiles_needed(n_galaxies)})")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    try:
        return get_schema(schema)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    except OSError as err:
        raise ValueError(f"cannot read schema {schema!r}: {err}") from None


def simulate_release(out_dir: str | Path, n_galaxies: int, n_tiles: int = 1, schema: str = "decals_dr5", seed: int = 0,
                     labelled_fraction: float = 0.5, n_volunteers: int = 40, progress: bool = False, *,
                     tile_size: int | None = None, conditions: SurveyConditions | None = None,
                     concentration: float = 30.0, workers: int = 1, name: str | None = None) -> Path:
    """Write a synthetic data release with known truth to ``out_dir`` and return its path.

    ``n_galaxies`` catalogue entries (mostly galaxies, a few stars and artifacts) spread evenly over ``n_tiles`` tiles
    of ``tile_size`` pixels (default: about (120 px)^2 of sky per source, see ``default_tile_size``). Votes from about
    ``n_volunteers`` volunteers per galaxy, following the ``schema`` decision tree, for a random ``labelled_fraction``
    of the sources. ``concentration`` sets the per-galaxy Dirichlet overdispersion of the answer probabilities;
    ``workers`` > 1 renders tiles in parallel processes (same output).
    """
    tree = _validate(n_galaxies, n_tiles, labelled_fraction, n_volunteers, schema, tile_size, workers)
    conditions = conditions or SurveyConditions()
    out = Path(out_dir)
    size = int(tile_size) if tile_size is not None else default_tile_size(n_galaxies, n_tiles)
    n = int(n_galaxies)

    truth = sample_truth(n, _stream(seed, _STREAM_TRUTH))
    truth["visibility"] = visibility(truth, conditions)
    ids = np.array([f"syn_{i + 1:06d}" for i in range(n)], dtype=object)
    tile_ids = [f"tile_{t:04d}" for t in range(n_tiles)]
    position_rng = _stream(seed, _STREAM_TRUTH, 1)
    margin = min(EDGE_MARGIN_PX, size // 8)
    x = position_rng.uniform(margin, size - 1 - margin, n)
    y = position_rng.uniform(margin, size - 1 - margin, n)
    tile_of = np.concatenate([np.full(len(part), t) for t, part in enumerate(np.array_split(np.arange(n), n_tiles))])
    ra, dec = np.empty(n), np.empty(n)
    rows = [{k: v[i] for k, v in truth.items()} for i in range(n)]
    jobs = []
    for t, tile_id in enumerate(tile_ids):
        members = np.flatnonzero(tile_of == t)
        ra[members], dec[members] = tile_wcs(t, n_tiles, size, conditions.pixel_scale).all_pix2world(
            x[members], y[members], 0)
        jobs.append(_TileJob(path=out / "tiles" / f"{tile_id}.fits", tile_id=tile_id, index=t, n_tiles=n_tiles,
                             tile_size=size, seed=seed, source_index=members, x=x[members], y=y[members],
                             truth=[rows[i] for i in members], conditions=conditions))

    band_flux = np.zeros((n, len(conditions.bands)))
    with progress_bar(progress, len(jobs), "rendering tiles", "tiles") as advance:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for job, fluxes in zip(jobs, pool.map(_render_tile, jobs), strict=True):
                    band_flux[job.source_index] = fluxes
                    advance()
        else:
            for job in jobs:
                band_flux[job.source_index] = _render_tile(job)
                advance()
    mags = flux_to_mag(band_flux)

    sources = {
        "id_str": (ids, _field("id_str", pa.string())),
        "ra": (ra, _field("ra", pa.float64(), "deg", "right ascension (ICRS)")),
        "dec": (dec, _field("dec", pa.float64(), "deg", "declination (ICRS)")),
        "tile_id": (np.asarray(tile_ids, dtype=object)[tile_of], _field("tile_id", pa.string())),
        "r50_arcsec": (truth["r50_arcsec"], _field("r50_arcsec", pa.float64(), "arcsec", "half-light radius")),
    }
    for b, band in enumerate(conditions.bands):
        sources[f"mag_{band}"] = (mags[:, b], _field(f"mag_{band}", pa.float64(), "mag", f"total AB magnitude, {band}"))
    write_parquet_atomic(_table(sources), out / "sources.parquet")

    probabilities = answer_probabilities(truth, tree, _stream(seed, _STREAM_VOTES), concentration=concentration)
    vote_rng = _stream(seed, _STREAM_VOTES, 1)
    votes = simulate_votes(probabilities, tree, n_volunteers, vote_rng)
    labelled = np.sort(vote_rng.choice(n, size=int(round(labelled_fraction * n)), replace=False))
    vote_columns = {"id_str": (ids[labelled], _field("id_str", pa.string()))}
    for answer_index, col in enumerate(tree.label_cols):
        vote_columns[col] = (votes[labelled, answer_index], _field(col, pa.int32()))
    write_parquet_atomic(_table(vote_columns), out / "votes.parquet")

    write_parquet_atomic(_truth_table(ids, truth, probabilities, tree), out / "truth.parquet")

    write_json_atomic({
        "name": name or out.resolve().name,
        "survey": SURVEY,
        "bands": list(conditions.bands),
        "pixel_scale_arcsec": conditions.pixel_scale,
        "zeropoint": 22.5,
        "flux_unit": FLUX_UNIT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema": tree.name,
        "tiles": tile_ids,
        "simulation": {
            "seed": seed,
            "n_galaxies": n,
            "n_tiles": n_tiles,
            "tile_size_px": size,
            "n_labelled": len(labelled),
            "n_volunteers": n_volunteers,
            "concentration": concentration,
            "psf": "moffat",
            "psf_beta": conditions.psf_beta,
            "psf_fwhm_arcsec": dict(conditions.psf_fwhm),
            "sky_noise_nanomaggy": dict(conditions.sky_sigma),
            "kinds": {k: int((truth["kind"] == k).sum()) for k in KINDS},
            "code_version": __version__,
            "galsim_version": galsim.__version__,
        },
    }, out / "release.json")
    return out


def _truth_table(ids: np.ndarray, truth: dict[str, np.ndarray], probabilities: np.ndarray, tree: Schema) -> pa.Table:
    columns: dict[str, tuple[np.ndarray | list[Any], pa.Field]] = {
        "id_str": (ids, _field("id_str", pa.string())),
        "kind": (truth["kind"], _field("kind", pa.string(), description=", ".join(KINDS))),
        "mag_r": (truth["mag_r"], _field("mag_r", pa.float64(), "mag", "true total r magnitude (AB)")),
        "r50_arcsec": (truth["r50_arcsec"], _field("r50_arcsec", pa.float64(), "arcsec", "half-light radius")),
        "sersic_n": (truth["sersic_n"], _field("sersic_n", pa.float64())),
        "axis_ratio": (truth["axis_ratio"], _field("axis_ratio", pa.float64())),
        "ellipticity": (truth["ellipticity"], _field("ellipticity", pa.float64(), description="1 - axis_ratio")),
        "position_angle_deg": (truth["position_angle_deg"],
                               _field("position_angle_deg", pa.float64(), "deg", "from tile +x towards +y")),
        "bulge_fraction": (truth["bulge_fraction"], _field("bulge_fraction", pa.float64())),
        "has_bulge": (truth["has_bulge"], _field("has_bulge", pa.bool_())),
        "bar": (truth["bar"], _field("bar", pa.string())),
        "n_arms": (truth["n_arms"], _field("n_arms", pa.int32(), description="0 = no arms; 5+ = more than 4")),
        "arm_winding": (_nullable(truth["arm_winding"]), _field("arm_winding", pa.string())),
        "pitch_angle_deg": (truth["pitch_angle_deg"], _field("pitch_angle_deg", pa.float64(), "deg")),
        "arm_strength": (truth["arm_strength"], _field("arm_strength", pa.float64())),
        "edge_on_bulge": (_nullable(truth["edge_on_bulge"]), _field("edge_on_bulge", pa.string())),
        "tidal": (truth["tidal"], _field("tidal", pa.bool_())),
        "merger_flux_ratio": (truth["merger_flux_ratio"], _field("merger_flux_ratio", pa.float64())),
        "artifact_type": (_nullable(truth["artifact_type"]), _field("artifact_type", pa.string())),
        "visibility": (truth["visibility"], _field("visibility", pa.float64(), description="0..1")),
    }
    for answer_index, col in enumerate(tree.label_cols):
        columns[f"p_{col}"] = (probabilities[:, answer_index], _field(f"p_{col}", pa.float64()))
    return _table(columns)
