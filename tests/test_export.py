"""ONNX model packages: parity with torch, MC-dropout masks, reduced precisions, integrity and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.export import ExportError, ModelPackage, PackageError, export_package
from zoobot_pipeline.io import file_sha256
from zoobot_pipeline.models import FinetuneConfig, ModelConfig
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.job import build_finetune_model
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.runtime.session import PackageSession, check_device, dropout_masks
from zoobot_pipeline.stats import expected_fractions

PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(MODEL)
    with torch.no_grad():  # a head whose outputs vary with the input, as after training
        model.head.linear.weight.normal_(0.0, 0.5)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("ckpt") / "model", PREPROCESSING)


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory) -> Path:
    return export_package(checkpoint, tmp_path_factory.mktemp("pkg") / "package", mc_samples=5)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 80, 1, tile_size=512, seed=3)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


def test_package_contents_and_parity(package: Path, checkpoint: Path):
    meta = json.loads((package / "model.json").read_text())
    assert meta["task"] == "dirichlet" and meta["schema"]["name"] == "decals_dr5"
    assert meta["input"]["shape"] == [3, 32, 32] and meta["input"]["bands"] == ["g", "r", "z"]
    assert meta["mc_dropout"]["samples"] == 5 and meta["mc_dropout"]["rate"] == pytest.approx(0.2)
    assert meta["variants"]["fp32"]["sha256"] == file_sha256(package / "model.onnx")
    assert meta["variants"]["fp32"]["parity"]["max_rel_diff"] < 1e-4
    assert meta["training"]["weights_sha256"] == json.loads((checkpoint / "checkpoint.json").read_text())[
        "weights"]["sha256"]
    assert not list(package.parent.glob(".tmp-*"))

    pkg = ModelPackage.open(package)
    assert pkg.output_names == tuple(pkg.schema.label_cols) and pkg.n_features > 0
    model = load_checkpoint(checkpoint)
    images = _images(6)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()  # eval mode: dropout off
    deterministic = PackageSession(pkg).predict(images, [f"g{i}" for i in range(6)], mc_samples=0)
    assert deterministic.shape == (6, 1, pkg.schema.n_answers)
    np.testing.assert_allclose(deterministic[:, 0], expected, rtol=1e-4)


def test_masked_head_equals_the_torch_head_with_the_same_masks(package: Path, checkpoint: Path):
    pkg = ModelPackage.open(package)
    model = load_checkpoint(checkpoint)
    images, ids = _images(3, seed=1), ["a", "b", "c"]
    masks = dropout_masks(ids, 7, pkg.n_features, pkg.dropout_rate, seed=4)
    outputs, features = PackageSession(pkg).run(images, masks)
    with torch.no_grad():
        encoded = model.encoder(torch.from_numpy(images))
        expected = 1 + 100 * torch.sigmoid(model.head.linear(encoded[:, None, :] * torch.from_numpy(masks)))
    np.testing.assert_allclose(features, encoded.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs, expected.numpy(), rtol=1e-4)


def test_masks_are_per_galaxy_and_drop_at_the_rate():
    masks = dropout_masks(["x", "y"], 50, 400, 0.2, seed=9)
    alone = dropout_masks(["y"], 50, 400, 0.2, seed=9)
    np.testing.assert_array_equal(masks[1], alone[0])
    assert not np.array_equal(masks[0], masks[1])
    assert set(np.unique(masks)) == {np.float32(0.0), np.float32(1.25)}
    assert (masks == 0).mean() == pytest.approx(0.2, abs=0.01)
    assert not np.array_equal(dropout_masks(["y"], 50, 400, 0.2, seed=10), alone)


def _ks_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([ks_2samp(a[:, j], b[:, j]).pvalue for j in range(a.shape[1])])


def test_mc_masks_match_full_stochastic_forward_passes(package: Path, checkpoint: Path):
    """S masked heads on one encoding have the distribution of S full passes with dropout on (fixed seeds)."""
    n = 3000
    image = _images(1, seed=2)
    masked = PackageSession(package).predict(image, ["galaxy"], mc_samples=n, seed=0)[0]
    model = load_checkpoint(checkpoint)
    model.head.train()  # dropout on in the head: the stochastic forward pass of Zoobot's MC dropout
    torch.manual_seed(0)
    with torch.no_grad():
        full = torch.cat([model(torch.from_numpy(image).expand(500, -1, -1, -1)) for _ in range(n // 500)]).numpy()
    assert masked.shape == full.shape == (n, 34)
    assert full.std(axis=0).min() > 0.01  # dropout really varies the outputs
    standard_error = np.sqrt(masked.var(axis=0) / n + full.var(axis=0) / n)
    assert np.all(np.abs(masked.mean(axis=0) - full.mean(axis=0)) < 5 * standard_error)
    assert _ks_pvalues(masked, full).min() > 0.001 / 34  # Bonferroni over answers
    # The test has power: masks at another rate are told apart.
    other = ModelPackage.open(package)
    other.meta["mc_dropout"]["rate"] = 0.4
    wrong = PackageSession(other).predict(image, ["galaxy"], mc_samples=n, seed=0)[0]
    assert _ks_pvalues(wrong, full).min() < 1e-6


def test_tampered_or_missing_model_is_refused(package: Path, tmp_path: Path):
    import shutil

    copy = Path(shutil.copytree(package, tmp_path / "copy"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.onnx: sha256 .* does not match model\.json"):
        ModelPackage.open(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(PackageError, match="listed in model.json but missing"):
        ModelPackage.open(copy)
    with pytest.raises(PackageError, match="not a model package"):
        ModelPackage.open(tmp_path)


def test_parity_failure_writes_no_package(checkpoint: Path, tmp_path: Path):
    with pytest.raises(ExportError, match="onnxruntime differs from torch"):
        export_package(checkpoint, tmp_path / "strict", rtol=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_int8_and_fp16_variants_record_their_accuracy(checkpoint: Path, release: Path, tmp_path: Path):
    out = export_package(checkpoint, tmp_path / "pkg", variants=["int8", "fp16"], calibration_release=release,
                         n_calibration=24, n_check=16)
    pkg = ModelPackage.open(out)
    assert pkg.variants == ("fp32", "int8", "fp16")
    for variant in ("int8", "fp16"):
        accuracy = pkg.meta["variants"][variant]["accuracy"]
        assert accuracy["n_galaxies"] == 16 and str(release.resolve()) in accuracy["inputs"]
        assert 0 < accuracy["mean_abs_diff"] <= accuracy["max_abs_diff"] < 0.2
    # Recompute the int8 record independently on the same held-out galaxies.
    from zoobot_pipeline.export.calibration import release_images

    check = release_images(release, pkg.preprocessing, 24 + 16, seed=0)[:16]
    ids = [str(i) for i in range(16)]
    fp32 = expected_fractions(PackageSession(pkg).predict(check, ids, 0)[:, 0].astype(np.float64), pkg.schema)
    int8 = expected_fractions(PackageSession(pkg, variant="int8").predict(check, ids, 0)[:, 0].astype(np.float64),
                              pkg.schema)
    assert np.abs(int8 - fp32).mean() == pytest.approx(pkg.meta["variants"]["int8"]["accuracy"]["mean_abs_diff"],
                                                      rel=1e-3)
    assert "QuantizeLinear" in {node.op_type for node in __import__("onnx").load(str(pkg.onnx_path("int8"))).graph.node}


def test_int8_without_calibration_release_is_refused(checkpoint: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="calibration release"):
        export_package(checkpoint, tmp_path / "pkg", variants=["int8"])
    with pytest.raises(ValueError, match="unknown precision variant"):
        export_package(checkpoint, tmp_path / "pkg", variants=["int4"])


def test_finetuned_classifier_exports_probabilities(tmp_path: Path):
    torch.manual_seed(1)
    config = FinetuneConfig(task="classification", label_columns=("kind",))
    model = build_finetune_model(MODEL, config, class_names=["disk", "elliptical", "merger"]).eval()
    checkpoint = save_checkpoint(model, tmp_path / "ckpt", PREPROCESSING)
    pkg = ModelPackage.open(export_package(checkpoint, tmp_path / "pkg", mc_samples=4))
    assert pkg.task == "classification" and pkg.output_names == ("disk", "elliptical", "merger")
    assert pkg.schema is None
    images = _images(5, seed=3)
    probabilities = PackageSession(pkg).predict(images, list("abcde"))
    assert probabilities.shape == (5, 4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    np.testing.assert_allclose(PackageSession(pkg).predict(images, list("abcde"), 0)[:, 0], expected, rtol=1e-4,
                               atol=1e-6)


def test_missing_gpu_provider_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        check_device("tpu")


def test_cli_export(checkpoint: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--from", str(checkpoint), "--out", str(tmp_path / "pkg"),
                                 "--mc-samples", "3"])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "max relative difference" in result.output
    assert ModelPackage.open(tmp_path / "pkg").mc_samples == 3
    missing = runner.invoke(app, ["export", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "p2")])
    assert missing.exit_code == 2 and "not a checkpoint directory" in missing.output
