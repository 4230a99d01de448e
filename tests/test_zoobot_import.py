"""Importing what Zoobot users hold: checkpoints and an encoder written by Zoobot 2.9.0 itself give Zoobot's own
outputs here (features, concentrations, logits; in torch to 1e-5 and through onnxruntime to 1e-4), answers are
matched by name, a pickle that would run code is refused without running it, and an imported encoder finetunes
(frozen and with unfrozen blocks), exports and scores like any checkpoint."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cli_checks import error_line, tree
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import CheckpointImportError
from zoobot_pipeline.export import export_package
from zoobot_pipeline.models import get_backend, load_checkpoint, read_checkpoint_json
from zoobot_pipeline.models.torch.finetune import FinetuneModel, encoder_blocks
from zoobot_pipeline.models.torch.model import ZoobotModel
from zoobot_pipeline.models.zoobot_import import IMPORTED_SCHEMA, ImportRequest
from zoobot_pipeline.runtime.session import make_session
from zoobot_pipeline.schemas import get_schema

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "zoobot-2.9"  # files Zoobot 2.9.0 wrote itself (see the README there)
TREE_CKPT = FIXTURES / "zoobot_tree_test_efficientnet.ckpt"
CLASSIFIER_CKPT = FIXTURES / "finetuned_classifier_test_efficientnet.ckpt"
ENCODER_DIR = FIXTURES / "hf_encoder_test_convnext"
SIZE = 64
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=SIZE)
runner = CliRunner()


def _expected(name: str) -> np.ndarray:
    return np.load(FIXTURES / f"{name}.npy")


def _inputs() -> torch.Tensor:
    return torch.from_numpy(np.load(FIXTURES / "inputs.npy"))


def assert_parity(actual, expected: np.ndarray, rtol: float) -> None:
    """Equal to ``rtol`` relative, with an absolute floor of 1e-6 of the largest value (for values near zero)."""
    actual = actual.detach().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6 * float(np.abs(expected).max()))


def _import(source: Path, out: Path, **options) -> Path:
    request = ImportRequest(source=source, preprocessing=options.pop("preprocessing", PREPROCESSING), **options)
    return get_backend("torch").import_zoobot(request, out)


def _lightning(tmp_path: Path, name: str, state_dict: dict, hyper_parameters: dict | None) -> Path:
    """A checkpoint re-saved from a fixture's tensors (as Zoobot users do with ``torch.save``)."""
    checkpoint = {"state_dict": state_dict}
    if hyper_parameters is not None:
        checkpoint["hyper_parameters"] = hyper_parameters
    torch.save(checkpoint, tmp_path / name)
    return tmp_path / name


def _fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tree_checkpoint(tmp_path_factory) -> Path:
    return _import(TREE_CKPT, tmp_path_factory.mktemp("imports") / "tree")


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory) -> Path:
    return _import(CLASSIFIER_CKPT, tmp_path_factory.mktemp("imports") / "classifier",
                   architecture="test_efficientnet")


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory) -> Path:
    return _import(ENCODER_DIR, tmp_path_factory.mktemp("imports") / "encoder")


def test_zoobot_tree_gives_zoobots_features_and_concentrations(tree_checkpoint: Path):
    meta = read_checkpoint_json(tree_checkpoint)
    fixtures = json.loads((FIXTURES / "fixtures.json").read_text())
    assert meta["kind"] == "pretrained" and meta["model"]["architecture"] == "test_efficientnet"
    assert meta["model"]["schema_name"] == "decals_dr5" and meta["label_cols"] == fixtures["zoobot_tree"]["label_cols"]
    assert meta["model"]["dropout_rate"] == 0.2 and meta["model"]["input_size"] == SIZE
    assert PreprocessingConfig.model_validate(meta["preprocessing"]) == PREPROCESSING
    assert meta["imported"] == {
        "source": str(TREE_CKPT.resolve()), "format": "lightning", "zoobot_class": "ZoobotTree",
        "file_sha256": hashlib.sha256(TREE_CKPT.read_bytes()).hexdigest(), "lightning": "2.6.6", "head": "imported"}

    model = load_checkpoint(tree_checkpoint)
    assert isinstance(model, ZoobotModel) and not model.training
    with torch.no_grad():
        assert_parity(model.encoder(_inputs()), _expected("zoobot_tree_features"), 1e-5)
        assert_parity(model(_inputs()), _expected("zoobot_tree_concentrations_no_dropout"), 1e-5)


def test_tree_answers_are_matched_by_name_not_by_position(tmp_path: Path):
    """The same weights saved with Zoobot's questions in reverse order (head rows to match) give the same
    concentrations per answer; a tree that is no built-in one is kept under its own name."""
    fixture = _fixture(TREE_CKPT)
    hp, weights = fixture["hyper_parameters"], fixture["state_dict"]
    pairs = hp["question_answer_pairs"]
    ours = [f"{q}{a}" for q, answers in pairs.items() for a in answers]
    reversed_pairs = dict(reversed(list(pairs.items())))
    theirs = [f"{q}{a}" for q, answers in reversed_pairs.items() for a in answers]
    rows = [ours.index(col) for col in theirs]
    shuffled = {**weights, "head.1.0.weight": weights["head.1.0.weight"][rows],
                "head.1.0.bias": weights["head.1.0.bias"][rows]}
    source = _lightning(tmp_path, "reversed.ckpt", shuffled, {**hp, "question_answer_pairs": reversed_pairs})
    model = load_checkpoint(_import(source, tmp_path / "reversed"))
    assert model.schema.name == "decals_dr5"
    with torch.no_grad():
        assert_parity(model(_inputs()), _expected("zoobot_tree_concentrations_no_dropout"), 1e-5)

    no_merging = {q: a for q, a in pairs.items() if q != "merging-dr5"}
    cut = {**weights, "head.1.0.weight": weights["head.1.0.weight"][:30],
           "head.1.0.bias": weights["head.1.0.bias"][:30]}
    source = _lightning(tmp_path, "cut.ckpt", cut, {**hp, "question_answer_pairs": no_merging})
    model = load_checkpoint(_import(source, tmp_path / "cut"))
    assert model.schema.name == IMPORTED_SCHEMA and model.schema.label_cols == ours[:30]
    assert model.schema.question("bar-dr5").asked_after.label_col == "disk-edge-on-dr5_no"
    with torch.no_grad():
        assert_parity(model(_inputs()), _expected("zoobot_tree_concentrations_no_dropout")[:, :30], 1e-5)


def test_finetuned_classifier_gives_zoobots_logits(classifier_checkpoint: Path, tmp_path: Path):
    meta = read_checkpoint_json(classifier_checkpoint)
    assert meta["kind"] == "finetuned" and meta["imported"]["zoobot_class"] == "FinetuneableZoobotClassifier"
    assert meta["class_names"] == ["0", "1"] and meta["finetune"]["label_columns"] == ["label"]
    assert meta["finetune"]["dropout_rate"] == 0.5 and meta["finetune"]["n_blocks"] == 0
    model = load_checkpoint(classifier_checkpoint)
    assert isinstance(model, FinetuneModel) and model.task == "classification"
    with torch.no_grad():
        assert_parity(model(_inputs()), _expected("finetuned_classifier_logits"), 1e-5)

    named = _import(CLASSIFIER_CKPT, tmp_path / "named", architecture="test_efficientnet",
                    class_names=("smooth", "featured"))
    assert read_checkpoint_json(named)["class_names"] == ["smooth", "featured"]


def test_regressor_and_a_finetuned_tree_saved_as_weights_alone(tmp_path: Path):
    classifier = _fixture(CLASSIFIER_CKPT)
    weights = {**classifier["state_dict"], "head.linear.weight": classifier["state_dict"]["head.linear.weight"][:1],
               "head.linear.bias": classifier["state_dict"]["head.linear.bias"][:1]}
    hp = {**classifier["hyper_parameters"], "label_col": "r50", "loss": "mse", "unit_interval": False}
    hp.pop("num_classes")
    source = _lightning(tmp_path, "regressor.ckpt", weights, hp)
    model = load_checkpoint(_import(source, tmp_path / "regressor", architecture="test_efficientnet"))
    assert model.task == "regression" and model.output_names == ("r50",)
    with torch.no_grad():
        assert_parity(model(_inputs()), _expected("finetuned_classifier_logits")[:, :1], 1e-5)
    sigmoid = _lightning(tmp_path, "sigmoid.ckpt", weights, {**hp, "unit_interval": True})
    with pytest.raises(CheckpointImportError, match="unit_interval"):
        _import(sigmoid, tmp_path / "sigmoid", architecture="test_efficientnet")

    bare = _lightning(tmp_path, "bare.ckpt", _fixture(TREE_CKPT)["state_dict"], None)
    with pytest.raises(CheckpointImportError, match="give --task"):
        _import(bare, tmp_path / "no-task", architecture="test_efficientnet", schema="decals_dr5")
    model = load_checkpoint(_import(bare, tmp_path / "tree", task="dirichlet", schema="decals_dr5",
                                    architecture="test_efficientnet"))
    assert isinstance(model, FinetuneModel) and model.task == "dirichlet" and model.schema.name == "decals_dr5"
    with torch.no_grad():
        assert_parity(model(_inputs()), _expected("zoobot_tree_concentrations_no_dropout"), 1e-5)


def test_encoder_gives_zoobots_features_under_a_flat_head(encoder_checkpoint: Path):
    meta = read_checkpoint_json(encoder_checkpoint)
    assert meta["kind"] == "pretrained" and meta["model"]["architecture"] == "test_convnext"
    assert meta["imported"]["format"] == "timm-encoder" and meta["imported"]["head"].startswith("none")
    assert meta["imported"]["file_sha256"] == hashlib.sha256(
        (ENCODER_DIR / "model.safetensors").read_bytes()).hexdigest()
    model = load_checkpoint(encoder_checkpoint)
    with torch.no_grad():
        assert_parity(model.encoder(_inputs()), _expected("hf_encoder_test_convnext_features"), 1e-5)
        flat = model(_inputs())
    assert flat.shape == (4, get_schema("decals_dr5").n_answers) and torch.all(flat == flat[0, 0])
    assert flat[0, 0].item() == pytest.approx(2.0, abs=1e-5)


def _onnx(package: Path) -> tuple[np.ndarray, np.ndarray]:
    images = np.load(FIXTURES / "inputs.npy")
    n_features = json.loads((package / "model.json").read_text())["mc_dropout"]["n_features"]
    masks = np.ones((len(images), 1, n_features), dtype=np.float32)
    outputs, features = make_session(package / "model.onnx").run(None, {"images": images, "dropout_mask": masks})
    return outputs[:, 0], features


def test_exported_imports_give_zoobots_numbers_through_onnxruntime(tree_checkpoint: Path,
                                                                    classifier_checkpoint: Path, tmp_path: Path):
    concentrations, features = _onnx(export_package(tree_checkpoint, tmp_path / "tree"))
    assert_parity(concentrations, _expected("zoobot_tree_concentrations_no_dropout"), 1e-4)
    assert_parity(features, _expected("zoobot_tree_features"), 1e-4)

    probabilities, _ = _onnx(export_package(classifier_checkpoint, tmp_path / "classifier"))
    logits = _expected("finetuned_classifier_logits").astype(np.float64)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert_parity(probabilities, softmax.astype(np.float32), 1e-4)


@pytest.fixture(scope="module")
def labelled_release(tmp_path_factory) -> tuple[Path, Path]:
    release = simulate_release(tmp_path_factory.mktemp("sim") / "release", 40, 1, tile_size=400, seed=0)
    truth = pq.read_table(release / "truth.parquet")
    labels = release.parent / "labels.parquet"
    pq.write_table(pa.table({"id_str": truth.column("id_str"),
                             "smooth": ["yes" if k == "smooth" else "no" for k in truth.column("kind").to_pylist()]}),
                   labels)
    return release, labels


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}


def test_imported_encoder_finetunes_frozen_and_unfrozen_then_exports_and_scores(
        encoder_checkpoint: Path, labelled_release: tuple[Path, Path], tmp_path: Path):
    release, labels = labelled_release
    imported = load_checkpoint(encoder_checkpoint).encoder.state_dict()
    common = ["finetune", "--checkpoint", str(encoder_checkpoint), "--release", str(release), "--labels", str(labels),
              "--task", "classification", "--label-column", "smooth", "--epochs", "2", "--batch-size", "8",
              "--patience", "2", "--lr", "0.01", "--quiet"]
    frozen = runner.invoke(app, [*common, "--out", str(tmp_path / "frozen")])
    assert frozen.exit_code == 0, frozen.output
    model = load_checkpoint(tmp_path / "frozen")
    assert model.n_blocks == 0 and _changed(imported, model.encoder.state_dict()) == set()
    assert read_checkpoint_json(tmp_path / "frozen")["model"]["architecture"] == "test_convnext"

    unfrozen = runner.invoke(app, [*common, "--out", str(tmp_path / "unfrozen"), "--n-blocks", "2"])
    assert unfrozen.exit_code == 0, unfrozen.output
    model = load_checkpoint(tmp_path / "unfrozen")
    top = {id(t) for block in encoder_blocks(model.encoder)[:2] for t in (*block.parameters(), *block.buffers())}
    top_names = {name for name, t in (*model.encoder.named_parameters(), *model.encoder.named_buffers())
                 if id(t) in top}
    changed = _changed(imported, model.encoder.state_dict())
    assert model.n_blocks == 2 and changed and changed <= top_names

    package = export_package(tmp_path / "unfrozen", tmp_path / "package")
    scored = runner.invoke(app, ["score", "--release", str(release), "--model", str(package),
                                 "--out", str(tmp_path / "catalogue"), "--quiet"])
    assert scored.exit_code == 0, scored.output
    parts = sorted((tmp_path / "catalogue" / "tiles").glob("*.parquet"))
    rows = pq.read_table(parts[0])
    assert len(parts) == 1 and rows.num_rows == pq.read_metadata(release / "sources.parquet").num_rows
    assert {"p_yes", "p_no"} <= set(rows.column_names)


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle's code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize(("layout", "message"), [("torch.save", "refused: it needs io.open"),
                                                 ("pickle protocol 2", "refused: it needs io.open"),
                                                 ("pickle protocol 5", "not a checkpoint torch can read")])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, layout: str, message: str):
    marker = tmp_path / "code-ran"
    source = tmp_path / "evil.ckpt"
    if layout == "torch.save":
        torch.save({"state_dict": _fixture(TREE_CKPT)["state_dict"], "hyper_parameters": _Payload(marker)}, source)
    else:  # plain containers around the payload (pickled tensors need torch's own globals, refused as well)
        checkpoint = {"state_dict": {"encoder.weight": [0.0]}, "hyper_parameters": _Payload(marker)}
        source.write_bytes(pickle.dumps(checkpoint, protocol=int(layout[-1])))
    result = runner.invoke(app, ["import", "zoobot", "--checkpoint", str(source), "--out", str(tmp_path / "out")])
    line = error_line(result)
    assert f"{source}: {message}" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    with open(source, "rb") as handle:  # the payload is live: an unrestricted unpickler runs it
        (torch.load(handle, weights_only=False) if layout == "torch.save" else pickle.load(handle))
    assert marker.exists()


def test_bad_sources_and_options_are_one_line_errors(tree_checkpoint: Path, tmp_path: Path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    pickled_encoder = tmp_path / "pickled-encoder"
    pickled_encoder.mkdir()
    (pickled_encoder / "config.json").write_text((ENCODER_DIR / "config.json").read_text())
    (pickled_encoder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    pooled = tmp_path / "max-pooled"
    pooled.mkdir()
    config = json.loads((ENCODER_DIR / "config.json").read_text())
    (pooled / "config.json").write_text(json.dumps({**config, "model_args": {**config["model_args"],
                                                                             "global_pool": "max"}}))
    (pooled / "model.safetensors").write_bytes((ENCODER_DIR / "model.safetensors").read_bytes())
    cases = [
        ([str(text)], "not a checkpoint torch can read"),
        ([str(tmp_path / "missing.ckpt")], "missing.ckpt"),
        ([str(pickled_encoder)], "pytorch_model.bin are pickles"),
        ([str(pooled)], "global_pool='max'"),
        ([str(tree_checkpoint)], "already a zoobot-pipeline checkpoint"),
        ([str(CLASSIFIER_CKPT)], "--architecture"),
        ([str(CLASSIFIER_CKPT), "--architecture", "hf_hub:mwalmsley/zoobot-encoder-convnext_nano"], "hub reference"),
        ([str(CLASSIFIER_CKPT), "--architecture", "test_efficientnet", "--task", "regression"],
         "FinetuneableZoobotClassifier"),
        ([str(CLASSIFIER_CKPT), "--architecture", "efficientnet_b0"], "do not fit timm's efficientnet_b0"),
        ([str(CLASSIFIER_CKPT), "--architecture", "test_efficientnett"], "unknown architecture"),
        ([str(TREE_CKPT), "--architecture", "test_resnet"], "contradicts"),
        ([str(TREE_CKPT), "--schema", "gz2"], "--schema gz2"),
        ([str(TREE_CKPT), "--schema", "no-such-tree"], "--schema"),
        ([str(TREE_CKPT), "--task", "tree"], "--task"),
        ([str(TREE_CKPT), "--task", "classification"], "Dirichlet head"),
        ([str(TREE_CKPT), "--preprocessing", "from_images"], "channel"),
    ]
    for arguments, expected in cases:
        out = tmp_path / "out"
        result = runner.invoke(app, ["import", "zoobot", "--input-size", str(SIZE), "--out", str(out),
                                     "--checkpoint", *arguments])
        assert expected in error_line(result), (arguments, result.stderr)
        assert not out.exists(), arguments

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    before = tree(occupied)
    result = runner.invoke(app, ["import", "zoobot", "--checkpoint", str(TREE_CKPT), "--out", str(occupied)])
    assert "not empty" in error_line(result) and tree(occupied) == before


def test_cli_imports_and_describes_the_checkpoint(tmp_path: Path):
    for arguments in (["import", "--help"], ["import", "zoobot", "--help"]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(app, ["import", "zoobot", "--checkpoint", str(ENCODER_DIR), "--out", str(tmp_path / "enc"),
                                 "--preset", "gz_decals", "--input-size", str(SIZE)])
    assert result.exit_code == 0, result.output
    assert "test_convnext" in result.output and "encoder (timm-encoder)" in result.output
    meta = read_checkpoint_json(tmp_path / "enc")
    assert meta["imported"]["zoobot_class"] == "encoder" and meta["preprocessing"]["input_size"] == SIZE
