"""ONNX export of a TensorFlow checkpoint with tf2onnx: the encoder once, then the head over ``S`` dropout masks.

The graph has the torch export's inputs and outputs (see ``zoobot_pipeline.runtime.package``): ``images``
``(B, C, H, W)`` and ``dropout_mask`` ``(B, S, F)`` in, ``outputs`` ``(B, S, n_outputs)`` and ``features`` ``(B, F)``
out. The masked head is a Keras model of its own (encoder, features times mask, the head's dense layer, the task's
activation), converted with ``tf2onnx.convert.from_keras`` and an explicit input signature (Keras 3's own
``model.export(format="onnx")`` fails on EfficientNetB0 here); the ONNX outputs are then renamed to the package's
names. :class:`~zoobot_pipeline.models.backend.ExportedGraph`'s ``reference`` runs that same Keras model, so the
exporter's parity check compares onnxruntime with Keras.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models.backend import ExportedGraph
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.models.tensorflow.checkpoint import framework_versions, load_checkpoint
from zoobot_pipeline.models.tensorflow.model import TFModel, head_activation
from zoobot_pipeline.runtime.package import INPUT_NAMES, OUTPUT_NAMES

__all__ = ["OPSET", "export_onnx", "masked_head_graph"]

OPSET = 18


def masked_head_graph(model: TFModel) -> keras.Model:
    """``(images, dropout_mask) -> (outputs, features)``: the encoder, then the head's dense layer over each masked
    copy of the features, then the task's activation (softmax for a classifier)."""
    images = keras.Input(model.encoder.input.shape[1:], name=INPUT_NAMES[0])
    mask = keras.Input((None, model.n_features), name=INPUT_NAMES[1])
    features = model.encoder(images)
    logits = model.dense(keras.ops.expand_dims(features, 1) * mask)
    outputs = keras.ops.softmax(logits, axis=-1) if model.task == "classification" else \
        head_activation(model.task, logits)
    return keras.Model([images, mask], [outputs, features], name="masked_head")


def _rename_outputs(proto: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """Give the graph's outputs the package's names (tf2onnx names them after Keras tensors)."""
    graph = proto.graph
    for output, name in zip(graph.output, names, strict=True):
        if output.name == name:
            continue
        for node in graph.node:
            node.output[:] = [name if value == output.name else value for value in node.output]
            node.input[:] = [name if value == output.name else value for value in node.input]
        output.name = name
    return proto


def export_onnx(checkpoint_dir: str | Path, onnx_path: str | Path) -> ExportedGraph:
    """Export a checkpoint to one self-contained ``onnx_path``; returns its description and a Keras reference."""
    meta = read_checkpoint_json(checkpoint_dir)
    model = load_checkpoint(checkpoint_dir)
    graph = masked_head_graph(model)
    preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
    size, channels = preprocessing.input_size, preprocessing.n_channels
    signature = (tf.TensorSpec((None, channels, size, size), tf.float32, name=INPUT_NAMES[0]),
                 tf.TensorSpec((None, None, model.n_features), tf.float32, name=INPUT_NAMES[1]))
    proto, _ = tf2onnx.convert.from_keras(graph, input_signature=signature, opset=OPSET)
    inputs = [value.name for value in proto.graph.input]
    if inputs != list(INPUT_NAMES):
        raise RuntimeError(f"tf2onnx named the inputs {inputs}, expected {list(INPUT_NAMES)}")
    onnx.save_model(_rename_outputs(proto, OUTPUT_NAMES), str(onnx_path))

    def reference(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, features = graph([images, masks], training=False)
        return outputs.numpy(), features.numpy()

    return ExportedGraph(
        task=model.task,
        output_names=tuple(meta["label_cols"]),
        schema=meta["schema"],
        preprocessing=preprocessing,
        n_features=model.n_features,
        dropout_rate=model.dropout_rate,
        architecture=meta["model"]["architecture"],
        framework={**framework_versions(), "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
                   "opset": OPSET, "exporter": "tf2onnx.convert.from_keras"},
        reference=reference,
    )
