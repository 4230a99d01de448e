"""The command line end to end: simulate, check, render, schema tools; bad input exits 2 with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from cli_checks import error_line
from PIL import Image
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.data.preprocessing import available_presets
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


def test_choices_are_the_library_lists():
    from zoobot_pipeline.active.acquisition import available_acquisitions
    from zoobot_pipeline.active.batch_sampling import SAMPLINGS, STRATEGY_SHORTHANDS
    from zoobot_pipeline.data.render import IMAGE_FORMATS
    from zoobot_pipeline.models import FINETUNE_TASKS
    from zoobot_pipeline.runtime.devices import DEVICES
    from zoobot_pipeline.runtime.package import PRECISION_VARIANTS

    expected = {
        ("score", "--device"): DEVICES,
        ("score", "--variant"): PRECISION_VARIANTS,
        ("export", "--variant"): tuple(v for v in PRECISION_VARIANTS if v != "fp32"),
        ("finetune", "--task"): FINETUNE_TASKS,
        ("rank", "--acquisition"): (*available_acquisitions(), *STRATEGY_SHORTHANDS),
        ("rank", "--sampling"): SAMPLINGS,
        ("render", "--format"): IMAGE_FORMATS,
        ("queue manifest", "--format"): IMAGE_FORMATS,
    }
    for (command, option), values in expected.items():
        shown = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "400"})
        listed = next(line for line in shown.output.splitlines() if line.lstrip("│ *").startswith(f"{option} "))
        assert "|".join(values) in listed, (command, option, listed)
        refused = runner.invoke(app, [*command.split(), option, "no-such-choice"])
        assert refused.exit_code == 2 and "no-such-choice" in refused.output, (command, option, refused.output)


def test_pretrain_help_lists_every_preprocessing_preset():
    shown = runner.invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert all(name in shown.output for name in available_presets()) and "from_images" in available_presets()


def test_every_kind_of_user_error_is_one_line_and_exit_2(tmp_path):
    line = error_line(runner.invoke(app, ["pretrain", "--release", str(tmp_path), "--out", str(tmp_path / "o"),
                                               "--preprocessing", "no_such_preset"]))
    assert "--preprocessing" in line and "'no_such_preset'" in line
    assert all(name in line for name in available_presets())

    line = error_line(runner.invoke(app, ["simulate", "--out", str(tmp_path / "s"), "--schema", "no_tree"]))
    assert "unknown schema 'no_tree'" in line

    missing = tmp_path / "no_release"
    line = error_line(runner.invoke(app, ["release", "check", str(missing)]))
    assert str(missing) in line
    line = error_line(runner.invoke(app, ["render", str(missing), "--out", str(tmp_path / "png")]))
    assert str(missing) in line

    line = error_line(runner.invoke(app, ["pretrain", "--release", str(tmp_path), "--out", str(tmp_path / "o"),
                                               "--epochs", "0"]))
    assert "TrainingConfig" in line and "epochs" in line and "(got 0)" in line

    line = error_line(runner.invoke(app, ["pretrain", "--release", str(tmp_path), "--out", str(tmp_path / "o"),
                                               "--preprocessing", str(tmp_path / "missing.json")]))
    assert str(tmp_path / "missing.json") in line


def test_an_unavailable_device_is_one_line_and_exit_2(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    line = error_line(runner.invoke(app, ["score", "--release", str(tmp_path), "--model", str(tmp_path),
                                               "--out", str(tmp_path / "cat"), "--device", "cuda"]))
    assert "cuda" in line.lower()


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "zoobot_pipeline.cli", "--version"], check=True,
                          capture_output=True, text=True)
    assert done.stdout.startswith("zoobot-pipeline ")


_FROZEN_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))  # runs after the command's exit handlers
from zoobot_pipeline.cli import run
sys.argv = ["zoobot-pipeline", "--version"]
run()
"""


def test_the_executable_freezes_the_heap_at_exit_and_is_the_installed_entry_point():
    from importlib.metadata import entry_points

    done = subprocess.run([sys.executable, "-c", _FROZEN_AT_EXIT], check=True, capture_output=True, text=True)
    version, frozen = done.stdout.splitlines()
    assert version.startswith("zoobot-pipeline ")
    assert int(frozen.removeprefix("frozen at exit: ")) > 10_000  # the imports' objects, out of the final collections
    (script,) = entry_points(group="console_scripts", name="zoobot-pipeline")
    assert script.value == "zoobot_pipeline.cli:run"


_BROKEN_PIPE = """
import typer
from zoobot_pipeline.cli._options import UserErrorsGroup
app = typer.Typer(cls=UserErrorsGroup)
@app.command()
def write() -> None:
    raise BrokenPipeError(32, "Broken pipe")  # what a write to a pipe whose reader has exited raises
@app.command()
def other() -> None:
    'A second command, so that write is a sub-command as in zoobot-pipeline.'
app()
"""


def test_a_reader_that_stops_early_is_not_an_internal_error(tmp_path):
    """`zoobot-pipeline ... | head`, the reader gone while the command writes: exit 1 quietly, no 'internal error',
    no traceback file."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-c", _BROKEN_PIPE, "write"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1 and done.stderr == "", done.stderr
    assert not list((tmp_path / "state").rglob("traceback-*"))
