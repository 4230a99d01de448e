from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from conftest import TINY_BANDS, tiny_wcs, write_mef_tile
from PIL import Image

from zoobot_pipeline.data.release import (
    ImageCatalogue,
    Release,
    ReleaseError,
    load_cutout_file,
    open_release,
)
from zoobot_pipeline.io import read_table


def test_open_reads_metadata_and_groups_sources_by_tile(tiny_release):
    release = Release.open(tiny_release.path)
    assert release.bands == TINY_BANDS
    assert release.info.pixel_scale_arcsec == 1.0
    assert release.tile_ids == ["t0", "t1"]
    seen = {}
    tiles = []
    for tile, sources in release.iter_tiles():
        tiles.append(tile)
        assert tile.images and len(tile.images) == 3
        assert tile.shape == (100, 120)
        assert all(w.has_celestial for w in tile.wcs)
        seen[tile.tile_id] = sources["id_str"].to_pylist()
    assert seen == {"t0": ["centre", "offcentre", "edge", "off"], "t1": ["t1-centre"]}  # catalogue order kept
    assert all(tile.images == [] for tile in tiles), "tiles must be closed after iteration"


def test_tiles_are_memory_mapped(tiny_release):
    release = Release.open(tiny_release.path)
    with release.open_tile("t0") as tile:
        base = tile.images[0]
        while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
            base = base.base
        assert isinstance(base, np.memmap | mmap.mmap)
    with release.open_tile("t1") as tile:  # one file per band
        assert tile.images[2].shape == (100, 120)


def test_open_release_dispatches(tiny_release):
    assert isinstance(open_release(tiny_release.path), Release)


def test_missing_release_json(tmp_path):
    with pytest.raises(ReleaseError, match=r"release\.json.*not found"):
        Release.open(tmp_path)


def test_bad_json_names_file(tiny_release):
    (tiny_release.path / "release.json").write_text("{not json")
    with pytest.raises(ReleaseError, match=r"release\.json: invalid JSON"):
        Release.open(tiny_release.path)


def test_metadata_missing_field_names_field(tiny_release):
    (tiny_release.path / "release.json").write_text(json.dumps({"name": "x", "survey": "y", "created": "z"}))
    with pytest.raises(
        ReleaseError,
        match=r"release\.json: invalid release metadata \(bands: Field required; pixel_scale_arcsec: Field required",
    ):
        Release.open(tiny_release.path)


def _rewrite_sources(tiny_release, transform):
    path = tiny_release.path / "sources.parquet"
    pq.write_table(transform(pq.read_table(path)), path)


def test_sources_are_grouped_by_tile_and_only_the_asked_columns_are_read(tiny_release):
    interleaved = [3, 4, 0, 1, 2]  # tiles t0, t1, t0, t0, t0
    _rewrite_sources(tiny_release, lambda t: t.take(interleaved).append_column(
        "mag_r", pa.array(np.arange(5.0))))
    original = pq.read_table(tiny_release.path / "sources.parquet")
    release = Release.open(tiny_release.path)
    assert release.sources["tile_id"].to_pylist() == sorted(original["tile_id"].to_pylist())
    for tile_id in release.tile_ids:  # within a tile: catalogue order
        expected = [i for i, t in zip(original["id_str"].to_pylist(), original["tile_id"].to_pylist(), strict=True)
                    if t == tile_id]
        assert release.tile_sources(tile_id)["id_str"].to_pylist() == expected
    assert release.sources.column_names == original.column_names
    narrow = Release.open(tiny_release.path, columns=["r50_arcsec", "not_in_the_file"])
    assert narrow.sources.column_names == ["id_str", "ra", "dec", "tile_id", "r50_arcsec"]
    assert narrow.sources["id_str"].equals(release.sources["id_str"])
    pacsv.write_csv(original, tiny_release.path / "sources.csv")
    csv = read_table(tiny_release.path / "sources.csv", columns=["ra", "mag_r", "nope"])
    assert csv.column_names == ["ra", "mag_r"]


def test_missing_columns_are_named(tiny_release):
    _rewrite_sources(tiny_release, lambda t: t.drop_columns(["dec", "tile_id"]))
    with pytest.raises(ReleaseError, match=r"sources\.parquet: missing required column\(s\) dec, tile_id"):
        Release.open(tiny_release.path)


def test_null_values_in_required_columns_are_named(tiny_release):
    _rewrite_sources(tiny_release, lambda t: t.set_column(2, "dec", pa.array([1.0, None, 2.0, 3.0, 4.0])))
    with pytest.raises(ReleaseError, match=r"sources\.parquet: null values in required column\(s\) dec"):
        Release.open(tiny_release.path)


def test_duplicate_id_str_is_named(tiny_release):
    def duplicate(table: pa.Table) -> pa.Table:
        ids = table["id_str"].to_pylist()
        ids[1] = ids[0]
        return table.set_column(0, "id_str", pa.array(ids))

    _rewrite_sources(tiny_release, duplicate)
    with pytest.raises(ReleaseError, match=r"sources\.parquet: 1 duplicate id_str value\(s\), e\.g\. centre"):
        Release.open(tiny_release.path)


def test_source_tile_without_file_names_tile(tiny_release):
    _rewrite_sources(tiny_release, lambda t: t.set_column(3, "tile_id", pa.array(["t0", "t0", "t0", "t0", "t9"])))
    with pytest.raises(ReleaseError, match=r"sources\.parquet: tile 't9'"):
        Release.open(tiny_release.path)


def test_listed_tiles_must_exist_and_mapping_overrides_discovery(tiny_release):
    meta_path = tiny_release.path / "release.json"
    meta = json.loads(meta_path.read_text())
    meta["tiles"] = ["t0", "t1", "t2"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match=r"release\.json: tile 't2' is listed"):
        Release.open(tiny_release.path)
    (tiny_release.path / "tiles" / "t0.fits").rename(tiny_release.path / "elsewhere.fits")
    meta["tiles"] = {"t0": "elsewhere.fits", "t1": "tiles/t1"}
    meta_path.write_text(json.dumps(meta))
    release = Release.open(tiny_release.path)
    assert release.tile_paths["t0"] == tiny_release.path / "elsewhere.fits"
    with release.open_tile("t0") as tile:
        assert len(tile.images) == 3


def test_tile_without_wcs(tiny_release):
    write_mef_tile(tiny_release.path / "tiles" / "t0.fits", None, [(60.0, 50.0)])
    release = Release.open(tiny_release.path)
    with pytest.raises(ReleaseError, match=r"t0\.fits\[g\]: image has no celestial WCS"):
        release.open_tile("t0")


def test_truncated_fits(tiny_release):
    path = tiny_release.path / "tiles" / "t0.fits"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20000])
    release = Release.open(tiny_release.path)
    with pytest.raises(ReleaseError, match=r"t0\.fits.*truncated"):
        release.open_tile("t0")


def test_garbage_fits(tiny_release):
    (tiny_release.path / "tiles" / "t1" / "r.fits").write_bytes(b"this is not a FITS file" * 10)
    release = Release.open(tiny_release.path)
    with pytest.raises(ReleaseError, match=r"r\.fits: not a readable FITS file"):
        release.open_tile("t1")


def test_missing_band_in_mef_tile(tiny_release):
    write_mef_tile(tiny_release.path / "tiles" / "t0.fits", tiny_wcs(), [(60.0, 50.0)], bands=("g", "r"))
    release = Release.open(tiny_release.path)
    with pytest.raises(ReleaseError, match=r"t0\.fits: band 'z' missing"):
        release.open_tile("t0")


def test_missing_band_file_in_per_band_tile(tiny_release):
    (tiny_release.path / "tiles" / "t1" / "z.fits").unlink()
    release = Release.open(tiny_release.path)
    with pytest.raises(ReleaseError, match=r"t1/z\.fits: band 'z' missing for tile 't1'"):
        release.open_tile("t1")


# Image catalogue (Zoobot convention)


def _write_cutout_files(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    fits_data = rng.normal(size=(3, 16, 16)).astype(">f4")
    fits.PrimaryHDU(fits_data).writeto(folder / "a.fits")
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "b.png")
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(folder / "c.jpg", quality=95)
    return {"a": fits_data.astype(np.float32), "b": rgb.transpose(2, 0, 1) / 255.0}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_image_catalogue_loads_fits_png_jpg(tmp_path, suffix):
    truth = _write_cutout_files(tmp_path / "images")
    table = pa.table({"id_str": ["a", "b", "c"], "file_loc": ["images/a.fits", "images/b.png", "images/c.jpg"]})
    path = tmp_path / f"catalogue{suffix}"
    pacsv.write_csv(table, path) if suffix == ".csv" else pq.write_table(table, path)
    catalogue = open_release(path)
    assert isinstance(catalogue, ImageCatalogue) and len(catalogue) == 3
    a, b, c = (catalogue.load(i) for i in range(3))
    assert a.dtype == np.float32 and a.dtype.isnative and a.shape == (3, 16, 16)
    np.testing.assert_array_equal(a, truth["a"])
    assert b.shape == (3, 16, 16)
    np.testing.assert_allclose(b, truth["b"], atol=1e-6)
    assert c.shape == (3, 16, 16) and abs(float(c.mean()) - 200 / 255) < 0.02
    batches = list(catalogue.iter_batches(batch_size=2))
    assert [rows.num_rows for rows, _ in batches] == [2, 1]
    assert [x.shape for x in batches[0][1]] == [(3, 16, 16), (3, 16, 16)]


def test_image_catalogue_errors_name_file_and_column(tmp_path):
    path = tmp_path / "cat.csv"
    pacsv.write_csv(pa.table({"id_str": ["a"], "path": ["x.png"]}), path)
    with pytest.raises(ReleaseError, match=r"cat\.csv: missing required column\(s\) file_loc"):
        ImageCatalogue.open(path)
    pacsv.write_csv(pa.table({"id_str": ["a"], "file_loc": ["nowhere.png"]}), path)
    with pytest.raises(ReleaseError, match=r"cat\.csv: 1 file_loc path\(s\) do not exist.*nowhere\.png"):
        ImageCatalogue.open(path)


def test_load_cutout_file_rejects_unknown_type(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with pytest.raises(ReleaseError, match=r"x\.txt: unsupported cutout type"):
        load_cutout_file(path)
