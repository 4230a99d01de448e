"""Fault catalogue, bad input and faults: validation gaps, unclear messages and the command line's last line of
defence.

- Votes that break the decision tree (a question with more votes than the answer it is asked after) are refused
  wherever votes enter (``read_votes``: ``pretrain``, ``queue merge-votes`` inputs and output), while ``release
  check`` keeps counting them.
- Source catalogues: empty or duplicate ids, positions that are not finite or off the sky, an empty table, tile ids or
  tile paths that would lead outside the release, a ``release.json`` that is a directory: each a ``ReleaseError``
  naming the file, column and rows.
- ``simulate`` ranges are checked before anything is written.
- The command line: an ``--out`` that cannot be written, that lies under a file, a full disk, an over-long file name
  and any unexpected exception each end as one line (exit 2 for what the user can fix, 1 otherwise, with the
  traceback in a file the line names); a corrupt catalogue part, ``--input-size 0``, an endpoint that is not
  Panoptes and a failed upload name what failed and where.

Every CLI test asserts the exit code, that the one error line names the culprit, and that nothing outside the target
changed (a listing of the tree with sizes and mtimes before and after).
"""

from __future__ import annotations

import errno
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_checks import error_line, tree
from conftest import write_tiny_release
from panoptes_server import FakePanoptes
from PIL import Image
from typer.testing import CliRunner

from zoobot_pipeline.active.votes_merge import merge_votes
from zoobot_pipeline.active.zooniverse import UploadError, state_path, upload_manifest
from zoobot_pipeline.cli import app
from zoobot_pipeline.data.check import check_release
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.release import Release, ReleaseError
from zoobot_pipeline.data.render import composite_config
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.data.votes import VotesError, read_votes, tree_violations
from zoobot_pipeline.errors import ServiceError
from zoobot_pipeline.io import MAX_NAME_BYTES
from zoobot_pipeline.schemas import get_schema

runner = CliRunner()
SCHEMA = get_schema("decals_dr5")
BAR = SCHEMA.question("bar-dr5")


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> Path:
    """Tracebacks of internal errors go under this test's folder, never the user's home."""
    home = tmp_path / "state-home"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def _consistent_counts(n: int, seed: int) -> np.ndarray:
    """Votes that fit the tree: each child question gets at most its parent answer's count."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, SCHEMA.n_answers), dtype=np.int64)
    for question in SCHEMA.questions:
        totals = np.full(n, 30) if question.asked_after is None else counts[:, question.asked_after.index]
        for row in range(n):
            counts[row, question.slice] = rng.multinomial(totals[row], np.ones(len(question.answers)) /
                                                          len(question.answers))
    return counts


def _votes(ids: list[str], counts: np.ndarray) -> pa.Table:
    return pa.table({"id_str": ids, **{col: counts[:, j] for j, col in enumerate(SCHEMA.label_cols)}})


def _breaktree(counts: np.ndarray, row: int, extra: int = 5) -> np.ndarray:
    """More votes on the bar question than on the answer it is asked after, for one galaxy."""
    broken = counts.copy()
    broken[row, BAR.start] += broken[row, BAR.asked_after.index] + extra
    return broken


# ---------------------------------------------------------------------------------------------------------- votes


def test_read_votes_refuses_votes_that_break_the_tree_and_release_check_counts_them(tmp_path):
    counts = _consistent_counts(4, 0)
    path = tmp_path / "votes.parquet"
    pq.write_table(_votes(["g0", "g1", "g2", "g3"], _breaktree(counts, 2)), path)
    with pytest.raises(VotesError, match=r"1 galaxies have more votes on a question.*'g2'.*'bar-dr5'") as err:
        read_votes(path, SCHEMA)
    assert str(path) in str(err.value) and BAR.asked_after.label_col in str(err.value)
    unchecked = read_votes(path, SCHEMA, check_tree_counts=False)  # release check reads them to count them
    assert [v.id_str for v in tree_violations(unchecked, SCHEMA)] == ["g2"]


def test_release_check_still_counts_tree_violations_with_exit_1(tmp_path):
    release = write_tiny_release(tmp_path / "release").path
    ids = pq.read_table(release / "sources.parquet")["id_str"].to_pylist()
    pq.write_table(_votes(ids, _breaktree(_breaktree(_consistent_counts(len(ids), 1), 0), 3)),
                   release / "votes.parquet")
    assert check_release(release).tree_violations == 2
    result = runner.invoke(app, ["release", "check", str(release)])
    assert result.exit_code == 1 and "2 galaxies have more votes" in " ".join(result.output.split())


def test_pretrain_refuses_votes_that_break_the_tree_before_training(tmp_path):
    release = simulate_release(tmp_path / "release", 12, 1, tile_size=256, seed=0, labelled_fraction=1.0)
    votes = pq.read_table(release / "votes.parquet")
    counts = np.stack([votes[c].to_numpy() for c in SCHEMA.label_cols], axis=1)
    broken = _votes(votes["id_str"].to_pylist(), _breaktree(counts, 4))
    pq.write_table(broken, tmp_path / "broken.parquet")
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, [
        "pretrain", "--release", str(release), "--votes", str(tmp_path / "broken.parquet"), "--out",
        str(tmp_path / "ckpt"), "--architecture", "test_resnet", "--input-size", "32", "--epochs", "1", "--quiet"]))
    assert str(tmp_path / "broken.parquet") in line and "more votes on a question" in line
    assert votes["id_str"][4].as_py() in line
    assert tree(tmp_path) == before  # no checkpoint folder, nothing else touched


def test_merge_votes_refuses_votes_that_break_thetree(tmp_path):
    labelled, new, out = tmp_path / "votes.parquet", tmp_path / "new.parquet", tmp_path / "merged.parquet"
    pq.write_table(_votes(["a", "b"], _consistent_counts(2, 2)), labelled)
    pq.write_table(_votes(["b", "c"], _breaktree(_consistent_counts(2, 3), 1)), new)
    before = tree(tmp_path)
    with pytest.raises(VotesError, match=r"new\.parquet: 1 galaxies.*'c'"):
        merge_votes(labelled, new, out)
    line = error_line(runner.invoke(app, ["queue", "merge-votes", "--labelled", str(labelled), "--new", str(new),
                                           "--out", str(labelled)]))
    assert str(new) in line and "'c'" in line
    assert tree(tmp_path) == before  # the labelled file is untouched, nothing written

    pq.write_table(_votes(["a", "b"], _breaktree(_consistent_counts(2, 2), 0)), labelled)
    with pytest.raises(VotesError, match=r"votes\.parquet: 1 galaxies.*'a'"):
        merge_votes(labelled, new, out)
    assert not out.exists()


def test_merging_a_votes_file_into_itself_is_refused(tmp_path):
    labelled = tmp_path / "votes.parquet"
    pq.write_table(_votes(["a", "b"], _consistent_counts(2, 4)), labelled)
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(labelled.read_bytes())
    before = tree(tmp_path)
    for new in (labelled, copy):
        line = error_line(runner.invoke(app, ["queue", "merge-votes", "--labelled", str(labelled), "--new",
                                               str(new), "--out", str(labelled)]))
        assert str(new) in line and "twice" in line
    assert tree(tmp_path) == before


def test_read_votes_refuses_empty_ids(tmp_path):
    path = tmp_path / "votes.parquet"
    pq.write_table(_votes(["a", " "], _consistent_counts(2, 5)), path)
    with pytest.raises(VotesError, match=r"votes\.parquet: column 'id_str' is empty or blank in 1 row\(s\), e\.g\. "
                                         r"row\(s\) 1"):
        read_votes(path, SCHEMA)


# -------------------------------------------------------------------------------------------------------- sources


def _set(table: pa.Table, column: str, values: list) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, pa.array(values, table[column].type))


def _first(table: pa.Table, column: str, value) -> pa.Table:
    return _set(table, column, [value, *table[column].to_pylist()[1:]])


@pytest.mark.parametrize(("mutate", "pattern"), [
    (lambda t: _first(t, "id_str", ""), r"column 'id_str' is empty or blank in 1 row\(s\): row 0 \(id_str ''\)"),
    (lambda t: _first(t, "id_str", "   "), r"column 'id_str' is empty or blank"),
    (lambda t: _set(t, "id_str", [*t["id_str"].to_pylist()[:-1], "centre"]),
     r"duplicate id_str.*'centre' is at row 0 \(tile 't0'\) and row 4 \(tile 't1'\)"),
    (lambda t: _first(t, "ra", float("inf")), r"column 'ra' has 1 non-finite value\(s\).*row 0 \(id_str 'centre'\)"),
    (lambda t: _first(t, "dec", float("nan")), r"column 'dec' has 1 non-finite value\(s\)"),
    (lambda t: _first(t, "ra", 360.0), r"column 'ra' has 1 value\(s\) outside \[0, 360\) degrees \(360\)"),
    (lambda t: _first(t, "ra", -0.5), r"column 'ra' has 1 value\(s\) outside \[0, 360\)"),
    (lambda t: _first(t, "dec", 91.0), r"column 'dec' has 1 value\(s\) outside \[-90, 90\] degrees \(91\)"),
    (lambda t: t.set_column(1, "ra", pa.array([str(v) for v in t["ra"].to_pylist()])),
     r"column 'ra' must hold numbers"),
    (lambda t: t.slice(0, 0), r"the table has no rows"),
    (lambda t: _set(t, "tile_id", ["../t0" if v == "t0" else v for v in t["tile_id"].to_pylist()]),
     r"column 'tile_id' has 1 value\(s\) that are not plain names.*'\.\./t0'"),
    (lambda t: _first(t, "tile_id", "/etc/passwd"), r"'tile_id'.*not plain names.*'/etc/passwd'"),
    (lambda t: _first(t, "tile_id", "..\\t0"), r"'tile_id'.*not plain names"),
    (lambda t: _first(t, "tile_id", ".."), r"'tile_id'.*not plain names.*'\.\.'"),
], ids=["empty-id", "blank-id", "duplicate-across-tiles", "infinite-ra", "nan-dec", "ra-360", "negative-ra",
        "dec-91", "text-ra", "no-rows", "tile-dotdot", "tile-absolute", "tile-backslash", "tile-is-dotdot"])
def test_bad_source_catalogues_are_refused_naming_file_column_and_rows(tmp_path, mutate, pattern):
    release = write_tiny_release(tmp_path / "release").path
    sources = release / "sources.parquet"
    pq.write_table(mutate(pq.read_table(sources)), sources)
    with pytest.raises(ReleaseError, match=pattern) as err:
        Release.open(release)
    assert str(sources) in str(err.value)
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, ["release", "check", str(release)]))
    assert str(sources) in line
    assert tree(tmp_path) == before


def test_release_json_tile_paths_must_stay_inside_the_release(tmp_path):
    release = write_tiny_release(tmp_path / "release").path
    (release / "tiles" / "t0.fits").rename(tmp_path / "outside.fits")  # a real file, outside the release
    meta = json.loads((release / "release.json").read_text())
    for listed in ("../outside.fits", str(tmp_path / "outside.fits"), "tiles/../../outside.fits"):
        meta["tiles"] = {"t0": listed, "t1": "tiles/t1"}
        (release / "release.json").write_text(json.dumps(meta))
        with pytest.raises(ReleaseError, match=r"release\.json: tiles\['t0'\]: path .* is not inside"):
            Release.open(release)
    meta["tiles"] = ["t0", "../t1"]
    (release / "release.json").write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match=r"release\.json: 'tiles' lists tile id\(s\) that are not plain names"):
        Release.open(release)


def test_release_json_that_is_a_directory_is_named_as_such(tmp_path):
    release = write_tiny_release(tmp_path / "release").path
    (release / "release.json").unlink()
    (release / "release.json").mkdir()
    line = error_line(runner.invoke(app, ["release", "check", str(release)]))
    assert str(release / "release.json") in line and "is a directory" in line and "not found" not in line

    (release / "release.json").rmdir()
    (release / "release.json").write_bytes(b'{"name": "caf\xe9"}')
    line = error_line(runner.invoke(app, ["release", "check", str(release)]))
    assert str(release / "release.json") in line and "UTF-8" in line

    other = write_tiny_release(tmp_path / "other").path
    (other / "sources.parquet").unlink()
    (other / "sources.parquet").mkdir()
    line = error_line(runner.invoke(app, ["release", "check", str(other)]))
    assert str(other / "sources.parquet") in line and "is a directory" in line


def test_an_empty_release_is_refused_not_a_zip_error(tmp_path):
    release = write_tiny_release(tmp_path / "release").path
    pq.write_table(pq.read_table(release / "sources.parquet").slice(0, 0), release / "sources.parquet")
    line = error_line(runner.invoke(app, ["render", str(release), "--out", str(tmp_path / "png")]))
    assert str(release / "sources.parquet") in line and "no rows" in line and "zip()" not in line
    assert not (tmp_path / "png").exists()


# ------------------------------------------------------------------------------------------------------- simulate


@pytest.mark.parametrize(("args", "named"), [
    (["--volunteers", "0"], "n_volunteers"),
    (["--volunteers", "-3"], "n_volunteers"),
    (["--tile-size", "100000"], "tile_size"),
    (["--galaxies", "1000000", "--tiles", "1"], "use more tiles (n_tiles of at least 215)"),
])
def test_simulate_ranges_are_checked_before_anything_is_written(tmp_path, args, named):
    line = error_line(runner.invoke(app, ["simulate", "--out", str(tmp_path / "sim"), "--galaxies", "5",
                                           "--tiles", "1", *args]))
    assert named in line
    assert not (tmp_path / "sim").exists()


# ----------------------------------------------------------------------------------------- the command line's errors


def _user_files(root: Path) -> Path:
    """A regular file of the user's, with content that must survive."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "afile").write_text("the user's own file\n")
    return root / "afile"


def _votes_pair(root: Path) -> tuple[Path, Path]:
    pq.write_table(_votes(["a", "b"], _consistent_counts(2, 6)), root / "votes.parquet")
    pq.write_table(_votes(["b", "c"], _consistent_counts(2, 7)), root / "new.parquet")
    return root / "votes.parquet", root / "new.parquet"


@pytest.mark.parametrize("where", ["under", "is"])
@pytest.mark.parametrize("command", ["simulate", "render", "merge-votes"])
def test_out_under_or_at_a_regular_file_is_one_line_naming_it(tmp_path, command, where):
    afile = _user_files(tmp_path / "user")
    release = write_tiny_release(tmp_path / "release").path
    labelled, new = _votes_pair(tmp_path)
    out = afile / "out" if where == "under" else afile
    args = {"simulate": ["simulate", "--out", str(out), "--galaxies", "5", "--tiles", "1", "--tile-size", "128"],
            "render": ["render", str(release), "--out", str(out), "--limit", "1", "--size", "64"],
            "merge-votes": ["queue", "merge-votes", "--labelled", str(labelled), "--new", str(new), "--out",
                            str(out / "merged.parquet")]}[command]
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, args))
    assert str(afile) in line and ("is a file" in line or "not a directory" in line), line
    assert tree(tmp_path) == before and afile.read_text() == "the user's own file\n"


def test_unwritable_out_is_one_line_naming_it(tmp_path, monkeypatch):
    labelled, new = _votes_pair(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(table, destination, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(destination).parent / ".tmp-m.parquet.x"))

    monkeypatch.setattr("zoobot_pipeline.active.votes_merge.write_parquet_atomic", refuse)
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, ["queue", "merge-votes", "--labelled", str(labelled), "--new", str(new),
                                           "--out", str(locked / "m.parquet")]))
    assert f"error: {locked}: Permission denied; check its permissions" in line  # the folder, not the temporary file
    assert tree(tmp_path) == before


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, monkeypatch):
    labelled, new = _votes_pair(tmp_path)
    out = tmp_path / "m.parquet"
    errors = iter([OSError(errno.ENOSPC, "No space left on device"),  # as a write() raises it: no file name
                   OSError(errno.ENOSPC, "No space left on device", str(out))])

    def full(table, destination, **kwargs):
        raise next(errors)

    monkeypatch.setattr("zoobot_pipeline.active.votes_merge.write_parquet_atomic", full)
    args = ["queue", "merge-votes", "--labelled", str(labelled), "--new", str(new), "--out", str(out)]
    line = error_line(runner.invoke(app, args), code=1)
    assert "no space left on device while writing " + str(out) in line and "free some space" in line
    line = error_line(runner.invoke(app, args), code=1)
    assert line.startswith(f"error: {out}: no space left on device")


def test_over_long_file_names_are_bounded_or_one_line(tmp_path, monkeypatch):
    release = write_tiny_release(tmp_path / "release").path
    long_id = "g" * 400
    sources = pq.read_table(release / "sources.parquet")
    pq.write_table(_first(sources, "id_str", long_id), release / "sources.parquet")
    result = runner.invoke(app, ["render", str(release), "--out", str(tmp_path / "png"), "--id", long_id,
                                 "--size", "64"])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "png").iterdir()
    assert len(written.name.encode()) <= MAX_NAME_BYTES + 20 and written.name.startswith("g" * 100)

    def too_long(*args, **kwargs):
        raise OSError(errno.ENAMETOOLONG, "File name too long", str(tmp_path / ("x" * 300)))

    monkeypatch.setattr("zoobot_pipeline.active.votes_merge.write_parquet_atomic", too_long)
    labelled, new = _votes_pair(tmp_path)
    line = error_line(runner.invoke(app, ["queue", "merge-votes", "--labelled", str(labelled), "--new", str(new),
                                           "--out", str(tmp_path / "m.parquet")]))
    assert "file name too long; choose a shorter path" in line


def test_an_unexpected_exception_is_one_line_with_the_traceback_in_a_file(state_home, monkeypatch):
    def broken():
        raise RuntimeError("the registry fell over\nsecond line")

    monkeypatch.setattr("zoobot_pipeline.schemas.available_schemas", broken)
    line = error_line(runner.invoke(app, ["schema", "list"]), code=1)
    assert line.startswith("error: internal error: RuntimeError: the registry fell over second line; full traceback "
                           f"in {state_home / 'zoobot-pipeline'}")
    (written,) = (state_home / "zoobot-pipeline").iterdir()
    assert str(written) in line
    text = written.read_text()
    assert "schema list" in text and "Traceback (most recent call last)" in text and "def broken" not in line
    assert "the registry fell over" in text and "in broken" in text


def test_traceback_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken():
        raise KeyError("x")

    monkeypatch.setattr("zoobot_pipeline.schemas.available_schemas", broken)
    line = error_line(runner.invoke(app, ["schema", "list"]), code=1)
    (written,) = (tmp_path / "tmp").iterdir()
    assert f"full traceback in {written}" in line


def test_service_errors_are_one_line_exit_1_and_click_errors_stay_clicks(monkeypatch):
    def down():
        raise ServiceError("the catalogue service at https://example.org is down; rerun later")

    monkeypatch.setattr("zoobot_pipeline.schemas.available_schemas", down)
    line = error_line(runner.invoke(app, ["schema", "list"]), code=1)
    assert line == "error: the catalogue service at https://example.org is down; rerun later"
    usage = runner.invoke(app, ["simulate"])
    assert usage.exit_code == 2 and "Missing option" in usage.output and "internal error" not in usage.output


# ------------------------------------------------------------------------------------------------------- messages


def test_a_corrupt_catalogue_part_file_is_named(tmp_path):
    catalogue = tmp_path / "catalogue"
    (catalogue / "tiles").mkdir(parents=True)
    (catalogue / "tiles" / "t0.parquet").write_bytes(b"not parquet at all")
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, ["catalogue", "summary", str(catalogue)]))
    assert str(catalogue / "tiles" / "t0.parquet") in line and "unreadable catalogue part file" in line

    pq.write_table(pa.table({"id_str": ["a"]}).replace_schema_metadata({"counts": "{not json"}),
                   catalogue / "tiles" / "t0.parquet")
    line = error_line(runner.invoke(app, ["catalogue", "summary", str(catalogue)]))
    assert str(catalogue / "tiles" / "t0.parquet") in line and "'counts' metadata is unreadable" in line
    assert set(tree(tmp_path)) == set(before)


def test_an_image_size_of_zero_names_the_option_and_the_field_plainly(tmp_path):
    with pytest.raises(ValueError, match="side of the images, in pixels, must be at least 1"):
        composite_config(("g", "r", "z"), 0)
    with pytest.raises(ValueError, match="side of the images"):
        PreprocessingConfig.gz_decals(input_size=0)
    release = write_tiny_release(tmp_path / "release").path
    line = error_line(runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(tmp_path / "ckpt"),
                                           "--input-size", "0"]))
    assert ("invalid preprocessing settings: input_size (--input-size): the side of the images, in pixels, must be "
            "at least 1 (got 0)") in line
    assert "PreprocessingConfig" not in line
    assert not (tmp_path / "ckpt").exists()


def _manifest(root: Path) -> Path:
    """A one-subject manifest folder (as ``queue manifest`` writes it)."""
    root.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "manifest.csv").write_text("image_1,#priority,#id_str,#ra,#dec,#acquisition,#top_question,#model,#release\n"
                                       "a.png,1,a,150.0,2.0,0.5,bar-dr5,abc,dr1\n")
    return root


class _NotPanoptes(BaseHTTPRequestHandler):
    """A web server that is not Panoptes: 200 and an HTML page for everything."""

    def _page(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _page  # noqa: N815 - BaseHTTPRequestHandler's names

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Say nothing: the test reads the client's error, not the server's log."""


@pytest.fixture
def not_panoptes():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotPanoptes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_that_is_not_panoptes_is_named_as_such(tmp_path, not_panoptes, monkeypatch):
    manifest = _manifest(tmp_path / "manifest")
    monkeypatch.setenv("PANOPTES_USERNAME", "someone")
    monkeypatch.setenv("PANOPTES_PASSWORD", "pw-never-print")
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", "1",
                                           "--subject-set", "2", "--endpoint", not_panoptes, "--no-dry-run"]), code=1)
    assert f"{not_panoptes} did not answer as a Panoptes (Zooniverse API) server does" in line
    assert "x-csrf-token" in line and "check --endpoint" in line and "pw-never-print" not in line
    state = state_path(manifest, 2).resolve()
    assert f"nothing was recorded (no state file was written; it would be {state})" in line
    assert tree(tmp_path) == before and not state.exists()


def test_a_failed_upload_points_at_the_real_state_file(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path / "manifest")
    for name in ("PANOPTES_CLIENT_ID", "PANOPTES_CLIENT_SECRET", "PANOPTES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PANOPTES_USERNAME", "gz-team")
    monkeypatch.setenv("PANOPTES_PASSWORD", "wrong")
    with FakePanoptes(username="gz-team", password="right", projects={"1": ["2"]}) as server:
        with pytest.raises(UploadError, match="Invalid email or password.*nothing was recorded") as err:
            upload_manifest(manifest, 1, 2, endpoint=server.endpoint, dry_run=False)
        assert "records what was done" not in str(err.value)

        monkeypatch.setenv("PANOPTES_PASSWORD", "right")
        server.fail_subject_creation_from(1)
        import panoptes_client.subject
        monkeypatch.setattr(panoptes_client.subject, "UPLOAD_RETRY_LIMIT", 1)
        state_path(manifest, 2).write_text(json.dumps({"endpoint": server.endpoint, "project": "1",
                                                       "subject_set": "2", "subjects": {}}))
        result = runner.invoke(app, ["queue", "upload", "--manifest", str(manifest / "manifest.csv"), "--project",
                                     "1", "--subject-set", "2", "--endpoint", server.endpoint, "--no-dry-run"])
        line = error_line(result, code=1)
        assert f"{state_path(manifest, 2).resolve()} records what was done; rerun to resume" in line


def test_a_broken_upload_state_file_is_named(tmp_path):
    manifest = _manifest(tmp_path / "manifest")
    state = state_path(manifest, 2)
    state.write_text(json.dumps({"endpoint": "https://www.zooniverse.org", "project": "1", "subject_set": "2",
                                 "subjects": {"a": {"linked": True}}}))
    line = error_line(runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", "1",
                                           "--subject-set", "2"]))
    assert str(state) in line and "subject_id" in line
    state.unlink()
    state.mkdir()
    line = error_line(runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", "1",
                                           "--subject-set", "2"]))
    assert str(state) in line and "unreadable upload state" in line
