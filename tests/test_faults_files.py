"""Fault catalogue (issue 17): paths read from files stay inside their folder, YAML and JSON are loaded within bounds,
option ranges are checked up front, and a damaged or edited package, checkpoint or schema is one line naming the file
and the field, exit 2, with nothing outside the target changed and nothing the user had lost."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from cli_checks import error_line, tree
from test_scoring_support import make_package, make_release
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.errors import PackageError, SchemaError, ZoobotPipelineError
from zoobot_pipeline.io import file_sha256
from zoobot_pipeline.models.checkpoint import read_checkpoint_json, weights_path
from zoobot_pipeline.runtime.package import ModelPackage
from zoobot_pipeline.schemas import load_schema
from zoobot_pipeline.scoring import pipeline
from zoobot_pipeline.scoring.pipeline import ScoringError, score_release

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """``checkpoint/`` and ``package/`` of a tiny test_resnet (32 px), never modified: tests copy them."""
    root = tmp_path_factory.mktemp("model")
    make_package(root)
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("sim") / "release", 24, 1, seed=4)


@pytest.fixture
def package(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built / "package", tmp_path / "package"))


@pytest.fixture
def checkpoint(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built / "checkpoint", tmp_path / "checkpoint"))


def _outside(listing: dict[str, tuple[str, int, int]], target: str) -> dict[str, tuple[str, int, int]]:
    return {name: entry for name, entry in listing.items() if name != target and not name.startswith(f"{target}/")}


def _error_line(args: list[str]) -> str:
    """Run the CLI; it must exit 2 with one ``error:`` line on stderr and no traceback. Returns that line."""
    return error_line(runner.invoke(app, args))


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _score_fails(release: Path, package: Path, tmp_path: Path, *options: str) -> str:
    """``score`` must refuse before any output: ``--out`` not created, nothing else under ``tmp_path`` changed."""
    out = tmp_path / "catalogue"
    before = tree(tmp_path)
    line = _error_line(["score", "--release", str(release), "--model", str(package), "--out", str(out), "--quiet",
                        *options])
    assert not out.exists()
    assert tree(tmp_path) == before
    return line


def _export_fails(checkpoint: Path, tmp_path: Path) -> str:
    """``export`` must refuse: no package, no temporary directory, nothing under ``tmp_path`` changed."""
    out = tmp_path / "exported"
    before = tree(tmp_path)
    line = _error_line(["export", "--from", str(checkpoint), "--out", str(out)])
    assert not out.exists()
    assert tree(tmp_path) == before
    return line


# -- paths read from files stay inside their folder --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.onnx", "ABSOLUTE", "sub/../../outside.onnx"])
def test_a_variant_file_outside_the_package_is_refused(package, release, tmp_path, name):
    outside = tmp_path / "outside.onnx"
    shutil.copy(package / "model.onnx", outside)  # an identical graph: following the path would "work"
    name = str(outside) if name == "ABSOLUTE" else name
    _edit_json(package / "model.json", lambda meta: meta["variants"]["fp32"].update(file=name))
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and "variants.fp32.file" in line and name in line
    with pytest.raises(PackageError, match="not inside"):
        ModelPackage.open(package, verify=False)


def test_a_weights_file_outside_the_checkpoint_is_refused(checkpoint, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(checkpoint / "model.safetensors", elsewhere / "model.safetensors")
    _edit_json(checkpoint / "checkpoint.json",
               lambda meta: meta["weights"].update(file="../elsewhere/model.safetensors"))
    line = _export_fails(checkpoint, tmp_path)
    assert "checkpoint.json (weights.file)" in line and "../elsewhere/model.safetensors" in line
    with pytest.raises(ZoobotPipelineError, match=r"checkpoint\.json \(weights\.file\).*not inside"):
        weights_path(checkpoint, read_checkpoint_json(checkpoint))
    assert (elsewhere / "model.safetensors").is_file()


# -- resource exhaustion: YAML and JSON bounds, option ranges --------------------------------------------------------


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "problem"), [
    (BILLION_LAUGHS, "anchor &a is not allowed"),
    ("questions:\n  - name: a\n    answers: *x\n", "alias *x is not allowed"),
    ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
    ("questions:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), "nested deeper than 64 levels"),
    ("# padding\n" * 110_000, "larger than 1 MiB"),
])
def test_a_hostile_schema_fails_fast_with_the_file_named(tmp_path, text, problem):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    line = _error_line(["schema", "validate", str(path)])
    assert str(path) in line and problem in line
    with pytest.raises(SchemaError, match=re.escape(problem)):
        load_schema(path)


def test_non_utf8_yaml_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nquestions:\n  - name: a\n    answers: [x, y]\n".encode("latin-1"))
    line = _error_line(["schema", "validate", str(path)])
    assert str(path) in line and "not UTF-8" in line


@pytest.mark.parametrize(("option", "value"), [
    ("--mc-samples", "1000000"), ("--mc-samples", "-1"), ("--batch-size", "0"), ("--batch-size", "10000000"),
    ("--chunk-size", "0"), ("--chunk-size", "100000000"), ("--threads", "0"), ("--threads", "100000"),
    ("--seed", "-1"),
])
def test_score_option_ranges_are_checked_before_any_work(package, release, tmp_path, option, value):
    line = _score_fails(release, package, tmp_path, option, value)
    assert option in line and value in line


def test_options_that_would_not_fit_in_memory_are_refused(package, release, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_physical_memory", lambda: 1 << 30)
    with pytest.raises(ScoringError, match=r"--chunk-size 65536, --batch-size 4096, --mc-samples 1000 and "
                                           r"--prep-workers 0 need .* GiB"):
        score_release(release, package, tmp_path / "catalogue", chunk_size=65536, batch_size=4096, mc_samples=1000,
                      progress=False)
    assert not (tmp_path / "catalogue").exists()


def test_package_mc_samples_beyond_the_range_needs_the_option(package, release, tmp_path):
    _edit_json(package / "model.json", lambda meta: meta["mc_dropout"].update(samples=10**6))
    line = _score_fails(release, package, tmp_path)
    assert "mc_dropout.samples" in line and "--mc-samples" in line


def test_deeply_nested_or_huge_model_json_is_refused(package, release, tmp_path):
    meta = json.loads((package / "model.json").read_text())
    (package / "model.json").write_text(json.dumps(meta)[:-1] + ', "notes": ' + "[" * 5000 + "]" * 5000 + "}")
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and "nested deeper than 64 levels" in line
    (package / "model.json").write_text(json.dumps({**meta, "notes": "x" * (5 << 20)}))
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and "larger than 4 MiB" in line


# -- damaged or edited packages: one line naming the file ------------------------------------------------------------


def _replace_variant(package: Path, variant: str, data: bytes, name: str) -> None:
    (package / name).write_bytes(data)
    digest = file_sha256(package / name)
    _edit_json(package / "model.json", lambda meta: meta["variants"].update({variant: {"file": name,
                                                                                       "sha256": digest}}))


def test_garbage_onnx_with_an_updated_sha256_is_named(package, release, tmp_path):
    _replace_variant(package, "fp32", b"\x08\x07garbage, not a graph" * 10, "model.onnx")
    out = tmp_path / "catalogue"
    before = _outside(tree(tmp_path), "catalogue")
    line = _error_line(["score", "--release", str(release), "--model", str(package), "--out", str(out), "--quiet"])
    assert str(package / "model.onnx") in line and "cannot load this file as an ONNX model" in line
    assert _outside(tree(tmp_path), "catalogue") == before
    assert not list(out.rglob("*.parquet"))


@pytest.mark.parametrize(("name", "data"), [("model.fp16.onnx", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                                          ("notes.txt", b"an fp16 variant, made by hand\n")])
def test_a_variant_file_that_is_not_onnx_is_named(package, release, tmp_path, name, data):
    _replace_variant(package, "fp16", data, name)
    out = tmp_path / "catalogue"
    line = _error_line(["score", "--release", str(release), "--model", str(package), "--out", str(out), "--quiet",
                        "--variant", "fp16"])
    assert str(package / name) in line and "cannot load this file as an ONNX model" in line
    assert not list(out.rglob("*.parquet"))


def test_a_variant_graph_that_is_not_a_package_graph_is_named(package, release, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _replace_variant(package, "fp16", model.SerializeToString(), "model.fp16.onnx")
    line = _error_line(["score", "--release", str(release), "--model", str(package), "--out",
                        str(tmp_path / "catalogue"), "--quiet", "--variant", "fp16"])
    assert "model.fp16.onnx" in line and "not those of a model package" in line


def test_an_edited_input_shape_in_model_json_is_named(package, release, tmp_path):
    _edit_json(package / "model.json", lambda meta: meta["input"].update(shape=[3, 64, 64]))
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and "input.shape [3, 64, 64]" in line

    def both(meta):  # shape and preprocessing edited together: the graph itself disagrees
        meta["input"]["shape"] = [3, 64, 64]
        meta["preprocessing"]["input_size"] = 64
    _edit_json(package / "model.json", both)
    out = tmp_path / "catalogue"
    line = _error_line(["score", "--release", str(release), "--model", str(package), "--out", str(out), "--quiet"])
    assert "model.onnx" in line and "input.shape [3, 64, 64]" in line and "model.json" in line
    assert not list(out.rglob("*.parquet"))


@pytest.mark.parametrize(("edit", "field"), [
    (lambda meta: meta.pop("mc_dropout"), "mc_dropout"),
    (lambda meta: meta["mc_dropout"].update(rate=1.5), "mc_dropout.rate"),
    (lambda meta: meta.update(task="segmentation"), "task"),
    (lambda meta: meta.update(output_names="oops"), "output_names"),
    (lambda meta: meta["variants"].update(bf16={"file": "model.onnx", "sha256": "0"}), "bf16"),
    (lambda meta: meta["preprocessing"].update(input_size=0), "preprocessing"),
    (lambda meta: meta.update(schema=None), "schema"),
])
def test_a_malformed_model_json_names_the_field(package, release, tmp_path, edit, field):
    _edit_json(package / "model.json", edit)
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and field in line


def test_a_non_utf8_model_json_is_named(package, release, tmp_path):
    (package / "model.json").write_bytes((package / "model.json").read_bytes() + "\xe9".encode("latin-1"))
    line = _score_fails(release, package, tmp_path)
    assert "model.json" in line and "not UTF-8" in line


# -- damaged or edited checkpoints -----------------------------------------------------------------------------------


def test_pickled_bytes_in_the_safetensors_file_are_refused(checkpoint, tmp_path):
    import pickle

    (checkpoint / "model.safetensors").write_bytes(pickle.dumps({"weights": list(range(100))}, protocol=4))
    _edit_json(checkpoint / "checkpoint.json",
               lambda meta: meta["weights"].update(sha256=file_sha256(checkpoint / "model.safetensors")))
    line = _export_fails(checkpoint, tmp_path)
    assert "model.safetensors" in line and "not a safetensors file" in line and "pickle" in line


def test_an_edited_architecture_in_checkpoint_json_is_named(checkpoint, tmp_path):
    _edit_json(checkpoint / "checkpoint.json", lambda meta: meta["model"].update(architecture="resnet_9000"))
    line = _export_fails(checkpoint, tmp_path)
    assert "checkpoint.json (model.architecture)" in line and "'resnet_9000'" in line
    assert "timm.list_models()" in line
    _edit_json(checkpoint / "checkpoint.json", lambda meta: meta["model"].update(architecture="../../x y"))
    line = _export_fails(checkpoint, tmp_path)
    assert "checkpoint.json" in line and "model" in line and "architecture" in line


@pytest.mark.parametrize(("damage", "named"), [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("no-weights", "weights"),
    ("no-framework", "framework.name"),
    ("bad-size", "model: input_size"),
    ("bad-kind", "kind"),
    ("directory", "not a file"),
    ("latin-1", "not UTF-8"),
])
def test_a_malformed_checkpoint_json_names_the_file_and_field(checkpoint, tmp_path, damage, named):
    meta_path = checkpoint / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    if damage == "no-weights":
        meta.pop("weights")
    elif damage == "no-framework":
        meta["framework"] = "torch"
    elif damage == "bad-size":
        meta["model"]["input_size"] = "large"
    elif damage == "bad-kind":
        meta["kind"] = "distilled"
    if damage == "directory":
        meta_path.unlink()
        meta_path.mkdir()
    elif damage == "latin-1":
        meta_path.write_bytes(json.dumps({**meta, "notes": "caf\xe9"}, ensure_ascii=False).encode("latin-1"))
    elif damage.startswith(("{", "[")):
        meta_path.write_text(damage)
    else:
        meta_path.write_text(json.dumps(meta))
    line = _export_fails(checkpoint, tmp_path)
    assert "checkpoint.json" in line and named in line


def test_an_unknown_architecture_is_refused_before_training(tmp_path):
    release = tmp_path / "release"
    assert runner.invoke(app, ["simulate", "--out", str(release), "--galaxies", "12", "--tiles", "1",
                               "--tile-size", "256", "--labelled-fraction", "1"]).exit_code == 0
    out = tmp_path / "pretrained"
    before = tree(tmp_path)
    line = _error_line(["pretrain", "--release", str(release), "--out", str(out), "--architecture", "efficientnet_b99",
                        "--input-size", "32", "--epochs", "1", "--quiet"])
    assert "--architecture" in line and "'efficientnet_b99'" in line and "timm.list_models()" in line
    assert "efficientnet_b" in line.split("did you mean", 1)[1]
    assert not out.exists() and tree(tmp_path) == before


@pytest.mark.parametrize(("option", "value"), [("--mc-samples", "0"), ("--mc-samples", "5000"),
                                               ("--n-volunteers", "0"), ("--n-volunteers", "100000")])
def test_export_option_ranges_are_checked_before_any_work(checkpoint, tmp_path, option, value):
    out = tmp_path / "exported"
    line = _error_line(["export", "--from", str(checkpoint), "--out", str(out), option, value])
    assert f"{option} {value}" in line and "must be 1 to" in line
    assert not out.exists()


def test_weights_of_another_real_architecture_are_named(checkpoint, tmp_path):
    _edit_json(checkpoint / "checkpoint.json", lambda meta: meta["model"].update(architecture="resnet18"))
    line = _export_fails(checkpoint, tmp_path)
    assert "model.safetensors" in line and "do not fit" in line and "resnet18" in line
