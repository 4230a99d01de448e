"""Partitioned source catalogues (``sources.parquet`` as a directory of Parquet files): the same catalogue as the
single file, in process and on Ray Data (whose chunk descriptors carry no rows); resume; each bad file named; and
planning memory flat from 10^5 to 10^7 sources."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import ray
from test_scoring_support import assert_same_catalogue, make_package, make_release, truncate_tile

from zoobot_pipeline.catalogue import part_files, part_metadata, read_catalogue
from zoobot_pipeline.data.release import Release, ReleaseError, TileRows
from zoobot_pipeline.scoring import ray_data
from zoobot_pipeline.scoring.pipeline import score_release

CHUNK = 8  # several chunks per tile, so chunks cross partition files


def _hive_by_tile(table: pa.Table, out: Path) -> None:
    """``tile_id=.../part-0.parquet``: the tile id only in the folder names, rows in catalogue order."""
    ds.write_dataset(table, out, format="parquet", partitioning=["tile_id"], partitioning_flavor="hive",
                     preserve_order=True)


def _plain_parts(table: pa.Table, out: Path, n: int = 3) -> None:
    """``part-0.parquet`` ... : consecutive slices, so that a tile's rows span files."""
    out.mkdir()
    size = -(-table.num_rows // n)
    for i in range(n):
        pq.write_table(table.slice(i * size, size), out / f"part-{i}.parquet")
    (out / "_SUCCESS").write_text("")  # what Spark leaves: ignored


def _healpix_like(table: pa.Table, out: Path) -> None:
    """``Norder=0/Npix=k/part-0.parquet`` by a coarse sky cell (by ra, then dec): tiles span several files, which
    hold several tiles, and a tile's rows come in another order than in the single file."""
    cell = pc.add(pc.multiply(pc.cast(pc.floor(pc.multiply(pc.subtract(table["ra"], 149.0), 40)), pa.int64()), 10),
                  pc.cast(pc.floor(pc.multiply(pc.subtract(table["dec"], 1.0), 20)), pa.int64()))
    table = table.append_column("Npix", cell).append_column("Norder", pa.array([0] * table.num_rows))
    ds.write_dataset(table, out, format="parquet", partitioning=["Norder", "Npix"], partitioning_flavor="hive",
                     preserve_order=True)


LAYOUTS = {"hive-tile": _hive_by_tile, "plain-parts": _plain_parts, "healpix": _healpix_like}


def _files(sources: Path) -> list[Path]:
    return sorted(p for p in sources.rglob("*.parquet"))


def _partition(release: Path, dest: Path, layout: str) -> Path:
    """A copy of ``release`` whose sources.parquet is a directory written in ``layout``."""
    copy = Path(shutil.copytree(release, dest))
    table = pq.read_table(copy / "sources.parquet")
    (copy / "sources.parquet").unlink()
    LAYOUTS[layout](table, copy / "sources.parquet")
    return copy


def _single_file_in_release_order(partitioned: Path, dest: Path) -> Path:
    """A copy of a partitioned release with one sources.parquet: its files concatenated in path order (the release
    order of a partitioned catalogue), tile ids from the folder names where they are there."""
    copy = Path(shutil.copytree(partitioned, dest))
    parts = []
    for path in _files(copy / "sources.parquet"):
        part = pq.read_table(path)
        if "tile_id" not in part.column_names:
            tile = next(p.split("=", 1)[1] for p in path.parts if p.startswith("tile_id="))
            part = part.append_column("tile_id", pa.array([tile] * part.num_rows))
        parts.append(part.select(["id_str", "ra", "dec", "tile_id", "r50_arcsec"]))
    shutil.rmtree(copy / "sources.parquet")
    pq.write_table(pa.concat_tables(parts), copy / "sources.parquet")
    return copy


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A package, a release of four tiles (one truncated: its rows are flagged, not scored), and its catalogue."""
    root = tmp_path_factory.mktemp("partitioned")
    package = make_package(root / "model")
    release = make_release(root / "release", 64, 4, seed=5)
    truncate_tile(release / "tiles" / "tile_0003.fits")
    score_release(release, package, root / "single", chunk_size=CHUNK, progress=False)
    return package, release, root / "single"


def _catalogue(out: Path) -> pa.Table:
    """The catalogue, with the release's folder cut from the flags (``tile_failed: <path>: ...``)."""
    table = read_catalogue(out)
    release = json.loads((out / "catalogue.json").read_text())["release"]["path"]
    flags = [None if f is None else f.replace(release, "RELEASE") for f in table["flag"].to_pylist()]
    return table.set_column(table.schema.get_field_index("flag"), "flag", pa.array(flags, pa.string()))


def _assert_identical(actual: Path, expected: Path) -> None:
    """Same rows in the same order per tile, same values (to float32 rounding) and the same source digests."""
    assert [p.name for p in part_files(actual)] == [p.name for p in part_files(expected)]
    for a, e in zip(part_files(actual), part_files(expected), strict=True):
        assert pq.read_table(a)["id_str"].to_pylist() == pq.read_table(e)["id_str"].to_pylist()
        assert part_metadata(a)["sources_digest"] == part_metadata(e)["sources_digest"]
    assert_same_catalogue(_catalogue(actual), _catalogue(expected), rtol=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_partitioned_sources_give_the_same_catalogue_as_a_single_file(setup, tmp_path, layout):
    package, release, single = setup
    partitioned = _partition(release, tmp_path / "release", layout)
    if layout == "healpix":  # rows of a tile come in another order: the reference is that order in one file
        reference = _single_file_in_release_order(partitioned, tmp_path / "reference")
        single = tmp_path / "single"
        score_release(reference, package, single, chunk_size=CHUNK, progress=False)
    opened = Release.open(partitioned)
    assert opened.partitioned and opened.n_sources == 64
    files_per_tile = [len(opened.tile_rows(t).files) for t in opened.tile_ids]
    assert max(files_per_tile) == (1 if layout == "hive-tile" else 2 if layout == "plain-parts" else max(
        files_per_tile)) and (layout != "healpix" or max(files_per_tile) > 1)

    result = score_release(partitioned, package, tmp_path / "cat", chunk_size=CHUNK, progress=False)
    assert result.n_sources == 64 and result.tiles_scored == 4 and len(result.failures) == 1
    _assert_identical(tmp_path / "cat", single)


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Same columns, types and values, NaN equal to NaN (the simulated magnitudes have some)."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


def test_release_reads_a_partitioned_catalogue_like_the_single_file(setup, tmp_path):
    _, release, _ = setup
    single = Release.open(release)
    partitioned = Release.open(_partition(release, tmp_path / "release", "plain-parts"))
    assert partitioned.tile_ids == single.tile_ids
    assert partitioned.source_columns == single.source_columns
    for tile in single.tile_ids:
        assert partitioned.tile_count(tile) == single.tile_count(tile)
        assert _same(partitioned.tile_sources(tile), single.tile_sources(tile))
        rows = partitioned.tile_rows(tile, ["id_str", "ra"])
        assert _same(rows.slice(3, 5), single.tile_sources(tile).select(["id_str", "ra"]).slice(3, 5))
        assert TileRows.from_json(rows.to_json()) == rows
    assert _same(partitioned.sources, single.sources)  # the whole table, read on demand
    narrow = Release.open(tmp_path / "release", columns=["r50_arcsec", "nope"])
    assert narrow.source_columns == ["id_str", "ra", "dec", "tile_id", "r50_arcsec"]


def test_a_size_column_missing_from_some_files_reads_as_nulls(setup, tmp_path):
    """Rows of a file without r50_arcsec are cut at the fixed size, as rows with a NaN size in one file are."""
    package, release, _ = setup
    partitioned = _partition(release, tmp_path / "release", "plain-parts")
    middle = partitioned / "sources.parquet" / "part-1.parquet"
    pq.write_table(pq.read_table(middle).drop_columns(["r50_arcsec"]), middle)
    reference = _single_file_in_release_order(_partition(release, tmp_path / "nan", "plain-parts"), tmp_path / "ref")
    table = pq.read_table(reference / "sources.parquet")
    without = pc.is_in(table["id_str"], value_set=pq.read_table(middle)["id_str"])
    table = table.set_column(4, "r50_arcsec", pc.if_else(without, float("nan"), table["r50_arcsec"]))
    pq.write_table(table, reference / "sources.parquet")
    assert Release.open(partitioned).source_columns[:5] == ["id_str", "ra", "dec", "tile_id", "r50_arcsec"]
    score_release(reference, package, tmp_path / "expected", chunk_size=CHUNK, progress=False)
    score_release(partitioned, package, tmp_path / "cat", chunk_size=CHUNK, progress=False)
    _assert_identical(tmp_path / "cat", tmp_path / "expected")


def test_hive_tile_ids_are_text_and_decoded(tmp_path):
    table = pa.table({"id_str": ["a", "b", "c"], "ra": [1.0, 2.0, 3.0], "dec": [0.0, 0.0, 0.0],
                      "tile_id": ["007", "x y", "007"]})
    root = tmp_path / "release"
    _hive_by_tile(table, root / "sources.parquet")
    (root / "release.json").write_text(json.dumps({"name": "t", "survey": "s", "bands": ["g"],
                                                   "pixel_scale_arcsec": 1.0, "created": "2025"}))
    release = Release.open(root, allow_missing_tiles=True)
    assert release.tile_ids == ["007", "x y"]
    assert release.tile_sources("007")["id_str"].to_pylist() == ["a", "c"]
    assert release.tile_paths["x y"] == root / "tiles" / "x y.fits"


def test_resume_over_a_partitioned_release(setup, tmp_path):
    package, release, _ = setup
    partitioned = _partition(release, tmp_path / "release", "plain-parts")
    out = tmp_path / "cat"
    score_release(partitioned, package, out, chunk_size=CHUNK, progress=False)
    created = {p.name: part_metadata(p)["created"] for p in part_files(out)}
    part_files(out)[0].unlink()  # a run killed before this tile
    again = score_release(partitioned, package, out, chunk_size=CHUNK, progress=False)
    assert (again.tiles_scored, again.tiles_skipped) == (2, 2)  # the missing tile, and the failed one again
    kept = {p.name: part_metadata(p)["created"] for p in part_files(out)}
    assert all(kept[name] == created[name] for name in list(created)[1:3])

    # a source dropped from one file: that tile's digest changes, it alone is scored again
    last = _files(partitioned / "sources.parquet")[-1]
    table = pq.read_table(last)
    dropped_tile = table["tile_id"][0].as_py()
    pq.write_table(table.slice(1), last)
    third = score_release(partitioned, package, out, chunk_size=CHUNK, progress=False)
    assert third.n_sources == 63 and third.tiles_scored == 1 + (dropped_tile != "tile_0003")
    score_release(partitioned, package, tmp_path / "fresh", chunk_size=CHUNK, progress=False)
    _assert_identical(out, tmp_path / "fresh")


def _write_release(root: Path, files: dict[str, pa.Table]) -> Path:
    for name, table in files.items():
        (root / "sources.parquet" / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "sources.parquet" / name)
    (root / "release.json").write_text(json.dumps({"name": "t", "survey": "s", "bands": ["g", "r", "z"],
                                                   "pixel_scale_arcsec": 1.0, "created": "2025"}))
    return root


def _sources(ids: list[str], tile: str = "t0", **columns: list) -> pa.Table:
    base = {"id_str": ids, "ra": [10.0] * len(ids), "dec": [1.0] * len(ids), "tile_id": [tile] * len(ids)}
    return pa.table({**base, **columns})


@pytest.mark.parametrize(("bad", "pattern"), [
    (_sources(["c", " "]), r"column 'id_str' is empty or blank in 1 row\(s\): row 1 \(id_str ' '\)"),
    (_sources(["c", "d"], ra=[10.0, 360.0]), r"column 'ra' has 1 value\(s\) outside \[0, 360\).*row 1 \(id_str 'd'\)"),
    (_sources(["c", "c"]), r"1 duplicate id_str value\(s\), e\.g\. c: 'c' is at row 0 \(tile 't0'\) and row 1"),
    (_sources(["c", "d"], tile="../t"), r"'tile_id'.*not plain names.*'\.\./t'"),
    (_sources(["c"]).drop_columns(["dec"]), r"missing required column\(s\) dec"),
], ids=["blank-id", "ra-360", "duplicate-in-file", "tile-dotdot", "no-dec"])
def test_a_bad_partition_file_is_named_with_its_rows(tmp_path, bad, pattern):
    release = _write_release(tmp_path / "release", {"a=1/part-0.parquet": _sources(["a", "b"]),
                                                    "a=2/part-0.parquet": bad})
    with pytest.raises(ReleaseError, match=pattern) as err:
        Release.open(release, allow_missing_tiles=True)
    assert str(release / "sources.parquet" / "a=2" / "part-0.parquet") in str(err.value)


def test_unreadable_and_empty_partitions(tmp_path):
    release = _write_release(tmp_path / "release", {"part-0.parquet": _sources(["a"])})
    (release / "sources.parquet" / "part-1.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ReleaseError, match="cannot read this file of the source catalogue") as err:
        Release.open(release, allow_missing_tiles=True)
    assert str(release / "sources.parquet" / "part-1.parquet") in str(err.value)

    (release / "sources.parquet" / "part-1.parquet").unlink()
    pq.write_table(_sources(["a"]).slice(0, 0), release / "sources.parquet" / "part-0.parquet")
    with pytest.raises(ReleaseError, match=r"no rows in any of its 1 file"):
        Release.open(release, allow_missing_tiles=True)
    (release / "sources.parquet" / "part-0.parquet").unlink()
    with pytest.raises(ReleaseError, match=r"is a directory without Parquet files"):
        Release.open(release, allow_missing_tiles=True)


def test_an_id_in_two_files_of_one_tile_is_refused_when_the_tile_is_read(setup, tmp_path):
    package, release, _ = setup
    release = _write_release(tmp_path / "release", {"part-0.parquet": _sources(["a", "b"]),
                                                    "part-1.parquet": _sources(["c", "a"])})
    opened = Release.open(release, allow_missing_tiles=True)  # each file alone is fine
    with pytest.raises(ReleaseError, match=r"tile 't0' has 1 id_str value\(s\) in more than one row.*'a'") as err:
        opened.tile_sources("t0")
    assert str(release / "sources.parquet" / "part-1.parquet") in str(err.value)
    with pytest.raises(ReleaseError, match=r"duplicate id_str"):
        opened.sources  # noqa: B018 - the whole-table read checks uniqueness across files
    pq.write_table(_sources(["x"], tile="t1"), release / "sources.parquet" / "part-2.parquet")
    with pytest.raises(ReleaseError, match=r"tile 't0' has 1 id_str value\(s\) in more than one row"):
        score_release(release, package, tmp_path / "cat", chunk_size=CHUNK, progress=False)
    assert [part_metadata(p)["tile_id"] for p in part_files(tmp_path / "cat")] == []  # t0 comes first: nothing


@pytest.fixture
def recorded_items(monkeypatch):
    """Every list of items the Ray path hands to ``ray.data.from_items``."""
    calls: list[list[dict]] = []
    original = ray.data.from_items

    def record(items, **kwargs):
        calls.append(list(items))
        return original(items, **kwargs)

    monkeypatch.setattr(ray.data, "from_items", record)
    return calls


def test_ray_path_streams_descriptors_without_rows(setup, local_ray, tmp_path, monkeypatch, recorded_items):
    package, release, _ = setup
    partitioned = _partition(release, tmp_path / "release", "healpix")
    score_release(partitioned, package, tmp_path / "local", chunk_size=CHUNK, progress=False)
    monkeypatch.setattr(ray_data, "CHUNKS_PER_DATASET", 3)
    result = score_release(partitioned, package, tmp_path / "ray", chunk_size=CHUNK, use_ray=True, progress=False)
    assert result.executor == "ray" and result.n_sources == 64
    _assert_identical(tmp_path / "ray", tmp_path / "local")

    opened = Release.open(partitioned)
    n_chunks = sum(-(-opened.tile_count(t) // CHUNK) for t in opened.tile_ids)
    assert [len(items) for items in recorded_items] == [3] * (n_chunks // 3) + ([n_chunks % 3] if n_chunks % 3 else [])
    ids = set(opened.sources["id_str"].to_pylist())
    for item in (item for items in recorded_items for item in items):
        assert set(item) == {"tile_id", "path", "chunk", "n_chunks", "rows", "offset", "length"}
        assert not any(isinstance(value, bytes) for value in item.values())
        assert not any(id_str in item["rows"] for id_str in ids)  # where the rows are, not the rows
        rows = TileRows.from_json(item["rows"])
        assert rows.slice(item["offset"], item["length"]).num_rows == min(
            CHUNK, opened.tile_count(item["tile_id"]) - item["chunk"] * CHUNK)
        # only the files this chunk reads: its first rows are in the first, its last in the last
        assert item["offset"] < rows.counts[0] and sum(rows.counts[:-1]) < item["offset"] + item["length"]


# -------------------------------------------------------------------------------------------------- planning memory

_MEASURE = """
import json, sys, tracemalloc
import pyarrow as pa
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.scoring.pipeline import plan_jobs
tracemalloc.start()
release = Release.open(sys.argv[1], allow_missing_tiles=True, columns=["r50_arcsec"])
jobs, skipped = plan_jobs(release, ["id_str", "ra", "dec", "tile_id", "r50_arcsec"], {})
python_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"python": python_peak, "arrow": pa.default_memory_pool().max_memory(),
                  "rows": sum(job.sources.num_rows for job in jobs), "jobs": len(jobs),
                  "held": sum(isinstance(job.sources, pa.Table) for job in jobs)}))
"""

ROWS_PER_FILE = 100_000
TILES = 20


def _big_release(root: Path, n_rows: int) -> Path:
    """``n_rows`` sources (metadata only: no tile has a file) in files of 10^5 rows, each holding every tile."""
    rng = np.random.default_rng(0)
    tiles = pa.array([f"tile_{i:04d}" for i in range(TILES)]).take(pa.array(np.arange(ROWS_PER_FILE) % TILES))
    (root / "sources.parquet").mkdir(parents=True)
    for start in range(0, n_rows, ROWS_PER_FILE):
        table = pa.table({"id_str": pc.cast(pa.array(np.arange(start, start + ROWS_PER_FILE)), pa.string()),
                          "ra": rng.uniform(0, 360, ROWS_PER_FILE), "dec": rng.uniform(-90, 90, ROWS_PER_FILE),
                          "tile_id": tiles, "r50_arcsec": np.full(ROWS_PER_FILE, 2.0)})
        pq.write_table(table, root / "sources.parquet" / f"part-{start // ROWS_PER_FILE:05d}.parquet",
                       use_dictionary=["tile_id"], compression="none")  # fast to write: 10^7 rows in seconds
    (root / "release.json").write_text(json.dumps({"name": "big", "survey": "s", "bands": ["g"],
                                                   "pixel_scale_arcsec": 1.0, "created": "2025"}))
    return root


def _planning_peak(release: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(release)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_planning_memory_is_flat_from_1e5_to_1e7_sources(tmp_path):
    small = _planning_peak(_big_release(tmp_path / "small", ROWS_PER_FILE))
    large = _planning_peak(_big_release(tmp_path / "large", 100 * ROWS_PER_FILE))
    assert (small["rows"], large["rows"]) == (10**5, 10**7)
    assert small["jobs"] == large["jobs"] == TILES and small["held"] == large["held"] == 0
    ratio = (large["python"] + large["arrow"]) / (small["python"] + small["arrow"])
    # the whole table would be ~100 times the small release's; a file at a time keeps the peak of one file
    assert ratio <= 1.10, (small, large)
