"""The Zooniverse manifest: columns, #priority = rank in rank order, one 424x424 image per subject under 1 MiB that
shows the right galaxy, reruns that duplicate nothing, and the ``queue manifest`` command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_active_ranking import META, catalogue_table
from typer.testing import CliRunner

from zoobot_pipeline.active.manifest import MANIFEST_COLUMNS, image_name, read_manifest, write_manifest
from zoobot_pipeline.active.ranking import rank_catalogue
from zoobot_pipeline.cli import app
from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import MAX_IMAGE_BYTES, render_rgb
from zoobot_pipeline.data.synthetic.simulate import simulate_release

runner = CliRunner()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("release") / "sim", 40, 2, tile_size=512, seed=0)


@pytest.fixture
def queue_dir(release, tmp_path) -> Path:
    """A queue of 7 galaxies ranked from a catalogue of the release's sources (and named after the release)."""
    sources = pq.read_table(release / "sources.parquet")
    table = catalogue_table(sources["id_str"].to_pylist(), sources["tile_id"].to_pylist(), seed=4,
                            meta={**META, "release": Release.open(release).info.name})
    table = table.set_column(1, "ra", sources["ra"]).set_column(2, "dec", sources["dec"])
    pq.write_table(table, tmp_path / "catalogue.parquet")
    rank_catalogue(tmp_path / "catalogue.parquet", 7, queue_dir=tmp_path / "queue")
    return tmp_path / "queue"


def test_manifest_lists_every_queued_galaxy_in_rank_order_with_its_image(release, queue_dir, tmp_path):
    out = tmp_path / "manifest"
    path = write_manifest(queue_dir, release, out)
    queue = pq.read_table(queue_dir / "queue.parquet").to_pylist()
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        lines = list(reader)
    assert tuple(header) == MANIFEST_COLUMNS
    rows = [dict(zip(header, line, strict=True)) for line in lines]
    assert [int(r["#priority"]) for r in rows] == [q["rank"] for q in queue] == list(range(1, 8))
    assert [r["#id_str"] for r in rows] == [q["id_str"] for q in queue]
    for row, entry in zip(rows, queue, strict=True):
        assert float(row["#ra"]) == entry["ra"] and float(row["#dec"]) == entry["dec"]  # no precision lost
        assert float(row["#acquisition"]) == entry["acquisition"]
        assert row["#model"] == entry["model_sha256"] and row["#release"] == entry["release"]
        assert row["#top_question"] == entry["top_question"]
        assert row["image_1"] == f"{entry['id_str']}.png"

    images = sorted(p.name for p in out.iterdir() if p.name != "manifest.csv")
    assert images == sorted(r["image_1"] for r in rows)
    opened = Release.open(release)
    cutouts = dict(release_cutouts(opened, [r["#id_str"] for r in rows]))
    for row in rows:
        image_path = out / row["image_1"]
        assert image_path.stat().st_size <= MAX_IMAGE_BYTES
        with Image.open(image_path) as image:
            assert image.format == "PNG" and image.size == (424, 424) and image.mode == "RGB"
            pixels = np.asarray(image)
        # the image is this galaxy's cutout, rendered as Galaxy Zoo shows it (found through another code path)
        np.testing.assert_array_equal(pixels, render_rgb(cutouts[row["#id_str"]].data, opened.bands, 424))
        assert pixels.std() > 5

    manifest = read_manifest(out)
    assert [m.metadata["#priority"] for m in manifest] == list(range(1, 8))
    assert isinstance(manifest[0].metadata["#ra"], float) and manifest[0].mime_type == "image/png"


def test_rerun_reuses_the_images_and_jpeg_works(release, queue_dir, tmp_path):
    out = tmp_path / "manifest"
    write_manifest(queue_dir, release, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    first = (out / "manifest.csv").read_bytes()
    write_manifest(queue_dir, release, out)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(after) == set(before)  # no new files
    assert all(after[name] == before[name] for name in after if name != "manifest.csv")  # images not redone
    assert (out / "manifest.csv").read_bytes() == first
    assert not list(out.glob(".tmp-*"))

    jpeg = write_manifest(queue_dir, release, tmp_path / "jpeg", "jpeg")
    names = [row.image.name for row in read_manifest(jpeg.parent)]
    assert all(name.endswith(".jpeg") for name in names)
    with Image.open(jpeg.parent / names[0]) as image:
        assert image.format == "JPEG" and image.size == (424, 424)


def test_unknown_galaxies_and_unsafe_ids(release, tmp_path):
    queue = pq.read_table(release / "sources.parquet").slice(0, 2).select(["id_str", "ra", "dec"])
    queue = queue.append_column("rank", pa.array([1, 2])).append_column("acquisition", pa.array([0.2, 0.1]))
    for name in ("top_question", "model_sha256"):
        queue = queue.append_column(name, pa.array(["x", "x"]))
    queue = queue.append_column("release", pa.array([Release.open(release).info.name] * 2))
    ghost = queue.set_column(0, "id_str", pa.array(["syn_000001", "ghost"]))
    with pytest.raises(ValueError, match="not in the release's sources: ghost"):
        write_manifest(ghost, release, tmp_path / "m")
    with pytest.raises(ValueError, match="missing queue column"):
        write_manifest(queue.drop_columns(["rank"]), release, tmp_path / "m")
    assert image_name("a/b c", "png").startswith("a_b_c-") and image_name("syn_1", "png") == "syn_1.png"
    assert image_name("a/b", "png") != image_name("a_b", "png")


def test_queue_manifest_command(release, queue_dir, tmp_path):
    result = runner.invoke(app, ["queue", "manifest", "--queue", str(queue_dir), "--release", str(release),
                                 "--out", str(tmp_path / "m"), "--format", "jpeg"])
    assert result.exit_code == 0, result.output
    assert "with 7 subjects" in " ".join(result.output.split())
    assert len(list((tmp_path / "m").glob("*.jpeg"))) == 7
    missing = runner.invoke(app, ["queue", "manifest", "--queue", str(tmp_path / "nope"), "--release", str(release),
                                  "--out", str(tmp_path / "m2")])
    assert missing.exit_code == 2 and "queue not found" in " ".join(missing.output.split())
