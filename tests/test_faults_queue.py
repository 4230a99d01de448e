"""Fault catalogue for the queue and its manifest (issue 17): a rank run killed at its most dangerous moment, file
names made from ids (``render`` and the manifest), a manifest asked of another release, spreadsheet formulas in
``manifest.csv`` and image sizes and counts out of range.

Each case checks the exit code (or the library error), that the message names the culprit, and where files are
involved that nothing outside the target directory changed (a listing with sizes and mtimes) and nothing was lost.
"""

from __future__ import annotations

import csv
import json
import select
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_active_ranking import META, catalogue_table, write_catalogue
from typer.testing import CliRunner

from zoobot_pipeline.active.manifest import escape_cell, read_manifest, unescape_cell, write_manifest
from zoobot_pipeline.active.ranking import QUEUE_FILE, RANK_METADATA_KEY, rank_catalogue, rank_settings
from zoobot_pipeline.catalogue import sources_digest
from zoobot_pipeline.cli import app
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import safe_file_name

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def listing(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (except under ``skip``) with its size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or not p.is_relative_to(skip))}


def error_line(result) -> str:
    """The one ``error:`` line of a user error (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return " ".join(lines[0].split())


# --- rank killed between recording its run and writing queue.parquet -------------------------------------------------

# The child ranks into a queue with its first Parquet write (the first of the run's two) paused, so that the parent can
# SIGKILL it there: "inside" pauses while the first file is only a temporary file beside its destination, "between"
# pauses after the first file is in place and before the second is written.
CHILD = r"""
import sys, time
import pyarrow.parquet as pq
from zoobot_pipeline.active import ranking
from zoobot_pipeline.io import atomic_path

catalogue, queue, stage, run_key = sys.argv[1:5]
real = ranking.write_parquet_atomic

def pause():
    print("paused", flush=True)
    time.sleep(600)

def first_write(table, destination, **kwargs):
    ranking.write_parquet_atomic = real
    if stage == "inside":
        with atomic_path(destination) as tmp:
            pq.write_table(table, tmp)
            pause()
    real(table, destination, **kwargs)
    pause()

ranking.write_parquet_atomic = first_write
ranking.rank_catalogue(catalogue, 12, queue_dir=queue, run_key=run_key or None, batch_size=8)
"""


def kill_while_ranking(catalogue: Path, queue: Path, stage: str, run_key: str = "") -> None:
    """Run a rank in a child process and SIGKILL it at ``stage`` of its two writes."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(catalogue), str(queue), stage, run_key],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline() if ready else ""
        assert line.strip() == "paused", child.stderr.read() if child.poll() is not None else "child not paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


def history(queue: Path) -> list[list[str]]:
    """The galaxies of each run file, oldest first."""
    return [pq.read_table(p)["id_str"].to_pylist() for p in sorted((queue / "runs").glob("*.parquet"))]


@pytest.fixture(scope="module")
def ranked(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """A catalogue and the queues of three uninterrupted runs of 12 on it (the reference)."""
    root = tmp_path_factory.mktemp("rank")
    write_catalogue(root / "cat", n_files=3, rows=20)
    runs = [rank_catalogue(root / "cat", 12, queue_dir=root / "reference", batch_size=8)["id_str"].to_pylist()
            for _ in range(3)]
    return root / "cat", runs


@pytest.mark.parametrize("stage", ["inside", "between"])
def test_a_rank_killed_during_its_writes_is_all_or_nothing_and_the_rerun_matches(ranked, tmp_path, stage):
    catalogue, reference = ranked
    queue = tmp_path / "queue"
    assert rank_catalogue(catalogue, 12, queue_dir=queue, batch_size=8)["id_str"].to_pylist() == reference[0]
    kill_while_ranking(catalogue, queue, stage)

    # right after the kill: every galaxy recorded as queued (what the next rank skips) is in a queue that
    # queue.parquet showed (the first run's, or the killed run's once it committed)
    shown = pq.read_table(queue / QUEUE_FILE)["id_str"].to_pylist()
    recorded = {i for run in history(queue) for i in run}
    assert recorded <= set(reference[0]) | set(shown)
    assert shown == (reference[0] if stage == "inside" else reference[1])

    rerun = rank_catalogue(catalogue, 12, queue_dir=queue, batch_size=8)["id_str"].to_pylist()
    if stage == "inside":  # nothing was committed: the rerun queues what the killed run would have
        assert rerun == reference[1] and history(queue) == reference[:2]
    else:  # the killed run had committed: the rerun completed its run file, then queued the next galaxies
        assert rerun == reference[2] and history(queue) == reference
    latest = sorted((queue / "runs").glob("*.parquet"))[-1]
    assert pq.read_table(queue / QUEUE_FILE).equals(pq.read_table(latest))
    assert not list(queue.rglob(".tmp-*"))  # the killed run's temporary files are gone


def test_a_rank_killed_after_its_commit_under_a_run_key_returns_that_queue(ranked, tmp_path):
    catalogue, reference = ranked
    queue = tmp_path / "queue"
    rank_catalogue(catalogue, 12, queue_dir=queue, batch_size=8)
    kill_while_ranking(catalogue, queue, "between", run_key="week-2")
    again = rank_catalogue(catalogue, 12, queue_dir=queue, run_key="week-2", batch_size=8)
    assert again["id_str"].to_pylist() == reference[1] and history(queue) == reference[:2]
    assert pq.read_table(queue / QUEUE_FILE).equals(again)


# --- file names from ids: render and the manifest ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A release whose first sources have ids that are paths, formulas, too long for a file name, and so on."""
    root = tmp_path_factory.mktemp("hostile")
    release = simulate_release(root / "release", 24, 2, tile_size=384, seed=4, name="hostile")
    (root / "outside").mkdir()
    ids = ["../../escaped", str(root / "outside" / "victim"), '=HYPERLINK("http://evil.example","x")', "g" * 300,
           "@SUM(A1:A2)", "+1+2", "-2+3", "'quoted", "\ttabbed", ".hidden"]
    sources = pq.read_table(release / "sources.parquet")
    renamed = dict(zip(sources["id_str"].to_pylist(), ids, strict=False))
    for name in ("sources.parquet", "votes.parquet"):
        table = pq.read_table(release / name)
        column = [renamed.get(i, i) for i in table["id_str"].to_pylist()]
        pq.write_table(table.set_column(table.column_names.index("id_str"), "id_str", pa.array(column)), release / name)
    return root, release, ids


def test_render_writes_every_image_inside_out_under_a_safe_bounded_name(hostile, tmp_path):
    root, release, ids = hostile
    out = tmp_path / "a" / "b" / "png"
    before_root, before_tmp = listing(root), listing(tmp_path)
    args = ["render", str(release), "--out", str(out), "--size", "64"]
    for id_str in ids:
        args += ["--id", id_str]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert listing(root) == before_root and listing(tmp_path, skip=out) == before_tmp  # nothing written elsewhere
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(safe_file_name(i, ".png") for i in ids) and len(set(names)) == len(ids)
    assert all(len(name.encode()) <= 255 and not name.startswith(".") for name in names)
    with Image.open(out / safe_file_name(ids[0], ".png")) as image:
        assert image.size == (64, 64)


def hostile_queue(root: Path, release: Path, ids: list[str], queue: Path) -> pa.Table:
    """Every source of the release ranked into ``queue``, with negative declinations in the catalogue."""
    sources = pq.read_table(release / "sources.parquet")
    table = catalogue_table(sources["id_str"].to_pylist(), sources["tile_id"].to_pylist(), seed=1,
                            meta={**META, "release": "hostile"})
    dec = pa.array([-abs(d) - 1.5 for d in sources["dec"].to_pylist()])
    table = table.set_column(1, "ra", sources["ra"]).set_column(2, "dec", dec)
    pq.write_table(table, root / "catalogue.parquet")
    return rank_catalogue(root / "catalogue.parquet", sources.num_rows, queue_dir=queue)


def test_manifest_images_stay_inside_and_formula_cells_are_escaped(hostile, tmp_path):
    root, release, ids = hostile
    queue = hostile_queue(tmp_path, release, ids, tmp_path / "queue")
    out = tmp_path / "manifest"
    before_root, before_tmp = listing(root), listing(tmp_path)
    result = runner.invoke(app, ["queue", "manifest", "--queue", str(tmp_path / "queue"), "--release", str(release),
                                 "--out", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    assert listing(root) == before_root and listing(tmp_path, skip=out) == before_tmp

    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == queue.num_rows
    by_id = {unescape_cell(row["#id_str"]): row for row in rows}
    assert set(by_id) == set(queue["id_str"].to_pylist())
    for id_str in ids:
        row = by_id[id_str]
        assert row["image_1"] == safe_file_name(id_str, ".png") and (out / row["image_1"]).is_file()
        if id_str[0] in "=+-@\t'":
            assert row["#id_str"] == "'" + id_str  # OWASP: a leading ' so no spreadsheet runs it
        else:
            assert row["#id_str"] == id_str
    for row in rows:
        assert not row["#dec"].startswith("'") and float(row["#dec"]) < 0  # numbers are written as numbers
    assert sorted(p.name for p in out.iterdir()) == sorted([*(r["image_1"] for r in rows), "manifest.csv"])
    # what is uploaded to Zooniverse is the queued metadata itself
    read = {row.id_str: row for row in read_manifest(out)}
    assert set(read) == set(queue["id_str"].to_pylist())
    assert read[ids[2]].metadata["#release"] == "hostile" and read[ids[2]].metadata["#dec"] < 0


def test_escape_cell_round_trips_and_leaves_plain_text():
    for text in ("=1+1", "+1", "-1", "@x", "\tx", "\rx", "'x", "''x"):
        assert escape_cell(text) == "'" + text and unescape_cell(escape_cell(text)) == text
    for text in ("syn_000001", "bar-dr5", "", "a=b", "x-1"):
        assert escape_cell(text) == text and unescape_cell(text) == text


def test_a_manifest_image_outside_its_directory_is_refused(hostile, tmp_path):
    root, release, _ = hostile
    out = tmp_path / "manifest"
    out.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(secret)
    (out / "manifest.csv").write_text("image_1,#priority,#id_str,#ra,#dec,#acquisition,#top_question,#model,#release\n"
                                      "../secret.png,1,a,1.0,2.0,0.5,q,m,r\n")
    with pytest.raises(ZoobotPipelineError, match=r"manifest.csv: line 2: image_1: path '../secret.png' is not inside"):
        read_manifest(out)


# --- a queue and a release that do not belong together ---------------------------------------------------------------

@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    """dr-a; dr-b (another name, the same ids); dr-a again under the same name but with other sources per tile."""
    root = tmp_path_factory.mktemp("releases")
    return {"a": simulate_release(root / "dr-a", 24, 2, tile_size=384, seed=1, name="dr-a"),
            "b": simulate_release(root / "dr-b", 24, 2, tile_size=384, seed=2, name="dr-b"),
            "a2": simulate_release(root / "dr-a-again", 26, 2, tile_size=384, seed=3, name="dr-a")}


def scored_queue(release: Path, root: Path) -> Path:
    """A queue of 6 ranked from a catalogue laid out as scoring writes it: one part file per tile, whose metadata
    records the release name and the digest of the tile's source ids (scoring's own function)."""

    opened = Release.open(release)
    for tile_id in opened.tile_ids:
        sources = opened.tile_sources(tile_id)
        table = catalogue_table(sources["id_str"].to_pylist(), sources["tile_id"].to_pylist(), seed=2)
        table = table.set_column(1, "ra", sources["ra"]).set_column(2, "dec", sources["dec"])
        digest = sources_digest(sources["id_str"].to_pylist())
        meta = {**META, "release": opened.info.name, "tile_id": tile_id, "sources_digest": digest}
        (root / "catalogue" / "tiles").mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), root / "catalogue" / "tiles" / f"{tile_id}.parquet")
    rank_catalogue(root / "catalogue", 6, queue_dir=root / "queue")
    return root / "queue"


def test_queue_manifest_refuses_a_release_the_queue_was_not_ranked_from(releases, tmp_path):
    queue = scored_queue(releases["a"], tmp_path)
    out = tmp_path / "manifest"
    before = listing(tmp_path)
    line = error_line(runner.invoke(app, ["queue", "manifest", "--queue", str(queue), "--release",
                                          str(releases["b"]), "--out", str(out)]))
    assert "'dr-a'" in line and "'dr-b'" in line and str(releases["b"]) in line
    line = error_line(runner.invoke(app, ["queue", "manifest", "--queue", str(queue), "--release",
                                          str(releases["a2"]), "--out", str(out)]))
    assert "tile_0000" in line and "not those the queue was scored from" in line and str(releases["a2"]) in line
    assert listing(tmp_path) == before and not out.exists()  # nothing written

    # the queue records the release name and the digests of its tiles' sources, as scoring computed them
    table = pq.read_table(queue / QUEUE_FILE)
    settings = rank_settings(table)
    opened = Release.open(releases["a"])
    assert settings["release"] == "dr-a" and settings["sources_digests"] == {
        tile: sources_digest(opened.tile_sources(tile)["id_str"].to_pylist())
        for tile in sorted(set(table["tile_id"].to_pylist()))}

    # a queue of an earlier version (no digests recorded): the release name is still checked
    settings.pop("sources_digests")
    old = table.replace_schema_metadata({RANK_METADATA_KEY: json.dumps(settings)})
    with pytest.raises(ZoobotPipelineError, match="ranked from release 'dr-a', but .* is release 'dr-b'"):
        write_manifest(old, releases["b"], out)

    result = runner.invoke(app, ["queue", "manifest", "--queue", str(queue), "--release", str(releases["a"]),
                                 "--out", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 6


# --- sizes and counts out of range ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "option"), [
    (["--size", "0"], "--size 0"), (["--size", "100000"], "--size 100000"), (["--size", "-5"], "--size -5"),
    (["--limit", "0"], "--limit 0"), (["--limit", "-1"], "--limit -1"),
])
def test_render_refuses_sizes_and_limits_out_of_range(releases, tmp_path, args, option):
    out = tmp_path / "png"
    line = error_line(runner.invoke(app, ["render", str(releases["a"]), "--out", str(out), *args]))
    assert option in line
    assert not out.exists()


@pytest.mark.parametrize("size", ["0", "15", "4097", "100000"])
def test_queue_manifest_refuses_sizes_out_of_range(releases, tmp_path, size):
    queue = scored_queue(releases["a"], tmp_path)
    out = tmp_path / "manifest"
    line = error_line(runner.invoke(app, ["queue", "manifest", "--queue", str(queue), "--release",
                                          str(releases["a"]), "--out", str(out), "--size", size]))
    assert f"--size {size}" in line and "16 to 4096" in line
    assert not out.exists()
    with pytest.raises(ZoobotPipelineError, match=f"size {size}: the image side must be 16 to 4096"):
        write_manifest(queue, releases["a"], out, size=int(size))


def test_an_out_that_is_a_file_is_refused_and_kept(releases, tmp_path):
    queue = scored_queue(releases["a"], tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("the user's notes\n")
    line = error_line(runner.invoke(app, ["render", str(releases["a"]), "--out", str(taken)]))
    assert str(taken) in line and "not a directory" in line
    line = error_line(runner.invoke(app, ["queue", "manifest", "--queue", str(queue), "--release",
                                          str(releases["a"]), "--out", str(taken)]))
    assert str(taken) in line and "not a directory" in line
    assert taken.read_text() == "the user's notes\n"


def test_a_rank_cleans_only_the_temporary_files_of_queue_files(ranked, tmp_path):
    """Stale temporary files of the queue's own files are cleaned, no other ``.tmp-*`` file."""
    catalogue, _ = ranked
    queue = tmp_path / "queue"
    (queue / "runs").mkdir(parents=True)
    (queue / "notes").mkdir()
    (queue / ".tmp-queue.parquet.abc123").write_bytes(b"half")
    (queue / "runs" / ".tmp-20250101T000000000000Z.parquet.x").write_bytes(b"half")
    (queue / "run-keys").mkdir()
    (queue / "run-keys" / ".tmp-week-1.json.y").write_text("{")
    (queue / "notes" / ".tmp-draft").write_text("mine")
    (queue / ".tmp-manifest.csv.x").write_text("someone else's")
    rank_catalogue(catalogue, 12, queue_dir=queue, batch_size=8)
    assert sorted(str(p.relative_to(queue)) for p in queue.rglob(".tmp-*")) == [".tmp-manifest.csv.x",
                                                                                "notes/.tmp-draft"]
