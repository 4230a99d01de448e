"""Uploading a manifest with panoptes-client against a local fake Panoptes (tests/panoptes_server.py): the dry run
sends nothing, a real run creates subjects with their metadata and byte-identical images and links them, a failure
half way resumes without duplicates, and credentials never reach output, logs or files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import panoptes_client.subject
import pyarrow.parquet as pq
import pytest
from panoptes_server import JSON_API, FakePanoptes
from test_active_ranking import catalogue_table
from typer.testing import CliRunner

from zoobot_pipeline.active.manifest import read_manifest, write_manifest
from zoobot_pipeline.active.ranking import rank_catalogue
from zoobot_pipeline.active.zooniverse import Credentials, UploadError, state_path, upload_manifest
from zoobot_pipeline.cli import app
from zoobot_pipeline.data.synthetic.simulate import simulate_release

PROJECT, SUBJECT_SET = "1234", "5678"
USERNAME, PASSWORD = "gz-team", "pw-Zq8#never-print-me"
CLIENT_ID, CLIENT_SECRET = "app-3141", "secret-Kx9-never-print-me"
runner = CliRunner()


@pytest.fixture(scope="module")
def built_manifest(tmp_path_factory) -> Path:
    """A manifest of 6 galaxies from a simulated release, ranked from a catalogue of its sources."""
    root = tmp_path_factory.mktemp("upload")
    release = simulate_release(root / "release", 30, 1, tile_size=512, seed=3, name="synthetic-dr1")
    sources = pq.read_table(release / "sources.parquet")
    table = catalogue_table(sources["id_str"].to_pylist(), sources["tile_id"].to_pylist(), seed=5)
    table = table.set_column(1, "ra", sources["ra"]).set_column(2, "dec", sources["dec"])
    pq.write_table(table, root / "catalogue.parquet")
    rank_catalogue(root / "catalogue.parquet", 6, queue_dir=root / "queue")
    return write_manifest(root / "queue", release, root / "manifest").parent


@pytest.fixture
def manifest(built_manifest, tmp_path) -> Path:
    """A fresh copy per test: uploads write their state file beside the manifest."""
    return Path(shutil.copytree(built_manifest, tmp_path / "manifest"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """panoptes-client reads PANOPTES_* itself: start every test without them."""
    for name in ("PANOPTES_USERNAME", "PANOPTES_PASSWORD", "PANOPTES_CLIENT_ID", "PANOPTES_CLIENT_SECRET",
                 "PANOPTES_ENDPOINT", "PANOPTES_REDIRECT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FakePanoptes(username=USERNAME, password=PASSWORD, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                      projects={PROJECT: [SUBJECT_SET], "999": ["777"]}) as fake:
        yield fake


def words(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def login(monkeypatch) -> None:
    monkeypatch.setenv("PANOPTES_USERNAME", USERNAME)
    monkeypatch.setenv("PANOPTES_PASSWORD", PASSWORD)


def assert_uploaded_exactly_once(server: FakePanoptes, manifest: Path) -> None:
    rows = read_manifest(manifest)
    by_id = {s.metadata["#id_str"]: s for s in server.subjects.values()}
    assert len(by_id) == len(server.subjects) == len(rows)  # one subject per galaxy, no duplicates
    state = json.loads(state_path(manifest, SUBJECT_SET).read_text())
    assert state["subjects"] == {row.id_str: {"subject_id": by_id[row.id_str].id, "linked": True} for row in rows}
    assert sorted(server.members[SUBJECT_SET]) == sorted(s.id for s in server.subjects.values())
    for row in rows:
        subject = by_id[row.id_str]
        assert subject.metadata == row.metadata and subject.project == PROJECT
        assert subject.locations == ["image/png"]
        assert list(subject.media.values()) == [row.image.read_bytes()]  # the image arrived byte for byte


def test_dry_run_sends_nothing(manifest, server, monkeypatch):
    login(monkeypatch)
    report = upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint)
    assert report.dry_run and report.total == 6 and len(report.to_upload) == 6 and report.created == 0
    assert [r.metadata["#priority"] for r in report.to_upload] == list(range(1, 7))
    assert server.requests == [] and not state_path(manifest, SUBJECT_SET).exists()

    result = runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", PROJECT,
                                 "--subject-set", SUBJECT_SET, "--endpoint", server.endpoint])
    assert result.exit_code == 0, result.output
    assert "would upload 6 of 6 subjects" in words(result.output) and "nothing was sent" in words(result.output)
    assert server.requests == []


def test_upload_creates_subjects_with_metadata_images_and_links(manifest, server, monkeypatch):
    login(monkeypatch)
    report = upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint, dry_run=False,
                             link_batch_size=4)
    assert (report.created, report.linked) == (6, 6)
    assert_uploaded_exactly_once(server, manifest)
    routes = server.routes()
    assert routes[:3] == [("GET", "/users/sign_in"), ("POST", "/users/sign_in"), ("POST", "/oauth/token")]
    assert routes.count(("POST", f"/api/subject_sets/{SUBJECT_SET}/links/subjects")) == 2  # batches of 4 and 2
    link_bodies = [r.body["subjects"] for r in server.requests if r.path.endswith("/links/subjects")]
    assert [len(b) for b in link_bodies] == [4, 2]
    api = [r for r in server.requests if r.path.startswith("/api/")]
    assert all(r.headers["accept"] == JSON_API and r.headers["authorization"].startswith("Bearer ") for r in api)
    priorities = {s.metadata["#priority"] for s in server.subjects.values()}
    assert priorities == set(range(1, 7))  # #priority travels as a number, so the selector can order by it

    again = upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint, dry_run=False)
    assert (again.created, again.linked, again.already_uploaded) == (0, 0, 6)
    assert len(server.subjects) == 6


def test_failure_half_way_resumes_without_duplicates(manifest, server, monkeypatch):
    login(monkeypatch)
    # panoptes-client retries a failed save 5 times with 5 s+ back-off; one attempt keeps the test fast
    monkeypatch.setattr(panoptes_client.subject, "UPLOAD_RETRY_LIMIT", 1)
    server.fail_subject_creation_from(4)
    with pytest.raises(UploadError, match="3 subjects created, 2 linked.*rerun to resume"):
        upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint, dry_run=False, link_batch_size=2)
    state = json.loads(state_path(manifest, SUBJECT_SET).read_text())
    rows = read_manifest(manifest)
    assert list(state["subjects"]) == [r.id_str for r in rows[:3]]
    assert [s["linked"] for s in state["subjects"].values()] == [True, True, False]
    assert len(server.subjects) == 3 and len(server.members[SUBJECT_SET]) == 2

    plan = upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint)
    assert [r.id_str for r in plan.to_upload] == [r.id_str for r in rows[3:]] and plan.to_link == 1

    server.recover()
    report = upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint, dry_run=False,
                             link_batch_size=2)
    assert (report.created, report.linked) == (3, 4)  # the unlinked third subject first, then the rest
    assert server.creation_attempts == 7  # 3 + the failed one + 3: nothing created twice
    assert_uploaded_exactly_once(server, manifest)


def test_credentials_never_reach_output_logs_or_files(manifest, server, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # panoptes-client logs request bodies at DEBUG
    monkeypatch.setenv("PANOPTES_USERNAME", USERNAME)
    monkeypatch.setenv("PANOPTES_PASSWORD", PASSWORD)
    result = runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", PROJECT,
                                 "--subject-set", SUBJECT_SET, "--endpoint", server.endpoint, "--no-dry-run"])
    assert result.exit_code == 0, result.output
    assert "created 6 subjects and linked 6" in words(result.output)
    assert_uploaded_exactly_once(server, manifest)
    assert any("json=" in r.getMessage() for r in caplog.records)  # the client's debug logging was captured

    monkeypatch.setenv("PANOPTES_PASSWORD", PASSWORD + "-wrong")
    refused = runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", PROJECT,
                                  "--subject-set", SUBJECT_SET, "--endpoint", server.endpoint, "--no-dry-run"])
    assert refused.exit_code == 1 and "Invalid email or password" in words(refused.output)

    monkeypatch.delenv("PANOPTES_USERNAME")
    monkeypatch.delenv("PANOPTES_PASSWORD")
    monkeypatch.setenv("PANOPTES_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("PANOPTES_CLIENT_SECRET", CLIENT_SECRET)
    report = upload_manifest(manifest, "999", "777", endpoint=server.endpoint, dry_run=False)
    assert report.created == 6 and len(server.members["777"]) == 6
    token_requests = [r for r in server.requests if r.path == "/oauth/token"]
    assert token_requests[-1].body["grant_type"] == "client_credentials"
    assert repr(Credentials.from_env()).count("never-print-me") == 0

    captured = capfd.readouterr()
    files = "".join(p.read_text(errors="replace") for p in manifest.iterdir() if p.suffix in (".json", ".csv"))
    for secret in (PASSWORD, CLIENT_SECRET):
        for text in (result.output, refused.output, caplog.text, captured.out, captured.err, files):
            assert secret not in "".join(text.split())  # also where a console wrapped a line


def test_refusals_before_anything_is_created(manifest, server, monkeypatch):
    missing = runner.invoke(app, ["queue", "upload", "--manifest", str(manifest), "--project", PROJECT,
                                  "--subject-set", SUBJECT_SET, "--endpoint", server.endpoint, "--no-dry-run"])
    assert missing.exit_code == 2 and "PANOPTES_USERNAME" in words(missing.output)
    assert server.requests == []

    login(monkeypatch)
    with pytest.raises(ValueError, match="subject set 777 .* belongs to project 999, not 1234"):
        upload_manifest(manifest, PROJECT, "777", endpoint=server.endpoint, dry_run=False)
    with pytest.raises(UploadError, match="Could not find subject_set with id='4242'"):
        upload_manifest(manifest, PROJECT, "4242", endpoint=server.endpoint, dry_run=False)
    assert server.subjects == {}

    state_path(manifest, SUBJECT_SET).write_text(json.dumps(
        {"endpoint": "https://panoptes-staging.zooniverse.org", "project": PROJECT, "subject_set": SUBJECT_SET,
         "subjects": {}}))
    with pytest.raises(ValueError, match="records uploads with endpoint 'https://panoptes-staging"):
        upload_manifest(manifest, PROJECT, SUBJECT_SET, endpoint=server.endpoint)
