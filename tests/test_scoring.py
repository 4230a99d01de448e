"""Scoring a release into a Parquet catalogue, in process: values, flags, metadata, readers, resume, bad tiles,
refusals, the summary and the CLI."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.table import Table, vstack
from scipy.special import gammaln
from test_scoring_support import (
    PREPROCESSING,
    copy_release,
    drop_band,
    independent_outputs,
    make_classifier_package,
    make_package,
    make_release,
    set_release_json,
    strip_wcs,
    truncate_tile,
)
from typer.testing import CliRunner

from zoobot_pipeline.catalogue import (
    FAILURES_FILE,
    catalogue_files,
    part_files,
    part_metadata,
    part_path,
    read_catalogue,
)
from zoobot_pipeline.cli import TILES_FAILED_EXIT, app
from zoobot_pipeline.data.preprocessing import CutoutSizing, PreprocessingConfig
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.export import ModelPackage, PackageError
from zoobot_pipeline.runtime.session import galaxy_seeds
from zoobot_pipeline.scoring.columns import OutputColumns
from zoobot_pipeline.scoring.pipeline import ScoringError, score_release
from zoobot_pipeline.scoring.summary import summarize_catalogue
from zoobot_pipeline.stats import schema_vote_information

CHUNK = 16  # tiles hold 32 sources: two chunks each


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("sim") / "release", 96, 3, seed=1)


@pytest.fixture(scope="module")
def catalogue(package, release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cat") / "catalogue"
    score_release(release, package, out, chunk_size=CHUNK, progress=False)
    return out


def _numpy(table: pa.Table, column: str) -> np.ndarray:
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def _brute_force_information(alpha: np.ndarray, n_volunteers: int) -> tuple[float, float]:
    """Vote-space (MI, predictive entropy) of a two-answer question, by enumerating all N + 1 outcomes."""
    yes = np.arange(n_volunteers + 1)
    votes = np.stack([yes, n_volunteers - yes], axis=1)[None]  # (1, N+1, 2)
    a = alpha[:, None, :]  # (S, 1, 2)
    log_p = (gammaln(n_volunteers + 1) + gammaln(a.sum(-1)) - gammaln(n_volunteers + a.sum(-1))
             + (gammaln(votes + a) - gammaln(a) - gammaln(votes + 1)).sum(-1))
    p = np.exp(log_p)
    mixture = p.mean(axis=0)
    entropy = -(mixture * np.log(mixture)).sum()
    return entropy + (p * np.log(p)).sum(axis=1).mean(), entropy


def test_catalogue_values_match_an_independent_computation(catalogue, package, release):
    table = read_catalogue(catalogue)
    sources = Release.open(release).sources
    assert sorted(table["id_str"].to_pylist()) == sorted(sources["id_str"].to_pylist())  # every source exactly once
    assert table.num_rows == sources.num_rows == 96

    pkg = ModelPackage.open(package)
    schema = pkg.schema
    scored = table.filter(pc.is_null(table["flag"]))
    flagged = table.filter(pc.is_valid(table["flag"]))
    assert 50 < scored.num_rows < 96 and flagged.num_rows > 0
    for flag, fraction in zip(flagged["flag"].to_pylist(), _numpy(flagged, "nan_fraction"), strict=True):
        assert flag == "off_tile" or (flag == f"nan_fraction {fraction:.2f} >= 0.2" and fraction >= 0.2)
    assert np.all(_numpy(scored, "nan_fraction") < 0.2)
    assert pc.all(pc.is_null(flagged["acquisition"])).as_py()

    ids = scored["id_str"].to_pylist()
    alpha = independent_outputs(release, package, ids).astype(np.float64)  # each galaxy alone
    assert alpha.shape == (len(ids), 5, 34)
    for q in schema.questions:
        block = alpha[..., q.slice]
        fractions = (block / block.sum(axis=-1, keepdims=True)).mean(axis=1)
        for j, label in enumerate(q.label_cols):
            np.testing.assert_allclose(_numpy(scored, f"{label}_fraction"), fractions[:, j], rtol=1e-5)
            np.testing.assert_allclose(_numpy(scored, f"{label}_concentration"), block[:, :, j].mean(axis=1),
                                       rtol=1e-5)
    # probability asked: product of the fractions along the chain of asked_after answers
    for q in schema.questions:
        expected, current = np.ones(len(ids)), q
        while current.asked_after is not None:
            expected *= _numpy(scored, f"{current.asked_after.label_col}_fraction")
            current = schema.question(current.asked_after.question)
        np.testing.assert_allclose(_numpy(scored, f"{q.name}_probability_asked"), expected, rtol=1e-5)
    # two-answer questions: vote-space information by enumerating every outcome of 40 votes
    for q in (q for q in schema.questions if len(q.answers) == 2):
        brute = np.array([_brute_force_information(a[:, q.slice], 40) for a in alpha])
        np.testing.assert_allclose(_numpy(scored, f"{q.name}_mutual_information"), brute[:, 0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(_numpy(scored, f"{q.name}_entropy"), brute[:, 1], rtol=1e-5)
    assert _numpy(scored, "disk-edge-on-dr5_mutual_information").min() > 0  # dropout samples disagree
    # every question: all galaxies in one call, each on its own seeded stream, gives what was scored chunk by chunk
    info = schema_vote_information(alpha, schema, 40, seed=galaxy_seeds(ids, 0))
    for q in schema.questions:
        np.testing.assert_allclose(_numpy(scored, f"{q.name}_mutual_information"), info.mutual_information[:, q.index],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(_numpy(scored, f"{q.name}_entropy"), info.predictive_entropy[:, q.index],
                                   rtol=1e-5)
    acquisition = sum(_numpy(scored, f"{q.name}_mutual_information") * _numpy(scored, f"{q.name}_probability_asked")
                      for q in schema.questions)
    np.testing.assert_allclose(_numpy(scored, "acquisition"), acquisition, rtol=1e-5)


def test_a_galaxys_row_does_not_depend_on_the_chunk_it_was_scored_in(catalogue, package, release, tmp_path):
    other = score_release(release, package, tmp_path / "catalogue", chunk_size=7, batch_size=5, progress=False)
    first, second = (read_catalogue(path).sort_by("id_str") for path in (catalogue, other.out_dir))
    model_columns = [name for name in first.column_names if name.endswith(
        ("_fraction", "_concentration", "_mutual_information", "_entropy", "acquisition"))]
    assert len(model_columns) > 30
    for name in model_columns:
        np.testing.assert_allclose(_numpy(second, name), _numpy(first, name), rtol=2e-6, atol=1e-7, err_msg=name)


def test_scoring_cuts_galaxies_as_the_model_was_trained(catalogue, release, tmp_path):
    fixed = CutoutSizing(size_px=40, r50_factor=None)
    package = make_package(tmp_path / "model", preprocessing=PREPROCESSING.model_copy(update={"cutout": fixed}))
    assert ModelPackage.open(package).preprocessing.cutout == fixed  # model.json carries it
    result = score_release(release, package, tmp_path / "catalogue", chunk_size=CHUNK, progress=False)
    assert CutoutSizing.model_validate_json(part_metadata(part_files(result.out_dir)[0])["cutout_sizing"]) == fixed
    table = read_catalogue(result.out_dir)
    scored = table.filter(pc.is_null(table["flag"]))
    ids = scored["id_str"].to_pylist()
    alpha = independent_outputs(release, package, ids).astype(np.float64)  # cut at 40 px, each galaxy alone
    question = ModelPackage.open(package).schema.questions[0]
    block = alpha[..., question.slice]
    label = question.label_cols[0]
    np.testing.assert_allclose(_numpy(scored, f"{label}_fraction"),
                               (block[..., 0] / block.sum(axis=-1)).mean(axis=1), rtol=1e-5)
    default = read_catalogue(catalogue)  # the same weights, cut by r50
    default = default.filter(pc.is_null(default["flag"])).sort_by("id_str")
    scored = scored.filter(pc.is_in(scored["id_str"], default["id_str"])).sort_by("id_str")
    default = default.filter(pc.is_in(default["id_str"], scored["id_str"]))
    assert scored.num_rows > 30
    assert np.abs(_numpy(scored, f"{label}_fraction") - _numpy(default, f"{label}_fraction")).mean() > 1e-3


def test_classification_and_regression_columns():
    probabilities = np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]])
    values = OutputColumns("classification", ("a", "b", "c")).compute(probabilities)
    mean = probabilities.mean(axis=1)
    np.testing.assert_allclose(values["p_b"], mean[:, 1], rtol=1e-6)
    assert values["predicted"].tolist() == ["b", "a"]
    h_mean = [-sum(p * np.log(p) for p in row) for row in mean]
    mean_h = [np.mean([-sum(p * np.log(p) for p in s) for s in sample]) for sample in probabilities]
    np.testing.assert_allclose(values["mutual_information"], np.subtract(h_mean, mean_h), rtol=1e-6)
    assert values["mutual_information"][1] == pytest.approx(0.0, abs=1e-7)  # samples agree: nothing to learn
    np.testing.assert_array_equal(values["acquisition"], values["mutual_information"])

    outputs = np.array([[[1.0, 10.0], [3.0, 14.0]]])
    values = OutputColumns("regression", ("mass", "size")).compute(outputs)
    assert values["mass"][0] == 2.0 and values["mass_std"][0] == 1.0 and values["size_std"][0] == 2.0
    assert [f.name for f in OutputColumns("regression", ("mass",)).fields()] == ["mass", "mass_std"]


def test_classifier_package_scores_end_to_end(release, tmp_path):
    package = make_classifier_package(tmp_path / "classifier")
    score_release(release, package, tmp_path / "cat", progress=False)
    table = read_catalogue(tmp_path / "cat")
    scored = table.filter(pc.is_null(table["flag"]))
    assert table.num_rows == 96 and "smooth-or-featured-dr5_smooth_fraction" not in table.column_names
    p = np.stack([_numpy(scored, f"p_{c}") for c in ("disk", "elliptical", "merger")], axis=1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert scored["predicted"].to_pylist() == [("disk", "elliptical", "merger")[i] for i in p.argmax(axis=1)]
    assert part_metadata(part_files(tmp_path / "cat")[0])["task"] == "classification"


def test_metadata_units_failures_and_summary_json(catalogue, package, release):
    pkg = ModelPackage.open(package)
    meta = part_metadata(part_path(catalogue, "tile_0001"))
    assert meta["model_sha256"] == pkg.sha256 and meta["schema"] == "decals_dr5" and meta["release"] == "release"
    assert meta["tile_id"] == "tile_0001" and meta["mc_samples"] == "5" and meta["seed"] == "0"
    assert PreprocessingConfig.model_validate_json(meta["preprocessing"]) == pkg.preprocessing
    assert meta["package"] == str(package.resolve()) and meta["code_version"]
    assert datetime.fromisoformat(meta["created"]).utcoffset().total_seconds() == 0
    schema = pq.read_schema(part_path(catalogue, "tile_0001"))
    assert schema.field("ra").metadata[b"unit"] == b"deg" and schema.field("dec").metadata[b"unit"] == b"deg"
    assert schema.field("bar-dr5_mutual_information").metadata[b"unit"] == b"nat"
    assert schema.field("ra").type == pa.float64() and schema.field("acquisition").type == pa.float32()
    assert schema.names[:4] == ["id_str", "ra", "dec", "tile_id"] and schema.names[-3:] == ["edge", "nan_fraction",
                                                                                               "flag"]
    failures = pq.read_table(catalogue / FAILURES_FILE)
    assert failures.num_rows == 0 and failures.column_names == ["tile_id", "path", "reason", "n_sources"]
    summary = json.loads((catalogue / "catalogue.json").read_text())
    table = read_catalogue(catalogue, columns=["flag"])
    assert summary["counts"]["sources"] == 96 and summary["counts"]["tiles"] == 3
    assert summary["counts"]["scored"] == table["flag"].null_count
    assert summary["model"]["sha256"] == pkg.sha256 and summary["release"]["name"] == "release"


def test_reads_back_with_pandas_polars_and_astropy(catalogue):
    expected = read_catalogue(catalogue).sort_by("id_str")
    frame = pd.read_parquet(catalogue / "tiles").sort_values("id_str")
    assert frame["id_str"].tolist() == expected["id_str"].to_pylist()
    np.testing.assert_allclose(frame["acquisition"], _numpy(expected, "acquisition"), equal_nan=True)
    assert frame["flag"].isna().sum() == expected["flag"].null_count

    polars = pl.read_parquet(str(catalogue / "tiles" / "*.parquet")).sort("id_str")
    assert polars["id_str"].to_list() == expected["id_str"].to_pylist()
    assert polars["flag"].null_count() == expected["flag"].null_count
    assert polars.schema["ra"] == pl.Float64 and polars.schema["acquisition"] == pl.Float32

    tables = [Table.read(path, format="parquet") for path in part_files(catalogue)]
    astropy = vstack(tables, metadata_conflicts="silent")
    astropy.sort("id_str")
    assert list(astropy["id_str"]) == expected["id_str"].to_pylist()
    assert str(astropy["ra"].unit) == "deg" and str(astropy["bar-dr5_entropy"].unit) == "nat"
    assert tables[0].meta["model_sha256"] == part_metadata(part_files(catalogue)[0])["model_sha256"]
    np.testing.assert_allclose(np.asarray(astropy["dec"]), _numpy(expected, "dec"))


def test_summary_and_its_cli(catalogue):
    table = read_catalogue(catalogue)
    scored = table.filter(pc.is_null(table["flag"]))
    summary = summarize_catalogue(catalogue)
    assert summary.n_sources == 96 and summary.n_scored == scored.num_rows and summary.n_tiles == 3
    assert summary.flagged == {k: v for k, v in {
        "nan_fraction": sum(f.startswith("nan_fraction") for f in table["flag"].drop_null().to_pylist()),
        "off_tile": table["flag"].to_pylist().count("off_tile")}.items() if v}
    columns = [d.column for d in summary.distributions]
    assert columns == ["smooth-or-featured-dr5_smooth_fraction", "smooth-or-featured-dr5_featured-or-disk_fraction",
                       "smooth-or-featured-dr5_artifact_fraction", "acquisition"]
    for d in summary.distributions:
        values = np.sort(_numpy(scored, d.column))
        width = d.edges[1] - d.edges[0]
        assert d.n == len(values) and d.mean == pytest.approx(values.mean(), rel=1e-6)
        for q in (0.05, 0.5, 0.95):
            position = q * (len(values) - 1)
            low, high = values[max(int(np.floor(position)) - 1, 0)], values[min(int(np.ceil(position)) + 1,
                                                                               len(values) - 1)]
            assert low - width <= d.quantile(q) <= high + width

    result = CliRunner().invoke(app, ["catalogue", "summary", str(catalogue)])
    assert result.exit_code == 0, result.output
    assert "(complete)" in result.output and "decals_dr5" in result.output
    assert f"scored                │ {summary.n_scored}" in result.output
    assert "smooth-or-featured-dr5 fractions" in result.output and "featured-or-disk" in result.output
    median = next(d for d in summary.distributions if d.column == "acquisition").quantile(0.5)
    assert f"{median:.3g}" in result.output
    missing = CliRunner().invoke(app, ["catalogue", "summary", str(catalogue / "tiles")])
    assert missing.exit_code == 2 and "not a scored catalogue" in missing.output


def test_resume_skips_finished_tiles_and_refuses_other_settings(package, release, tmp_path):
    out = tmp_path / "cat"
    score_release(release, package, out, chunk_size=CHUNK, progress=False)
    before = {p: (p.stat().st_mtime_ns, part_metadata(p)["created"]) for p in part_files(out)}
    again = score_release(release, package, out, chunk_size=CHUNK, progress=False)
    assert again.tiles_skipped == 3 and again.tiles_scored == 0 and again.n_sources == 96
    assert {p: (p.stat().st_mtime_ns, part_metadata(p)["created"]) for p in part_files(out)} == before

    with pytest.raises(ScoringError, match=r"other settings .*seed: '0' != '1'.*--overwrite"):
        score_release(release, package, out, chunk_size=CHUNK, seed=1, progress=False)
    other_model = make_package(tmp_path / "other", torch_seed=7)
    with pytest.raises(ScoringError, match=r"other settings .*model_sha256"):
        score_release(release, other_model, out, chunk_size=CHUNK, progress=False)
    assert {p: p.stat().st_mtime_ns for p in part_files(out)} == {p: m for p, (m, _) in before.items()}

    replaced = score_release(release, other_model, out, chunk_size=CHUNK, overwrite=True, progress=False)
    assert replaced.tiles_scored == 3
    metas = [part_metadata(p) for p in part_files(out)]
    assert {m["model_sha256"] for m in metas} == {ModelPackage.open(other_model).sha256}
    assert read_catalogue(out).num_rows == 96


@pytest.fixture
def bad_release(tmp_path) -> Path:
    """Five tiles: truncated, no WCS, missing band z, missing file, and one good tile."""
    release = make_release(tmp_path / "bad", 40, 5, seed=2)
    shutil.copytree(release / "tiles", tmp_path / "originals")
    truncate_tile(release / "tiles" / "tile_0000.fits")
    strip_wcs(release / "tiles" / "tile_0001.fits")
    drop_band(release / "tiles" / "tile_0002.fits", "z")
    (release / "tiles" / "tile_0003.fits").unlink()
    return release


def test_bad_tiles_are_recorded_and_the_rest_is_scored(package, bad_release, tmp_path):
    out = tmp_path / "cat"
    command = ["score", "--release", str(bad_release), "--model", str(package), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == TILES_FAILED_EXIT, result.output
    assert "4 failed" in result.output and "tile tile_0003 failed" in result.output
    failures = {row["tile_id"]: row for row in pq.read_table(out / FAILURES_FILE).to_pylist()}
    assert sorted(failures) == ["tile_0000", "tile_0001", "tile_0002", "tile_0003"]
    assert "truncated" in failures["tile_0000"]["reason"]
    assert "no celestial WCS" in failures["tile_0001"]["reason"]
    assert "band 'z' missing" in failures["tile_0002"]["reason"]
    assert "has no file" in failures["tile_0003"]["reason"]
    assert all(row["n_sources"] == 8 and row["path"].endswith(f"{tile}.fits") for tile, row in failures.items())

    table = read_catalogue(out)
    assert table.num_rows == 40 and len(set(table["id_str"].to_pylist())) == 40
    for tile, row in failures.items():
        rows = table.filter(pc.equal(table["tile_id"], tile))
        assert rows["flag"].to_pylist() == [f"tile_failed: {row['reason']}"] * 8
        assert rows["edge"].null_count == 8 and rows["acquisition"].null_count == 8
    good = table.filter(pc.equal(table["tile_id"], "tile_0004"))
    assert good.num_rows == 8 and good["flag"].null_count >= 5 and not any(
        f.startswith("tile_failed") for f in good["flag"].drop_null().to_pylist())

    good_mtime = part_path(out, "tile_0004").stat().st_mtime_ns
    shutil.copy(bad_release.parent / "originals" / "tile_0001.fits", bad_release / "tiles" / "tile_0001.fits")
    rerun = score_release(bad_release, package, out, progress=False)
    assert rerun.tiles_skipped == 1 and rerun.tiles_scored == 4 and len(rerun.failures) == 3
    assert sorted(pq.read_table(out / FAILURES_FILE)["tile_id"].to_pylist()) == ["tile_0000", "tile_0002",
                                                                                  "tile_0003"]
    assert part_path(out, "tile_0004").stat().st_mtime_ns == good_mtime
    retried = read_catalogue(out).filter(pc.equal(read_catalogue(out)["tile_id"], "tile_0001"))
    assert not any(f.startswith("tile_failed") for f in retried["flag"].drop_null().to_pylist())
    assert "tile_failed" not in part_metadata(part_path(out, "tile_0001"))
    tolerated = CliRunner().invoke(app, [*command, "--allow-failed-tiles"])
    assert tolerated.exit_code == 0 and "3 failed" in tolerated.output, tolerated.output


def test_refusals_happen_before_any_output(package, release, tmp_path):
    out = tmp_path / "cat"
    tampered = Path(shutil.copytree(package, tmp_path / "tampered"))
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.onnx: sha256 .* does not match model\.json"):
        score_release(release, tampered, out, progress=False)

    two_bands = copy_release(release, tmp_path / "two_bands")
    set_release_json(two_bands, bands=["g", "r"])
    with pytest.raises(PackageError, match=r"reads bands \['g', 'r', 'z'\] .* missing \['z'\]"):
        score_release(two_bands, package, out, progress=False)
    other_tree = copy_release(release, tmp_path / "other_tree")
    set_release_json(other_tree, schema="gz2")
    with pytest.raises(PackageError, match="predicts decision tree 'decals_dr5' but release .* declares schema 'gz2'"):
        score_release(other_tree, package, out, progress=False)
    with pytest.raises(ScoringError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        score_release(release, package, out, device="cuda", progress=False)
    with pytest.raises(PackageError, match="no 'int8' variant"):
        score_release(release, package, out, variant="int8", progress=False)
    with pytest.raises(ScoringError, match="use Ray"):
        score_release(release, package, out, workers=2, progress=False)
    assert not out.exists()

    result = CliRunner().invoke(app, ["score", "--release", str(release), "--model", str(tampered), "--out",
                                      str(out)])
    assert result.exit_code == 2 and "does not match model.json" in result.output
    assert result.output.count("\n") <= 2 and "Traceback" not in result.output
    assert not out.exists()


def test_part_file_names_are_never_hidden_from_readers(tmp_path):
    names = {tile_id: part_path(tmp_path, tile_id).name for tile_id in ("_t1", ".t2", "a/b", "plain")}
    assert names == {"_t1": "%5Ft1.parquet", ".t2": "%2Et2.parquet", "a/b": "a%2Fb.parquet",
                     "plain": "plain.parquet"}
    for tile_id in names:
        path = part_path(tmp_path, tile_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id_str": [tile_id]}), path)
    assert len(part_files(tmp_path)) == 4
    assert len(catalogue_files(tmp_path)) == 4
