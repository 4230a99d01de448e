"""The demo runs every stage that exists and leaves a readable summary, model and gallery."""

from __future__ import annotations

import json

from PIL import Image
from rich.console import Console

from zoobot_pipeline.demo import run_demo


def test_demo_writes_release_gallery_and_summary(tmp_path):
    summary = run_demo(tmp_path, n_galaxies=40, n_tiles=1, seed=3, architecture="test_resnet", input_size=32,
                       epochs=2, console=Console(quiet=True))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["check"] == summary["check"]
    assert saved["check"]["sources"] == 40 and saved["check"]["tree_violations"] == 0
    assert saved["check"]["labelled"] == 20
    assert saved["predicted_sources"] + saved["check"]["cutout_flags"]["rejected"] == 40
    assert (tmp_path / "model" / "checkpoint.json").is_file() and saved["best_val_nll"] > 0
    with Image.open(saved["gallery"]) as gallery:
        assert gallery.mode == "RGB" and gallery.width > 0
