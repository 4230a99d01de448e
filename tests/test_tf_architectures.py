"""The TensorFlow backend's real encoders (EfficientNetB0, ConvNeXtTiny), untrained at 32 px: checkpoints round-trip
and export to packages that pass the parity check, and ConvNeXt's exportable rewrite is the same network."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
keras = pytest.importorskip("keras")

from zoobot_pipeline.data.preprocessing import PreprocessingConfig  # noqa: E402
from zoobot_pipeline.export import ModelPackage, export_package  # noqa: E402
from zoobot_pipeline.models import ModelConfig  # noqa: E402
from zoobot_pipeline.models.tensorflow.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from zoobot_pipeline.models.tensorflow.model import build_model  # noqa: E402
from zoobot_pipeline.runtime.session import PackageSession  # noqa: E402

pytestmark = pytest.mark.tensorflow
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)


@pytest.mark.parametrize("architecture", ["efficientnet_b0", "convnext_tiny"])
def test_real_encoders_round_trip_and_export_with_parity(architecture, tmp_path):
    model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture=architecture), seed=0)
    norms = [layer for layer in model.encoder.layers[-1].layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all((n.momentum, n.epsilon) == (0.9, 1e-5) for n in norms)  # torch's batch norm (ConvNeXt has none)
    assert (len(norms) > 40) == (architecture == "efficientnet_b0")
    weights = model.dense.get_weights()
    model.dense.set_weights([np.random.default_rng(0).normal(0, 0.5, weights[0].shape).astype(np.float32),
                             weights[1]])  # outputs that vary with the input, as after training
    checkpoint = save_checkpoint(model, tmp_path / "ckpt", PREPROCESSING)
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    expected = model.net(images, training=False).numpy()
    np.testing.assert_array_equal(load_checkpoint(checkpoint).net(images, training=False).numpy(), expected)
    package = export_package(checkpoint, tmp_path / "package")
    meta = json.loads((package / "model.json").read_text())
    assert meta["architecture"] == architecture and meta["variants"]["fp32"]["parity"]["max_rel_diff"] < 1e-4
    outputs = PackageSession(ModelPackage.open(package)).predict(images, ["a", "b", "c"], mc_samples=0)
    np.testing.assert_allclose(outputs[:, 0], expected, rtol=1e-4)


def test_convnext_depthwise_and_erf_gelu_rewrite_is_keras_convnext():
    config = ModelConfig.from_preprocessing(PREPROCESSING, architecture="convnext_tiny")
    ours = build_model(config, seed=0).encoder.layers[-1]
    keras_own = keras.applications.ConvNeXtTiny(include_top=False, include_preprocessing=False, weights=None,
                                                input_shape=(32, 32, 3), pooling="avg")
    assert len(ours.weights) == len(keras_own.weights)
    for mine, theirs in zip(ours.weights, keras_own.weights, strict=True):
        value = keras.ops.convert_to_tensor(mine).numpy()
        if tuple(theirs.shape) != tuple(value.shape):  # grouped conv kernel (k, k, 1, C) vs depthwise (k, k, C, 1)
            value = value.transpose(0, 1, 3, 2)
        theirs.assign(value)
    images = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(ours(images).numpy(), keras_own(images).numpy(), rtol=1e-4, atol=1e-5)
