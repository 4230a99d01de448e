"""The TensorFlow backend: a tiny local pretrain, no-pickle checkpoints, encoders and head, augmentations, export to
the package format and scoring, parity refusal, finetuning with frozen and unfrozen blocks, refusals, the CLI and
import isolation. One tiny pretrained checkpoint is trained once and shared."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
tf = pytest.importorskip("tensorflow")

import torch.nn.functional as F  # noqa: E402
from cli_checks import error_line  # noqa: E402
from test_scoring_support import make_package, make_release  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from zoobot_pipeline.catalogue import read_catalogue  # noqa: E402
from zoobot_pipeline.cli import app  # noqa: E402
from zoobot_pipeline.data.preprocessing import PreprocessingConfig  # noqa: E402
from zoobot_pipeline.data.synthetic.simulate import simulate_release  # noqa: E402
from zoobot_pipeline.errors import UnavailableError, UnknownNameError, ZoobotPipelineError  # noqa: E402
from zoobot_pipeline.export import ExportError, ModelPackage, export_package  # noqa: E402
from zoobot_pipeline.models import (  # noqa: E402
    AugmentationConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    evaluate,
    finetune,
    get_backend,
    load_checkpoint,
    predict,
    pretrain,
    read_checkpoint_json,
)
from zoobot_pipeline.models.images import load_labelled_images  # noqa: E402
from zoobot_pipeline.models.tensorflow.augment import View, render_views  # noqa: E402
from zoobot_pipeline.models.tensorflow.checkpoint import save_checkpoint  # noqa: E402
from zoobot_pipeline.models.tensorflow.finetune import encoder_blocks  # noqa: E402
from zoobot_pipeline.models.tensorflow.model import build_model  # noqa: E402
from zoobot_pipeline.models.tensorflow.train import model_loss  # noqa: E402
from zoobot_pipeline.runtime.session import PackageSession  # noqa: E402
from zoobot_pipeline.schemas import get_schema  # noqa: E402
from zoobot_pipeline.scoring.pipeline import score_release  # noqa: E402

pytestmark = pytest.mark.tensorflow
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=4, batch_size=16, patience=4, seed=0,
                          augmentation=AugmentationConfig(crop_scale=(0.9, 1.0)))
FINETUNE_TRAINING = TrainingConfig(lr=1e-2, epochs=3, batch_size=16, patience=3, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


@pytest.fixture(scope="module")
def pretrained(release, tmp_path_factory) -> Path:
    """The shared tiny TensorFlow checkpoint: test_resnet at 32 px, 4 epochs on 60 simulated galaxies."""
    out = tmp_path_factory.mktemp("tf") / "pretrained"
    return pretrain(release, release / "votes.parquet", out, MODEL, TRAINING, PREPROCESSING, framework="tensorflow")


@pytest.fixture(scope="module")
def package(pretrained, tmp_path_factory) -> Path:
    return export_package(pretrained, tmp_path_factory.mktemp("tfpkg") / "package", mc_samples=5)


@pytest.fixture(scope="module")
def labels(release: Path) -> Path:
    truth = pq.read_table(release / "truth.parquet")
    table = pa.table({"id_str": truth.column("id_str"),
                      "smooth": ["yes" if k == "smooth" else "no" for k in truth.column("kind").to_pylist()]})
    pq.write_table(table, release.parent / "labels.parquet")
    return release.parent / "labels.parquet"


def test_local_pretraining_keeps_the_best_epoch_and_records_the_framework(pretrained, release):
    meta = read_checkpoint_json(pretrained)
    assert meta["framework"]["name"] == "tensorflow" and meta["framework"]["version"] == tf.__version__
    assert meta["framework"]["keras"].startswith("3.") and meta["kind"] == "pretrained"
    history = meta["metrics"]["history"]
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]
    val_losses = [h["val_loss"] for h in history]
    assert meta["metrics"]["best_val_loss"] == min(val_losses)
    assert meta["metrics"]["best_epoch"] == int(np.argmin(val_losses))
    assert history[0]["lr"] == pytest.approx(3e-3) and history[-1]["lr"] < history[1]["lr"]  # cosine, per step
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] == meta["metrics"]["n_labelled"] <= 60
    # the written weights are the best epoch's: its validation loss, recomputed from the images
    model = load_checkpoint(pretrained)
    data = load_labelled_images(release, release / "votes.parquet", model.schema, PREPROCESSING)
    from zoobot_pipeline.models.images import validation_mask

    val = data.subset(validation_mask(data.ids, TRAINING.val_fraction, TRAINING.seed))
    loss = float(model_loss(model)(model.net(val.images, training=False), val.targets.astype(np.float32)))
    assert loss == pytest.approx(meta["metrics"]["best_val_loss"], rel=1e-4)
    table = predict(pretrained, release)
    assert table.num_rows == len(data.ids) and "smooth-or-featured-dr5_smooth_fraction" in table.column_names
    metrics = evaluate(pretrained, release, release / "votes.parquet")
    assert metrics["n"] == len(data.ids) and math.isfinite(metrics["loss"]) and "calibration" in metrics


def test_checkpoints_round_trip_and_tampered_or_pickled_weights_are_refused(pretrained, tmp_path):
    model = load_checkpoint(pretrained)
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    copy = save_checkpoint(model, tmp_path / "copy", PREPROCESSING)
    again = load_checkpoint(copy)
    np.testing.assert_array_equal(again.net(images, training=False).numpy(), model.net(images, training=False).numpy())
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZoobotPipelineError, match="sha256 does not match"):
        load_checkpoint(copy)
    import hashlib
    import pickle

    weights.write_bytes(pickle.dumps({"kernel": [1.0]}))  # a pickle with a matching sha256 is still refused
    meta = json.loads((copy / "checkpoint.json").read_text())
    meta["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ZoobotPipelineError, match="not a safetensors file.*never unpickles"):
        load_checkpoint(copy)


def test_encoders_head_and_unknown_names():
    schema = get_schema("decals_dr5")
    sizes = {"efficientnet_b0": 1280, "convnext_tiny": 768, "test_resnet": 96}
    for architecture, n_features in sizes.items():
        model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture=architecture), seed=0)
        assert model.n_features == n_features and len(encoder_blocks(model)) == {"efficientnet_b0": 9,
                                                                                 "convnext_tiny": 6,
                                                                                 "test_resnet": 5}[architecture]
        assert model.net.input.shape[1:] == (3, 32, 32)  # channels-first, as the package's images
    kernel, bias = model.dense.get_weights()
    assert np.abs(kernel).max() <= 1 / math.sqrt(96) and kernel.shape == (96, schema.n_answers)
    np.testing.assert_allclose(bias, math.log(1 / 99))  # concentration 2 for every answer, as torch's head
    outputs = model.net(np.zeros((1, 3, 32, 32), np.float32), training=False).numpy()
    assert outputs.shape == (1, schema.n_answers) and ((outputs > 1) & (outputs < 101)).all()
    backend = get_backend("tensorflow")
    with pytest.raises(UnknownNameError, match="--architecture: unknown architecture 'resnet50'.*efficientnet_b0"):
        backend.check_model(ModelConfig(architecture="resnet50"))
    with pytest.raises(UnavailableError, match="stochastic depth"):
        backend.check_model(ModelConfig(architecture="convnext_tiny", drop_path_rate=0.1))


def test_augmented_views_equal_torchs_affine_resample_for_the_same_parameters():
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    views = [View(1, True, 0.7, 0.9, (0.05, -0.08)), View(0, False, -2.5, 0.85, (-0.1, 0.0)),
             View(3, False, 0.0, 1.0, (0.0, 0.0))]
    got = render_views(images, views)
    for image, view, result in zip(images, views, got, strict=True):
        out = torch.rot90(torch.from_numpy(image), view.quarter_turns, dims=(-2, -1))
        out = out.flip(-1) if view.flip else out
        c, s = math.cos(view.angle) * view.scale, math.sin(view.angle) * view.scale
        theta = torch.tensor([[[c, -s, view.shift[0]], [s, c, view.shift[1]]]], dtype=torch.float32)
        grid = F.affine_grid(theta, [1, *out.shape], align_corners=False)
        expected = F.grid_sample(out[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        np.testing.assert_allclose(result, expected.numpy(), atol=2e-5)


def test_export_scores_a_release_with_the_columns_of_a_torch_package(package, pretrained, tmp_path):
    meta = json.loads((package / "model.json").read_text())
    assert meta["framework"]["name"] == "tensorflow" and meta["framework"]["exporter"] == "tf2onnx.convert.from_keras"
    assert meta["variants"]["fp32"]["parity"]["max_rel_diff"] < 1e-4
    pkg = ModelPackage.open(package)
    model = load_checkpoint(pretrained)
    images = np.random.default_rng(2).random((5, 3, 32, 32), dtype=np.float32)
    deterministic = PackageSession(pkg).predict(images, [f"g{i}" for i in range(5)], mc_samples=0)
    np.testing.assert_allclose(deterministic[:, 0], model.net(images, training=False).numpy(), rtol=1e-4)

    release = make_release(tmp_path / "release", 40, 2, seed=1)
    ours = read_catalogue(score_release(release, package, tmp_path / "tf_cat", progress=False).out_dir)
    theirs = read_catalogue(score_release(release, make_package(tmp_path / "torch"), tmp_path / "torch_cat",
                                          progress=False).out_dir)
    assert ours.num_rows > 0 and ours.column_names == theirs.column_names
    assert sorted(ours.column("id_str").to_pylist()) == sorted(theirs.column("id_str").to_pylist())


def test_broken_parity_is_refused_and_leaves_no_package(pretrained, tmp_path, monkeypatch):
    backend = get_backend("tensorflow")
    real = backend.export_onnx

    def perturbed(checkpoint_dir, onnx_path):
        graph = real(checkpoint_dir, onnx_path)

        def reference(images, masks):
            outputs, features = graph.reference(images, masks)
            return outputs * (1 + 1e-3), features

        return type(graph)(**{**graph.__dict__, "reference": reference})

    monkeypatch.setattr(type(backend), "export_onnx", lambda self, c, o: perturbed(c, o))
    with pytest.raises(ExportError, match="differs from tensorflow by up to"):
        export_package(pretrained, tmp_path / "package")
    assert not (tmp_path / "package").exists() and not list(tmp_path.glob(".tmp-*"))


def test_finetune_classification_frozen_and_unfrozen_blocks(pretrained, release, labels, tmp_path):
    base = load_checkpoint(pretrained)
    base_blocks = [[w.copy() for layer in block for w in layer.get_weights()] for block in encoder_blocks(base)]
    for n_blocks, changed in ((0, 0), (2, 2)):
        config = FinetuneConfig(task="classification", label_columns=("smooth",), n_blocks=n_blocks)
        out = finetune(pretrained, release, labels, tmp_path / f"n{n_blocks}", config, FINETUNE_TRAINING,
                       framework="tensorflow")
        tuned = load_checkpoint(out)
        assert tuned.kind == "finetuned" and tuned.class_names == ("no", "yes")
        blocks = [[w for layer in block for w in layer.get_weights()] for block in encoder_blocks(tuned)]
        moved = [not all(np.array_equal(a, b) for a, b in zip(old, new, strict=True))
                 for old, new in zip(base_blocks, blocks, strict=True)]
        assert moved == [i < changed for i in range(len(moved))], (n_blocks, moved)
        history = read_checkpoint_json(out)["metrics"]["history"]
        assert len(history) == 3 and all(math.isfinite(h["val_loss"]) for h in history)
    table = predict(out, release, ["syn_000001"])
    assert set(table.column_names) == {"id_str", "predicted", "p_no", "p_yes"}
    assert float(table["p_no"][0].as_py()) + float(table["p_yes"][0].as_py()) == pytest.approx(1, abs=1e-5)
    assert {"n", "loss", "accuracy"} <= set(evaluate(out, release, labels))
    with pytest.raises(ZoobotPipelineError, match="--n-blocks 99: must be within \\[0, 5\\]"):
        finetune(pretrained, release, labels, tmp_path / "bad",
                 FinetuneConfig(task="classification", label_columns=("smooth",), n_blocks=99), FINETUNE_TRAINING,
                 framework="tensorflow")


def test_finetune_regression_and_dirichlet_on_another_tree(pretrained, tmp_path):
    gz2 = simulate_release(tmp_path / "gz2", 40, 1, tile_size=512, seed=0, schema="gz2", labelled_fraction=1.0)
    config = FinetuneConfig(task="dirichlet", schema_name="gz2", n_blocks=1)
    out = finetune(pretrained, gz2, gz2 / "votes.parquet", tmp_path / "tree", config, FINETUNE_TRAINING,
                   framework="tensorflow")
    assert read_checkpoint_json(out)["schema"]["name"] == "gz2"
    assert "smooth-or-featured-gz2_smooth_fraction" in predict(out, gz2, ["syn_000001"]).column_names
    truth = pq.read_table(gz2 / "truth.parquet")
    pq.write_table(pa.table({"id_str": truth.column("id_str"), "r50": truth.column("r50_arcsec")}),
                   tmp_path / "r50.parquet")
    regression = finetune(pretrained, gz2, tmp_path / "r50.parquet", tmp_path / "reg",
                          FinetuneConfig(task="regression", label_columns=("r50",), n_blocks="all"),
                          FINETUNE_TRAINING, framework="tensorflow")
    metrics = evaluate(regression, gz2, tmp_path / "r50.parquet")
    assert math.isfinite(metrics["rmse"]) and metrics["rmse"] > 0
    package = export_package(regression, tmp_path / "reg_pkg")
    assert ModelPackage.open(package).meta["task"] == "regression"


def test_refusals_before_any_work(pretrained, release, tmp_path):
    with pytest.raises(UnavailableError, match="^gpus_per_worker=1 but TensorFlow sees no GPU here"):
        pretrain(release, release / "votes.parquet", tmp_path / "a", MODEL, TRAINING, PREPROCESSING,
                 workers=2, gpus_per_worker=1, framework="tensorflow")
    with pytest.raises(UnavailableError, match="fp32 only"):
        pretrain(release, release / "votes.parquet", tmp_path / "b", MODEL,
                 TRAINING.model_copy(update={"precision": "bf16"}), PREPROCESSING, framework="tensorflow")
    with pytest.raises(UnavailableError, match="Zoobot checkpoints are PyTorch"):
        get_backend("tensorflow").import_zoobot(None, tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_cli_framework_option(pretrained, release, labels, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(tmp_path / "cli"),
                                 "--framework", "tensorflow", "--architecture", "test_resnet", "--input-size", "32",
                                 "--epochs", "1", "--batch-size", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint_json(tmp_path / "cli")["framework"]["name"] == "tensorflow"
    conflict = runner.invoke(app, ["finetune", "--release", str(release), "--labels", str(labels), "--out",
                                   str(tmp_path / "ft"), "--task", "classification", "--label-column", "smooth",
                                   "--checkpoint", str(pretrained), "--framework", "torch"])
    assert "tensorflow checkpoint" in error_line(conflict) and not (tmp_path / "ft").exists()
    gpus = runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(tmp_path / "w"),
                               "--framework", "tensorflow", "--workers", "2", "--gpus-per-worker", "1",
                               "--input-size", "32"])
    assert "TensorFlow sees no GPU here (tensorflow 2." in error_line(gpus)
    assert not (tmp_path / "w").exists()


def test_import_and_scoring_never_load_tensorflow(package, tmp_path):
    release = make_release(tmp_path / "release", 16, 1, seed=2)
    code = f"""
import sys
import zoobot_pipeline, zoobot_pipeline.models, zoobot_pipeline.scoring
from zoobot_pipeline.scoring.pipeline import score_release
score_release({str(release)!r}, {str(package)!r}, {str(tmp_path / "cat")!r}, progress=False)
loaded = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
assert not loaded, loaded
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr[-2000:]
    assert (tmp_path / "cat" / "catalogue.json").is_file()
