"""Fault catalogue, data loss: ``pretrain``, ``finetune`` and ``export`` never destroy what the user had at ``--out``.

An ``--out`` that is a file, or is, contains or lies inside one of the command's inputs, is refused; an existing
non-empty directory that is not the command's own earlier output is refused unless ``--overwrite``, and even then only
the command's own files are replaced. Every refusal is exit 2 with the path in one line, before any work, and leaves
the whole tree as it was.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from cli_checks import error_line, tree
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.export import ModelPackage
from zoobot_pipeline.io import file_sha256
from zoobot_pipeline.models import FinetuneConfig, ModelConfig, TrainingConfig, finetune, pretrain
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.model import build_model

torch.set_num_threads(2)
runner = CliRunner()
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TINY_PRETRAIN = ["--architecture", "test_resnet", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--quiet"]


def _user_folder(path: Path) -> Path:
    """A folder of the user's own files (one named like a file a model package has, none like a checkpoint's)."""
    (path / "data").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "data" / "table.csv").write_text("a,b\n1,2\n")
    (path / "model.onnx").write_bytes(b"my own onnx, not a package's")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A release (``release/``), a checkpoint (``ckpt/``) and a labels file (``labels.csv``) beside each other."""
    root = tmp_path_factory.mktemp("faults-out")
    release = simulate_release(root / "release", 40, 1, tile_size=512, seed=0, labelled_fraction=1.0)
    torch.manual_seed(0)
    save_checkpoint(build_model(MODEL).eval(), root / "ckpt", PREPROCESSING)
    ids = pq.read_table(release / "truth.parquet", columns=["id_str"])["id_str"].to_pylist()
    (root / "labels.csv").write_text("id_str,smooth\n" + "".join(f"{i},{n % 2 == 0}\n" for n, i in enumerate(ids)))
    return root


def test_export_into_its_own_checkpoint_is_refused_and_the_weights_are_intact(workspace: Path):
    checkpoint = workspace / "ckpt"
    before = tree(workspace)
    sha = file_sha256(checkpoint / "model.safetensors")
    for out in (checkpoint, checkpoint / "package", workspace):
        for extra in ([], ["--overwrite"]):
            line = error_line(runner.invoke(app, ["export", "--from", str(checkpoint), "--out", str(out),
                                                       *extra]))
            assert str(out) in line and str(checkpoint) in line and "input" in line
    assert tree(workspace) == before
    assert file_sha256(checkpoint / "model.safetensors") == sha and load_checkpoint(checkpoint) is not None


def test_export_reruns_into_its_own_earlier_package(workspace: Path, tmp_path: Path):
    checkpoint = workspace / "ckpt"
    out = tmp_path / "package"
    assert runner.invoke(app, ["export", "--from", str(checkpoint), "--out", str(out)]).exit_code == 0
    first = ModelPackage.open(out).meta["created"]
    again = runner.invoke(app, ["export", "--from", str(checkpoint), "--out", str(out), "--mc-samples", "3"])
    assert again.exit_code == 0, again.output
    package = ModelPackage.open(out)
    assert package.mc_samples == 3 and package.meta["created"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]  # no temporary directory left


def test_export_into_user_files_needs_overwrite_and_then_keeps_them(workspace: Path, tmp_path: Path):
    mine = _user_folder(tmp_path / "mine")
    before = tree(tmp_path)
    line = error_line(runner.invoke(app, ["export", "--from", str(workspace / "ckpt"), "--out", str(mine)]))
    assert str(mine) in line and "--overwrite" in line and "model.json" in line
    assert tree(tmp_path) == before

    done = runner.invoke(app, ["export", "--from", str(workspace / "ckpt"), "--out", str(mine), "--overwrite"])
    assert done.exit_code == 0, done.output
    package = ModelPackage.open(mine)
    assert package.meta["variants"]["fp32"]["file"] == "model.onnx"
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before and k != "mine" and k != "mine/model.onnx"} == \
        {k: v for k, v in before.items() if k != "mine" and k != "mine/model.onnx"}
    assert (mine / "notes.txt").read_text() == "my notes\n" and (mine / "data" / "table.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_training_into_a_folder_of_user_files_is_refused_and_nothing_changes(command: str, workspace: Path,
                                                                               tmp_path: Path):
    mine = _user_folder(tmp_path / "mine")
    before, inputs_before = tree(tmp_path), tree(workspace)
    args = {"pretrain": ["pretrain", "--release", str(workspace / "release"), *TINY_PRETRAIN],
            "finetune": ["finetune", "--checkpoint", str(workspace / "ckpt"), "--release", str(workspace / "release"),
                         "--labels", str(workspace / "labels.csv"), "--task", "classification", "--label-column",
                         "smooth", "--epochs", "1", "--quiet"]}[command]
    line = error_line(runner.invoke(app, [*args, "--out", str(mine)]))
    assert str(mine) in line and "checkpoint.json" in line and "--overwrite" in line
    assert tree(tmp_path) == before and tree(workspace) == inputs_before


def test_an_out_that_is_a_file_is_refused(workspace: Path, tmp_path: Path):
    taken = tmp_path / "taken"
    taken.write_text("not a directory\n")
    before = tree(tmp_path)
    for args in (["pretrain", "--release", str(workspace / "release"), *TINY_PRETRAIN],
                 ["export", "--from", str(workspace / "ckpt")]):
        for extra in ([], ["--overwrite"]):
            line = error_line(runner.invoke(app, [*args, "--out", str(taken), *extra]))
            assert str(taken) in line and "not a directory" in line
    assert tree(tmp_path) == before


def test_training_never_writes_over_or_into_its_inputs(workspace: Path):
    release, checkpoint = workspace / "release", workspace / "ckpt"
    before = tree(workspace)
    for out in (release, release / "model", workspace):
        for extra in ([], ["--overwrite"]):
            line = error_line(runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(out),
                                                       *extra, *TINY_PRETRAIN]))
            assert str(out) in line and str(release) in line
    config = FinetuneConfig(task="classification", label_columns=("smooth",))
    for out in (checkpoint, checkpoint / "finetuned"):
        with pytest.raises(ZoobotPipelineError, match="input") as refused:
            finetune(checkpoint, release, workspace / "labels.csv", out, config, overwrite=True)
        assert str(checkpoint) in str(refused.value)
    # the Ray run directory is checked too, before any cluster starts
    with pytest.raises(ZoobotPipelineError, match="Ray run directory") as refused:
        pretrain(release, release / "votes.parquet", workspace / "elsewhere", MODEL, TrainingConfig(epochs=1),
                 PREPROCESSING, workers=2, storage_path=release / "ray")
    assert str(release) in str(refused.value)
    assert tree(workspace) == before


def test_pretrain_with_overwrite_keeps_the_user_files_and_writes_the_checkpoint(workspace: Path, tmp_path: Path):
    mine = _user_folder(tmp_path / "mine")
    before = tree(tmp_path)
    result = runner.invoke(app, ["pretrain", "--release", str(workspace / "release"), "--out", str(mine),
                                 "--overwrite", *TINY_PRETRAIN])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(mine).config.architecture == "test_resnet"
    after = tree(tmp_path)
    assert {k: after[k] for k in before if k != "mine"} == {k: v for k, v in before.items() if k != "mine"}
    assert set(after) - set(before) == {"mine/checkpoint.json", "mine/model.safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .tmp-, .old- or .state- left

    # now it holds a checkpoint: a rerun replaces that, and still only that, without --overwrite
    again = runner.invoke(app, ["pretrain", "--release", str(workspace / "release"), "--out", str(mine),
                                *TINY_PRETRAIN])
    assert again.exit_code == 0, again.output
    final = tree(tmp_path)
    assert {k: final[k] for k in before if k != "mine"} == {k: v for k, v in before.items() if k != "mine"}
    assert set(final) == set(after)
