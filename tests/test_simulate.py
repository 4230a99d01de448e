"""Synthetic releases: files and formats, consistency of votes with the tree, determinism, images against catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from zoobot_pipeline.data.synthetic.morphology import (
    SurveyConditions,
    psf_kernels,
    render_source,
    sample_truth,
    visibility,
)
from zoobot_pipeline.data.synthetic.simulate import default_tile_size, simulate_release
from zoobot_pipeline.data.synthetic.volunteers import answer_probabilities, simulate_votes
from zoobot_pipeline.schemas import available_schemas, get_schema

N_GALAXIES, N_TILES, N_VOLUNTEERS = 60, 2, 40
SCHEMA = get_schema("decals_dr5")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("release"), N_GALAXIES, N_TILES, seed=7, labelled_fraction=0.5,
                            n_volunteers=N_VOLUNTEERS)


@pytest.fixture(scope="module")
def tables(release: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(release / f"{name}.parquet") for name in ("sources", "votes", "truth")}


@pytest.fixture(scope="module")
def vote_model() -> dict[str, np.ndarray]:
    """Truth, answer probabilities and votes for many galaxies, without rendering images."""
    truth = sample_truth(4000, np.random.default_rng(0))
    truth["visibility"] = visibility(truth, SurveyConditions())
    probs = answer_probabilities(truth, SCHEMA, np.random.default_rng(1))
    votes = simulate_votes(probs, SCHEMA, N_VOLUNTEERS, np.random.default_rng(2))
    return {**truth, "probabilities": probs, "votes": votes}


def _fraction(votes: np.ndarray, label_col: str) -> np.ndarray:
    """Vote fraction of an answer within its question (NaN where the question was not asked)."""
    question = SCHEMA.question(SCHEMA.answer(label_col).question)
    total = votes[:, question.slice].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return votes[:, SCHEMA.answer(label_col).index] / total


def _pixels(release: Path, tables: dict[str, pa.Table]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pixel positions (x, y) of every source in its own tile, keyed by tile id."""
    sources = tables["sources"].to_pandas()
    out = {}
    for tile_id, group in sources.groupby("tile_id"):
        with fits.open(release / "tiles" / f"{tile_id}.fits") as hdul:
            x, y = WCS(hdul["r"].header).all_world2pix(group["ra"], group["dec"], 0)
        out[tile_id] = (group.index.to_numpy(), np.stack([x, y], axis=1))
    return out


def test_release_json(release: Path) -> None:
    meta = json.loads((release / "release.json").read_text())
    assert meta["survey"] == "synthetic-decals"
    assert meta["bands"] == ["g", "r", "z"]
    assert meta["pixel_scale_arcsec"] == pytest.approx(0.262)
    assert meta["zeropoint"] == 22.5 and meta["flux_unit"] == "nanomaggy"
    assert meta["schema"] == "decals_dr5"
    assert meta["tiles"] == ["tile_0000", "tile_0001"]
    assert meta["created"].endswith("+00:00")
    sim = meta["simulation"]
    assert sim["seed"] == 7 and sim["n_galaxies"] == N_GALAXIES and sim["n_tiles"] == N_TILES
    assert set(sim["psf_fwhm_arcsec"]) == set(sim["sky_noise_nanomaggy"]) == {"g", "r", "z"}
    assert all(1.1 <= v <= 1.6 for v in sim["psf_fwhm_arcsec"].values())
    assert sorted(p.name for p in (release / "tiles").iterdir()) == ["tile_0000.fits", "tile_0001.fits"]


def test_tiles_have_one_float32_hdu_per_band_with_celestial_wcs(release: Path) -> None:
    size = default_tile_size(N_GALAXIES, N_TILES)
    centres = []
    for tile_id in ("tile_0000", "tile_0001"):
        with fits.open(release / "tiles" / f"{tile_id}.fits") as hdul:
            assert hdul[0].data is None
            assert [h.name for h in hdul[1:]] == ["G", "R", "Z"]
            for hdu in hdul[1:]:
                assert hdu.data.dtype == np.dtype(">f4") and hdu.data.shape == (size, size)
                assert hdu.header["BUNIT"] == "nanomaggy"
                wcs = WCS(hdu.header)
                assert wcs.has_celestial and list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
                scale = wcs.proj_plane_pixel_scales()
                assert [s.to_value("arcsec") for s in scale] == pytest.approx([0.262, 0.262])
            centres.append(WCS(hdul["g"].header).all_pix2world([[size / 2, size / 2]], 0)[0])
    assert abs(centres[0][0] - 150.0) < 1 and abs(centres[0][1] - 2.0) < 1
    separation = np.hypot((centres[0][0] - centres[1][0]) * np.cos(np.radians(2.0)), centres[0][1] - centres[1][1])
    assert separation * 3600 / 0.262 >= size  # tiles do not overlap


def test_every_source_falls_inside_its_tile(release: Path, tables: dict[str, pa.Table]) -> None:
    size = default_tile_size(N_GALAXIES, N_TILES)
    pixels = _pixels(release, tables)
    assert sum(len(rows) for rows, _ in pixels.values()) == N_GALAXIES
    for _, xy in pixels.values():
        assert ((xy >= 0) & (xy <= size - 1)).all()


def test_catalogue_columns_types_and_units(tables: dict[str, pa.Table]) -> None:
    sources, votes, truth = tables["sources"], tables["votes"], tables["truth"]
    assert sources.num_rows == truth.num_rows == N_GALAXIES
    assert sources.column_names == ["id_str", "ra", "dec", "tile_id", "r50_arcsec", "mag_g", "mag_r", "mag_z"]
    assert sources.schema.field("id_str").type == pa.string()
    assert sources.schema.field("ra").type == pa.float64() and sources.schema.field("dec").type == pa.float64()
    assert sources.schema.field("ra").metadata[b"unit"] == b"deg"
    assert sources.schema.field("r50_arcsec").metadata[b"unit"] == b"arcsec"
    assert sources.schema.field("mag_r").metadata[b"unit"] == b"mag"
    ids = sources["id_str"].to_pylist()
    assert len(set(ids)) == N_GALAXIES and ids == truth["id_str"].to_pylist()

    assert votes.column_names == ["id_str", *SCHEMA.label_cols]
    assert all(votes.schema.field(c).type == pa.int32() for c in SCHEMA.label_cols)
    assert votes.num_rows == round(0.5 * N_GALAXIES)
    assert set(votes["id_str"].to_pylist()) <= set(ids)

    assert set(truth["kind"].to_pylist()) <= {"smooth", "featured", "edge_on", "merger", "star", "artifact"}
    for col in ("sersic_n", "axis_ratio", "ellipticity", "position_angle_deg", "bulge_fraction", "bar", "n_arms",
                "arm_winding", "edge_on_bulge", "has_bulge", "tidal", "mag_r", "r50_arcsec", "visibility"):
        assert col in truth.column_names
    vis = truth["visibility"].to_numpy()
    assert ((vis >= 0) & (vis <= 1)).all()
    probs = np.stack([truth[f"p_{c}"].to_numpy() for c in SCHEMA.label_cols], axis=1)
    for question in SCHEMA.questions:
        assert probs[:, question.slice].sum(axis=1) == pytest.approx(np.ones(N_GALAXIES))
    galaxies = ~np.isin(truth["kind"].to_numpy(zero_copy_only=False), ["star", "artifact"])
    assert sources["mag_r"].to_numpy()[galaxies] == pytest.approx(truth["mag_r"].to_numpy()[galaxies], abs=1e-6)


def _check_tree(votes: np.ndarray, n_volunteers: float, schema=SCHEMA) -> None:
    roots = [q for q in schema.questions if q.asked_after is None]
    root_totals = votes[:, roots[0].slice].sum(axis=1)
    for question in roots:  # the same volunteers answer every question asked of everyone
        np.testing.assert_array_equal(votes[:, question.slice].sum(axis=1), root_totals)
    assert abs(root_totals.mean() - n_volunteers) < 0.2 * n_volunteers
    assert (root_totals >= 1).all()
    for question in schema.questions:
        if question.asked_after is not None:
            child = votes[:, question.slice].sum(axis=1)
            parent = votes[:, question.asked_after.index]
            assert (child <= parent).all(), question.name
            assert (child[parent == 0] == 0).all()


def test_votes_follow_the_decision_tree(tables: dict[str, pa.Table]) -> None:
    votes = np.stack([tables["votes"][c].to_numpy() for c in SCHEMA.label_cols], axis=1)
    assert (votes >= 0).all()
    _check_tree(votes, N_VOLUNTEERS)
    edge_on = SCHEMA.question("disk-edge-on-dr5")
    assert (votes[:, edge_on.slice].sum(axis=1) == 0).any()  # some galaxies never get asked (all-zero counts)


@pytest.mark.parametrize("schema_name", available_schemas())
def test_every_builtin_schema_gets_tree_consistent_votes(schema_name: str) -> None:
    schema = get_schema(schema_name)
    truth = sample_truth(500, np.random.default_rng(3))
    truth["visibility"] = visibility(truth, SurveyConditions())
    probs = answer_probabilities(truth, schema, np.random.default_rng(4))
    assert np.isfinite(probs).all() and (probs > 0).all()
    votes = simulate_votes(probs, schema, 25, np.random.default_rng(5))
    assert votes.dtype == np.int32 and votes.shape == (500, schema.n_answers)
    _check_tree(votes, 25, schema)
    root = schema.questions[0]
    problem = root.answers[-1].index  # artifact / problem
    kind = truth["kind"]
    assert _mean_fraction(votes, root, problem, kind == "artifact") > _mean_fraction(votes, root, problem,
                                                                                     kind == "smooth") + 0.4


def _mean_fraction(votes: np.ndarray, question, answer_index: int, mask: np.ndarray) -> float:
    total = votes[mask][:, question.slice].sum(axis=1)
    return float(np.mean(votes[mask][:, answer_index] / np.maximum(total, 1)))


def test_determinism(tmp_path: Path) -> None:
    kwargs = {"n_galaxies": 12, "n_tiles": 1, "tile_size": 192, "labelled_fraction": 0.5}
    a = simulate_release(tmp_path / "a", seed=3, **kwargs)
    b = simulate_release(tmp_path / "b", seed=3, **kwargs)
    c = simulate_release(tmp_path / "c", seed=4, **kwargs)
    for name in ("sources", "votes", "truth"):
        table_a, table_b, table_c = (pq.read_table(p / f"{name}.parquet").to_pandas() for p in (a, b, c))
        assert table_a.equals(table_b)  # NaN == NaN here
        assert not table_a.equals(table_c)
    with (fits.open(a / "tiles/tile_0000.fits") as ha, fits.open(b / "tiles/tile_0000.fits") as hb,
          fits.open(c / "tiles/tile_0000.fits") as hc):
        for band in "grz":
            np.testing.assert_array_equal(ha[band].data, hb[band].data)
            assert not np.array_equal(ha[band].data, hc[band].data)
    meta_a, meta_b = (json.loads((p / "release.json").read_text()) for p in (a, b))
    meta_a.pop("created"), meta_b.pop("created"), meta_a.pop("name"), meta_b.pop("name")
    assert meta_a == meta_b


def test_parallel_rendering_gives_the_same_tiles(tmp_path: Path) -> None:
    kwargs = {"n_galaxies": 8, "n_tiles": 2, "tile_size": 160, "seed": 11}
    serial = simulate_release(tmp_path / "serial", **kwargs)
    parallel = simulate_release(tmp_path / "parallel", workers=2, **kwargs)
    for tile in ("tile_0000", "tile_0001"):
        with fits.open(serial / "tiles" / f"{tile}.fits") as hs, fits.open(parallel / "tiles" / f"{tile}.fits") as hp:
            np.testing.assert_array_equal(hs["r"].data, hp["r"].data)


def test_sources_are_where_the_catalogue_says_and_sky_noise_is_as_stated(release: Path,
                                                                         tables: dict[str, pa.Table]) -> None:
    meta = json.loads((release / "release.json").read_text())
    sky = meta["simulation"]["sky_noise_nanomaggy"]
    kinds = tables["truth"]["kind"].to_numpy(zero_copy_only=False)
    r50_px = np.maximum(tables["sources"]["r50_arcsec"].to_numpy(), 1.0) / 0.262
    for tile_id, (rows, xy) in _pixels(release, tables).items():
        with fits.open(release / "tiles" / f"{tile_id}.fits") as hdul:
            image = hdul["r"].data.astype(np.float64)
            size = image.shape[0]
            for row, (x, y) in zip(rows, xy, strict=True):
                if kinds[row] == "artifact":
                    continue
                xi, yi = int(round(x)), int(round(y))
                box = image[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2]
                assert box.mean() > 5 * sky["r"], (tile_id, row, kinds[row])
            yy, xx = np.mgrid[:size, :size]
            empty = np.ones((size, size), dtype=bool)
            for row, (x, y) in zip(rows, xy, strict=True):
                empty &= np.hypot(xx - x, yy - y) > 5 * r50_px[row] + 25
            assert empty.sum() > 5000
            for band in "grz":
                pixels = hdul[band].data[empty].astype(np.float64)
                robust_sigma = 1.4826 * np.median(np.abs(pixels - np.median(pixels)))
                assert robust_sigma == pytest.approx(sky[band], rel=0.1)
                assert abs(np.median(pixels)) < 0.1 * sky[band]


def test_galaxy_images_have_structure() -> None:
    """Edge-on discs come out elongated, smooth round ellipticals round, and bulges redder than arm-dominated discs."""
    conditions = SurveyConditions()
    kernels = psf_kernels(conditions)
    base = {"mag_r": 15.0, "r50_arcsec": 5.0, "sersic_n": 4.0, "position_angle_deg": 30.0, "bulge_fraction": 1.0,
            "bar": "none", "n_arms": 0, "arm_winding": None, "pitch_angle_deg": np.nan, "arm_strength": 0.0,
            "edge_on_bulge": None, "tidal": False, "merger_flux_ratio": np.nan, "artifact_type": None}

    def axis_ratio_and_colour(truth: dict) -> tuple[float, float]:
        image, flux, psf_applied = render_source(truth, 0.0, 0.0, conditions, np.random.default_rng(0), kernels)
        assert psf_applied
        r = image[1]
        y, x = np.indices(r.shape) - r.shape[0] // 2
        w = r / r.sum()
        cov = np.cov(np.stack([x.ravel(), y.ravel()]), aweights=np.clip(w.ravel(), 0, None))
        eig = np.linalg.eigvalsh(cov)
        assert r.sum() == pytest.approx(flux[1], rel=0.05)
        return float(np.sqrt(eig[0] / eig[1])), float(-2.5 * np.log10(flux[0] / flux[1]))

    round_q, round_colour = axis_ratio_and_colour({**base, "kind": "smooth", "axis_ratio": 0.95})
    edge_q, _ = axis_ratio_and_colour({**base, "kind": "edge_on", "axis_ratio": 0.1, "sersic_n": 1.0,
                                       "bulge_fraction": 0.0, "edge_on_bulge": "none"})
    _, spiral_colour = axis_ratio_and_colour({**base, "kind": "featured", "axis_ratio": 0.9, "sersic_n": 2.0,
                                              "bulge_fraction": 0.1, "n_arms": 2, "arm_winding": "medium",
                                              "pitch_angle_deg": 20.0, "arm_strength": 0.45})
    assert round_q > 0.85
    assert edge_q < 0.35
    assert round_colour > spiral_colour + 0.15


def test_votes_depend_on_truth_and_visibility(vote_model: dict[str, np.ndarray]) -> None:
    kind, vis, votes = vote_model["kind"], vote_model["visibility"], vote_model["votes"]
    smooth = _fraction(votes, "smooth-or-featured-dr5_smooth")
    assert np.nanmean(smooth[kind == "smooth"]) > np.nanmean(smooth[kind == "featured"]) + 0.25
    artifact = _fraction(votes, "smooth-or-featured-dr5_artifact")
    assert np.nanmean(artifact[(kind == "star") | (kind == "artifact")]) > 0.6

    armed = (kind == "featured") & (vote_model["n_arms"] > 0)
    bright, faint = armed & (vis > 0.7), armed & (vis < 0.3)
    assert bright.sum() > 30 and faint.sum() > 30
    featured = _fraction(votes, "smooth-or-featured-dr5_featured-or-disk")
    assert np.nanmean(featured[bright]) > np.nanmean(featured[faint]) + 0.3
    spiral_yes = _fraction(votes, "has-spiral-arms-dr5_yes")
    assert np.nanmean(spiral_yes[bright]) > np.nanmean(spiral_yes[faint]) + 0.3
    cant_tell = _fraction(votes, "spiral-arm-count-dr5_cant-tell")
    assert np.nanmean(cant_tell[bright]) < np.nanmean(cant_tell[faint])

    bars = kind == "featured"
    strong = _fraction(votes, "bar-dr5_strong")
    visible = vis > 0.6
    assert (np.nanmean(strong[bars & visible & (vote_model["bar"] == "strong")])
            > np.nanmean(strong[bars & visible & (vote_model["bar"] == "none")]) + 0.3)
    edge_yes = _fraction(votes, "disk-edge-on-dr5_yes")
    assert np.nanmean(edge_yes[kind == "edge_on"]) > np.nanmean(edge_yes[kind == "featured"]) + 0.4
    merger = _fraction(votes, "merging-dr5_merger")
    assert np.nanmean(merger[kind == "merger"]) > np.nanmean(merger[kind == "smooth"]) + 0.3


def test_galaxies_of_the_same_truth_get_different_probabilities(vote_model: dict[str, np.ndarray]) -> None:
    """Per-galaxy overdispersion: probabilities vary more than volunteers' binomial noise alone would give."""
    probs = vote_model["probabilities"]
    smooth = vote_model["kind"] == "smooth"
    p_smooth = probs[smooth, SCHEMA.answer("smooth-or-featured-dr5_smooth").index]
    assert p_smooth.std() > 0.03
    assert 0.6 < p_smooth.mean() < 0.98


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_galaxies": 0}, "n_galaxies"),
        ({"n_galaxies": -5}, "n_galaxies"),
        ({"n_tiles": 0}, "n_tiles"),
        ({"labelled_fraction": 1.5}, "labelled_fraction"),
        ({"labelled_fraction": -0.1}, "labelled_fraction"),
        ({"schema": "no-such-tree"}, "no-such-tree"),
        ({"n_volunteers": 0}, "n_volunteers"),
        ({"tile_size": 10}, "tile_size"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"n_galaxies": 5, "n_tiles": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate_release(tmp_path / "bad", **arguments)
    assert not (tmp_path / "bad").exists()
