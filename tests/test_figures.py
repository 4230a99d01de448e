"""Report figures from a scored catalogue: the certainty grid shows the right galaxies; the histogram is a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from test_scoring_support import make_package, make_release

from zoobot_pipeline.catalogue import read_catalogue
from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import contact_sheet, render_rgb
from zoobot_pipeline.figures import acquisition_histogram, certainty_grid
from zoobot_pipeline.scoring.pipeline import score_release


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reports")
    release = make_release(root / "release", 40, 1, seed=2)
    score_release(release, make_package(root / "model"), root / "catalogue", progress=False)
    return release, root / "catalogue"


def test_certainty_grid_shows_the_least_then_the_most_certain(scored, tmp_path):
    release, catalogue = scored
    path = certainty_grid(catalogue, release, tmp_path / "grid.png", n=3, size=64)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    cell = sheet.shape[0] // 2  # a tile and its caption strip, as tall as the longest wrapped caption
    assert sheet.shape == (2 * cell, 3 * 64, 3) and cell > 64 + 4 * 13  # a line for acquisition and each answer
    table = read_catalogue(catalogue, ["id_str", "acquisition", "flag"])
    table = table.filter(pc.is_null(table["flag"]))
    order = np.argsort(table["acquisition"].to_numpy())
    least, most = table["id_str"][int(order[-1])].as_py(), table["id_str"][int(order[0])].as_py()
    cutouts = dict(release_cutouts(Release.open(release), [least, most]))
    bands = Release.open(release).bands
    np.testing.assert_array_equal(sheet[:64, :64], render_rgb(cutouts[least].data, bands, size=64))
    np.testing.assert_array_equal(sheet[cell : cell + 64, :64], render_rgb(cutouts[most].data, bands, size=64))


def test_captions_wrap_inside_their_own_tile():
    images = [np.zeros((64, 64, 3), dtype=np.uint8)] * 2
    sheet = contact_sheet(images, ["least certain: acq 0.004\nfeatured-or-disk 0.30 a-very-long-unbroken-word", ""],
                          columns=2)
    strip = sheet[64:]
    assert strip.shape[0] > 2 + 2 * 13  # wrapped to more than its two lines
    assert (strip[:, :64] < 255).any() and (strip[:, 64:] == 255).all()  # nothing spills into the neighbour's


def test_acquisition_histogram_is_a_png(scored, tmp_path):
    _, catalogue = scored
    path = acquisition_histogram(catalogue, tmp_path / "acq.png", queued=5)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 400)
    assert not list(tmp_path.glob(".tmp-*"))
