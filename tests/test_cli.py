"""The command line end to end: simulate, check, render, schema tools; bad input exits 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits
from PIL import Image
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.schemas import get_schema

runner = CliRunner()


def test_every_command_has_help():
    for args in (["--help"], ["simulate", "--help"], ["schema", "show", "--help"], ["schema", "list", "--help"],
                 ["schema", "validate", "--help"], ["release", "check", "--help"], ["render", "--help"],
                 ["pretrain", "--help"], ["finetune", "--help"], ["export", "--help"], ["score", "--help"],
                 ["catalogue", "summary", "--help"], ["rank", "--help"], ["queue", "manifest", "--help"],
                 ["queue", "upload", "--help"], ["queue", "merge-votes", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_simulate_check_and_render_through_the_console_script(tmp_path):
    release = tmp_path / "release"
    script = Path(sys.executable).parent / "zoobot-pipeline"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "zoobot_pipeline.cli"]
    subprocess.run([*command, "simulate", "--out", str(release), "--galaxies", "60", "--tiles", "2", "--seed", "1",
                    "--tile-size", "640"], check=True, capture_output=True)
    schema = get_schema("decals_dr5")
    sources = pq.read_table(release / "sources.parquet")
    votes = pq.read_table(release / "votes.parquet")
    assert sources.num_rows == 60 and set(sources["tile_id"].to_pylist()) == {"tile_0000", "tile_0001"}
    assert votes.column_names == ["id_str", *schema.label_cols]
    with fits.open(release / "tiles" / "tile_0000.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["G", "R", "Z"]

    check = runner.invoke(app, ["release", "check", str(release)])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert report["sources"] == 60 and report["tree_violations"] == 0 and report["labelled"] == votes.num_rows

    ids = sources["id_str"].to_pylist()[:2]
    rendered = runner.invoke(app, ["render", str(release), "--out", str(tmp_path / "png"), "--id", ids[0],
                                   "--id", ids[1], "--size", "128"])
    assert rendered.exit_code == 0, rendered.output
    for id_str in ids:
        image = np.asarray(Image.open(tmp_path / "png" / f"{id_str}.png"))
        assert image.shape == (128, 128, 3) and image.max() > 0


def test_release_check_fails_on_votes_that_break_the_tree(tmp_path):
    release = tmp_path / "release"
    assert runner.invoke(app, ["simulate", "--out", str(release), "--galaxies", "20", "--tiles", "1",
                               "--tile-size", "512"]).exit_code == 0
    votes = pq.read_table(release / "votes.parquet")
    column = "bar-dr5_strong"
    broken = votes.set_column(votes.column_names.index(column), column,
                              [np.asarray(votes[column]) + 100])
    pq.write_table(broken, release / "votes.parquet")
    result = runner.invoke(app, ["release", "check", str(release)])
    assert result.exit_code == 1
    assert "more votes on a question" in result.output


def test_bad_input_gives_a_message_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["release", "check", str(tmp_path)])
    assert result.exit_code == 2
    assert "release.json not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["schema", "show", "no_such_tree"])
    assert result.exit_code == 2 and "unknown schema 'no_such_tree'" in result.output
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--galaxies", "0"])
    assert result.exit_code == 2


def test_schema_commands(tmp_path):
    listed = runner.invoke(app, ["schema", "list"])
    assert listed.exit_code == 0 and "decals_dr5" in listed.output and "euclid" in listed.output
    shown = runner.invoke(app, ["schema", "show", "gz2"])
    assert "something-odd-gz2" in shown.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions:\n  - name: a\n    answers: [x]\n    asked_after: nowhere_y\n")
    result = runner.invoke(app, ["schema", "validate", str(bad)])
    assert result.exit_code == 2 and "question 'a' is asked after unknown answer" in result.output


def test_pretrain_then_finetune_from_the_command_line(tmp_path):
    from zoobot_pipeline.models import load_checkpoint, read_checkpoint_json

    release = tmp_path / "release"
    assert runner.invoke(app, ["simulate", "--out", str(release), "--galaxies", "40", "--tiles", "1",
                               "--tile-size", "512", "--labelled-fraction", "1"]).exit_code == 0
    pretrained = tmp_path / "pretrained"
    result = runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(pretrained),
                                 "--architecture", "test_resnet", "--input-size", "32", "--epochs", "2",
                                 "--batch-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = read_checkpoint_json(pretrained)
    assert meta["kind"] == "pretrained" and meta["model"]["architecture"] == "test_resnet"
    assert len(meta["metrics"]["history"]) == 2

    truth = pq.read_table(release / "truth.parquet")
    labels = tmp_path / "labels.csv"
    labels.write_text("id_str,smooth\n" + "".join(f"{i},{k == 'smooth'}\n" for i, k in
                                                  zip(truth["id_str"].to_pylist(), truth["kind"].to_pylist(),
                                                      strict=True)))
    finetuned = tmp_path / "finetuned"
    result = runner.invoke(app, ["finetune", "--checkpoint", str(pretrained), "--release", str(release),
                                 "--labels", str(labels), "--out", str(finetuned), "--task", "classification",
                                 "--label-column", "smooth", "--epochs", "2", "--batch-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(finetuned).class_names == ("False", "True")

    missing = runner.invoke(app, ["finetune", "--checkpoint", str(pretrained), "--release", str(release),
                                  "--labels", str(labels), "--out", str(tmp_path / "x"), "--task", "classification",
                                  "--label-column", "barred"])
    assert missing.exit_code == 2 and "barred" in missing.output
    both = runner.invoke(app, ["finetune", "--checkpoint", str(pretrained), "--from-scratch", "--release",
                               str(release), "--labels", str(labels), "--out", str(tmp_path / "y"), "--task",
                               "classification", "--label-column", "smooth"])
    assert both.exit_code == 2 and "--from-scratch" in both.output
