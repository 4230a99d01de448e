"""``catalogue export``: a scored catalogue as one FITS table (read back with astropy), a HATS catalogue (read back and
cross-matched with lsdb) and Zoobot's prediction CSV (read back with pandas); streaming (peak memory for 2 and 20
tiles); refusals (one line, exit 2, nothing written or changed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table
from cli_checks import error_line, tree
from test_scoring_support import make_package, make_release
from typer.testing import CliRunner

from zoobot_pipeline.catalogue import (
    RunSettings,
    catalogue_schema,
    part_files,
    part_metadata,
    part_path,
    read_catalogue,
    write_part,
    write_summary_json,
)
from zoobot_pipeline.cli import app
from zoobot_pipeline.export import ModelPackage
from zoobot_pipeline.formats import FORMATS, export_catalogue
from zoobot_pipeline.formats.fits_table import KEYWORDS
from zoobot_pipeline.formats.hats_catalogue import HATS_ENTRIES, PARTITION_ROWS, import_hats
from zoobot_pipeline.formats.parts import PROVENANCE_KEYS
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.scoring.columns import OutputColumns
from zoobot_pipeline.scoring.pipeline import score_release

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("sim") / "release", 64, 2, seed=2)


@pytest.fixture(scope="module")
def catalogue(package, release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cat") / "catalogue"
    score_release(release, package, out, chunk_size=16, progress=False)
    return out


def _floats(table: pa.Table, column: str) -> np.ndarray:
    return pc.fill_null(table[column], float("nan")).to_numpy()


def _invoke(*args: str | Path):
    return runner.invoke(app, ["catalogue", "export", *map(str, args)])


# --- FITS ---


def test_fits_table_reads_back_with_astropy_with_units_and_provenance(catalogue, package, tmp_path):
    out = tmp_path / "galaxies.fits"
    result = _invoke(catalogue, "--format", "fits", "--out", out)
    assert result.exit_code == 0, result.output
    expected = read_catalogue(catalogue)
    assert f"{expected.num_rows} rows from 2 tiles" in result.output

    table = Table.read(out, unit_parse_strict="silent")
    assert table.colnames == expected.column_names and len(table) == expected.num_rows == 64
    assert list(table["id_str"]) == expected["id_str"].to_pylist()
    for field in expected.schema:
        if pa.types.is_floating(field.type):
            np.testing.assert_array_equal(np.asarray(table[field.name]), _floats(expected, field.name),
                                          err_msg=field.name)
            assert table[field.name].dtype.itemsize == field.type.bit_width // 8
    assert table["flag"].filled("").tolist() == [f or "" for f in expected["flag"].to_pylist()]
    assert table["edge"].tolist() == expected["edge"].to_pylist()
    assert str(table["ra"].unit) == "deg" and str(table["dec"].unit) == "deg"
    assert str(table["bar-dr5_mutual_information"].unit) == "nat"

    with fits.open(out) as hdus:
        hdus.verify("exception")
        header = hdus["CATALOGUE"].header
        assert header["NAXIS2"] == 64 and header["TUNIT2"] == "deg" and header["TCOMM2"] == "right ascension (ICRS)"
        meta = part_metadata(part_files(catalogue)[0])
        assert set(PROVENANCE_KEYS) <= set(meta) and set(PROVENANCE_KEYS) == set(KEYWORDS)
        for key in PROVENANCE_KEYS:
            assert str(header[KEYWORDS[key][0]]) == meta[key], key
        assert header["MODELSHA"] == ModelPackage.open(package).sha256
        assert header["MCSAMPLE"] == 5 and header["SEED"] == 0 and header["RELEASE"] == "release"
        assert header["PACKAGE"] == str(package.resolve()) and header["NTILES"] == 2


# --- HATS ---


def test_hats_catalogue_reads_back_with_lsdb_and_crossmatches_the_release_sources(catalogue, release, tmp_path):
    import dask
    import lsdb

    out = tmp_path / "galaxies_hats"
    result = export_catalogue(catalogue, out, "hats", partition_rows=40)
    assert result.n_rows == 64 and sorted(p.name for p in out.iterdir()) == sorted(HATS_ENTRIES)
    expected = read_catalogue(catalogue).sort_by("id_str")
    with dask.config.set(scheduler="synchronous"):
        hats = lsdb.read_hats(out)
        assert hats.hc_structure.catalog_info.total_rows == 64 and len(hats.get_healpix_pixels()) >= 2
        frame = hats.compute().sort_values("id_str")
        assert frame["id_str"].tolist() == expected["id_str"].to_pylist()
        np.testing.assert_array_equal(frame["acquisition"].to_numpy(np.float32, na_value=np.nan),
                                      _floats(expected, "acquisition"))
        np.testing.assert_array_equal(frame["ra"].to_numpy(), expected["ra"].to_numpy())
        assert frame["flag"].isna().sum() == expected["flag"].null_count

        sources_table = pq.read_table(release / "sources.parquet")
        sources = import_hats([release / "sources.parquet"], tmp_path / "sources_hats",
                              schema=sources_table.schema, properties={}, expected_rows=sources_table.num_rows)
        matched = hats.crossmatch(lsdb.read_hats(sources), radius_arcsec=0.01, n_neighbors=1,
                                  suffixes=("_cat", "_src")).compute()
    assert len(matched) == 64
    assert (matched["id_str_cat"] == matched["id_str_src"]).all()
    assert matched["_dist_arcsec"].max() < 1e-6

    properties = (out / "hats.properties").read_text()
    meta = part_metadata(part_files(catalogue)[0])
    assert f"zoobot_model_sha256={meta['model_sha256']}" in properties and "hats_nrows=64" in properties
    data_file = next((out / "dataset").rglob("Npix=*.parquet"))
    schema = pq.read_schema(data_file)
    assert schema.field("ra").metadata[b"unit"] == b"deg" and schema.metadata[b"mc_samples"] == b"5"


# --- Zoobot CSV ---


def test_zoobot_csv_has_the_columns_of_zoobots_predict_on_catalog(catalogue, package, tmp_path):
    out = tmp_path / "predictions.csv"
    result = _invoke(catalogue, "--format", "zoobot-csv", "--out", out)
    assert result.exit_code == 0, result.output
    expected = read_catalogue(catalogue)
    scored = expected.filter(pc.is_null(expected["flag"]))
    assert 0 < scored.num_rows < expected.num_rows and f"{scored.num_rows} rows" in result.output

    frame = pd.read_csv(out)
    labels = list(ModelPackage.open(package).output_names)  # Zoobot: columns=label_cols, then id_str
    assert labels == get_schema("decals_dr5").label_cols and labels[0] == "smooth-or-featured-dr5_smooth"
    assert frame.columns.tolist() == [*labels, "id_str"]
    assert frame["id_str"].tolist() == scored["id_str"].to_pylist()
    concentrations = np.stack([_floats(scored, f"{label}_concentration") for label in labels], axis=1)
    np.testing.assert_array_equal(frame[labels].to_numpy(np.float32), concentrations)
    assert out.read_text().splitlines()[0] == ",".join([*labels, "id_str"])


def _synthetic_catalogue(root: Path, n_tiles: int, rows: int, task: str = "dirichlet", seed: int = 0,
                         first_id: str | None = None) -> Path:
    """A finished catalogue written directly in the catalogue format: ``n_tiles`` parts of ``rows`` random rows, tile
    ``t`` on its own patch of sky, a tenth of the rows flagged; ``first_id`` replaces the first row's id."""
    if task == "dirichlet":
        schema = get_schema("decals_dr5")
        columns = OutputColumns(task, tuple(schema.label_cols), schema)
    else:
        columns = OutputColumns(task, ("disk", "elliptical") if task == "classification" else ("mass",))
    fields = columns.fields()
    settings = RunSettings(model_sha256="0" * 64, variant="fp32", task=task, schema="", release="synthetic",
                           mc_samples=3, seed=seed, chunk_size=256, n_volunteers=40, preprocessing="{}",
                           cutout_sizing="{}")
    rng = np.random.default_rng(seed)
    for t in range(n_tiles):
        flagged = rng.random(rows) < 0.1
        ids = [f"t{t:03d}_{i:06d}" for i in range(rows)]
        if t == 0 and first_id is not None:
            ids[0], flagged[0] = first_id, False
        data = {"id_str": ids,
                "ra": 10.0 + t + 0.5 * rng.random(rows), "dec": -5.0 + 0.5 * rng.random(rows),
                "tile_id": [f"t{t:03d}"] * rows}
        for field in fields:
            values = (np.asarray(["disk", "elliptical"])[rng.integers(0, 2, rows)] if field.name == "predicted"
                      else rng.uniform(0.1, 50.0, rows).astype(np.float32))
            data[field.name] = pa.array(values, mask=flagged)
        data |= {"edge": pa.array(rng.random(rows) < 0.2), "nan_fraction": rng.random(rows).astype(np.float32),
                 "flag": pa.array(np.where(flagged, "nan_fraction 0.5 >= 0.2", None))}
        table = pa.table(data, schema=catalogue_schema(fields))
        counts = {"sources": rows, "scored": int((~flagged).sum()), "flagged": {"nan_fraction": int(flagged.sum())}}
        write_part(table, part_path(root, f"t{t:03d}"), {**settings.metadata(), "package": "/nowhere",
                                                           "release_path": "/nowhere", "code_version": "0.1.0",
                                                           "tile_id": f"t{t:03d}", "counts": json.dumps(counts)})
    write_summary_json(root, {"counts": {"sources": n_tiles * rows}})
    return root


@pytest.mark.parametrize(("task", "labels"), [("classification", ["disk", "elliptical"]), ("regression", ["mass"])])
def test_zoobot_csv_of_a_classifier_and_a_regressor(task, labels, tmp_path):
    catalogue = _synthetic_catalogue(tmp_path / "cat", 2, 50, task, first_id='gal,"7"')  # needs CSV quotes
    result = export_catalogue(catalogue, tmp_path / "predictions.csv", "zoobot-csv")
    expected = read_catalogue(catalogue)
    scored = expected.filter(pc.is_null(expected["flag"]))
    frame = pd.read_csv(tmp_path / "predictions.csv")
    assert result.n_rows == len(frame) == scored.num_rows and frame.columns.tolist() == [*labels, "id_str"]
    assert frame["id_str"].tolist() == scored["id_str"].to_pylist() and frame["id_str"][0] == 'gal,"7"'
    source = {"classification": "p_{}", "regression": "{}"}[task]
    for label in labels:
        np.testing.assert_array_equal(frame[label].to_numpy(np.float32), _floats(scored, source.format(label)))


# --- streaming ---

_PEAK = textwrap.dedent("""
    import sys
    from zoobot_pipeline.formats import export_catalogue
    partition_rows = int(sys.argv[4]) if sys.argv[3] == "hats" else None
    export_catalogue(sys.argv[1], sys.argv[2], sys.argv[3], partition_rows=partition_rows)
    # this process's peak RSS (ru_maxrss would count the parent's memory at fork too)
    print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
""")


@pytest.mark.parametrize("format_", ["fits", "zoobot-csv", "hats"])
def test_export_streams_peak_memory_does_not_grow_with_the_catalogue(format_, tmp_path):
    rows = 12_000
    peaks = {}
    for n_tiles in (2, 20):
        catalogue = _synthetic_catalogue(tmp_path / f"cat{n_tiles}", n_tiles, rows)
        out = tmp_path / f"out{n_tiles}"
        done = subprocess.run([sys.executable, "-c", _PEAK, str(catalogue), str(out), format_, str(rows)],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        peaks[n_tiles] = int(done.stdout.split()[-1]) * 1024  # VmHWM: KiB
    # the 18 extra tiles, held in memory at once, would be well over the 10% allowed
    extra = 18 * pq.read_table(part_files(tmp_path / "cat20")[0]).nbytes
    assert extra > 0.15 * peaks[2], (extra, peaks)
    assert peaks[20] <= 1.10 * peaks[2], peaks


# --- refusals and overwrite ---


def test_help_lists_the_formats_and_the_default_partition_size():
    shown = runner.invoke(app, ["catalogue", "export", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "|".join(FORMATS) in shown.output
    assert f"(default {PARTITION_ROWS})" in shown.output


def test_not_a_catalogue_or_an_unknown_format_is_one_line(catalogue, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "not a scored catalogue" in error_line(_invoke(tmp_path / "empty", "--format", "fits", "--out",
                                                           tmp_path / "a.fits"))
    assert "does not exist" in error_line(_invoke(tmp_path / "nowhere", "--format", "fits", "--out",
                                                  tmp_path / "a.fits"))
    line = error_line(_invoke(catalogue, "--format", "votable", "--out", tmp_path / "a.xml"))
    assert "unknown catalogue export format 'votable'" in line and "fits, hats, zoobot-csv" in line
    line = error_line(_invoke(catalogue, "--format", "fits", "--out", tmp_path / "a.fits", "--partition-rows", "9"))
    assert "--format hats" in line
    assert not (tmp_path / "a.fits").exists() and not (tmp_path / "a.xml").exists()


def test_incomplete_or_mixed_catalogues_are_refused(catalogue, tmp_path):
    incomplete = Path(shutil.copytree(catalogue, tmp_path / "incomplete"))
    (incomplete / "catalogue.json").unlink()
    assert "incomplete catalogue" in error_line(_invoke(incomplete, "--format", "fits", "--out", tmp_path / "a.fits"))

    mixed = Path(shutil.copytree(catalogue, tmp_path / "mixed"))
    part = part_files(mixed)[1]
    table = pq.read_table(part)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()} | {"seed": "7"}
    pq.write_table(table.replace_schema_metadata(metadata), part)
    line = error_line(_invoke(mixed, "--format", "zoobot-csv", "--out", tmp_path / "a.csv"))
    assert str(part) in line and "seed: '7' != '0'" in line

    missing = Path(shutil.copytree(catalogue, tmp_path / "missing"))
    part_files(missing)[0].unlink()
    assert "catalogue.json counts 64 sources but the part files hold 32" in error_line(
        _invoke(missing, "--format", "fits", "--out", tmp_path / "a.fits"))
    assert not any(p.name.startswith("a.") for p in tmp_path.iterdir())


def test_an_existing_out_is_kept_unless_overwrite(catalogue, tmp_path):
    out = tmp_path / "galaxies.fits"
    out.write_text("not ours")
    line = error_line(_invoke(catalogue, "--format", "fits", "--out", out))
    assert "exists" in line and "--overwrite" in line and out.read_text() == "not ours"
    assert _invoke(catalogue, "--format", "fits", "--out", out, "--overwrite").exit_code == 0
    assert len(Table.read(out, unit_parse_strict="silent")) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["galaxies.fits"]  # no temporary file left

    assert "is a directory" in error_line(_invoke(catalogue, "--format", "zoobot-csv", "--out", tmp_path,
                                                  "--overwrite"))
    before = tree(catalogue)
    line = error_line(_invoke(catalogue, "--format", "fits", "--out", catalogue / "inside.fits", "--overwrite"))
    assert "inside or around the catalogue" in line and tree(catalogue) == before


def test_hats_overwrite_replaces_only_the_catalogues_own_files(catalogue, tmp_path):
    out = tmp_path / "hats"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = error_line(_invoke(catalogue, "--format", "hats", "--out", out))
    assert "not empty" in line and [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "dataset").mkdir()
    (out / "dataset" / "stale.parquet").write_text("an older export")
    result = _invoke(catalogue, "--format", "hats", "--out", out, "--overwrite", "--partition-rows", "1000")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*HATS_ENTRIES, "notes.txt"])
    assert (out / "notes.txt").read_text() == "mine" and not (out / "dataset" / "stale.parquet").exists()
    assert "hats_nrows=64" in (out / "hats.properties").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["hats"]  # no temporary directory left
