"""Keras 3 models: a ``keras.applications`` encoder (or a tiny ResNet for tests) giving pooled features, and the same
Dirichlet head as the torch backend (dropout, dense, ``1 + 100 * sigmoid``).

Inputs are channels-first ``(B, C, H, W)`` like the ONNX package's ``images``; the encoder transposes them to
channels-last inside (what TensorFlow's CPU convolutions want). Encoders, by architecture name (the names mean the
same networks as in the torch backend):

- ``efficientnet_b0``: ``keras.applications.EfficientNetB0`` (weights=None, no top, average pooling), from its
  ``stem_conv_pad`` layer on: Keras always puts ``Rescaling(1/255)`` and a ``Normalization`` layer in front, which the
  pipeline's preprocessing (images already in [0, 1]) and timm's network do not have. Stochastic depth follows
  ``ModelConfig.drop_path_rate`` with Keras' own linear schedule over blocks (Keras' default 0.2 is overridden); batch
  norm has torch's momentum and epsilon (:data:`TORCH_BATCH_NORM`), not Keras' 0.99 and 1e-3.
- ``convnext_tiny``: ``keras.applications.ConvNeXtTiny`` (weights=None, no top, average pooling, no preprocessing),
  cloned with its depthwise convolutions as ``DepthwiseConv2D`` layers and its exact GELU written with ``erf`` (the
  same network; tf2onnx cannot convert Keras' grouped convolutions nor ``erfc``). Keras fixes its stochastic depth
  at 0, so ``drop_path_rate > 0`` is refused.
- ``test_resnet``: a tiny ResNet (stem + four one-block stages of 32, 48, 48, 96 channels, 96 features) for fast
  tests, named after the torch backend's tiny test architecture (timm's ``test_resnet``; not the same network).

Every layer this module creates has an explicit name, so variable paths are stable.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import keras

from zoobot_pipeline.errors import UnavailableError, UnknownNameError
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig
from zoobot_pipeline.runtime.package import Task
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["ARCHITECTURES", "CONCENTRATION_RANGE", "INITIAL_CONCENTRATION", "TORCH_BATCH_NORM", "TFModel",
           "build_encoder", "build_finetune_model", "build_model", "check_architecture"]

TORCH_BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}
"""Batch norm as torch and timm have it (torch's momentum 0.1 is Keras' 0.9). Keras' EfficientNet keeps its moving
statistics at momentum 0.99 and epsilon 1e-3: after a few hundred steps the statistics used at inference still lag
the training batches, and validation loss stays flat while training loss falls (measured: efficientnet_b0 at 64 px,
1008 galaxies, 16 steps per epoch)."""
CONCENTRATION_RANGE = (1.0, 101.0)
INITIAL_CONCENTRATION = 2.0
"""As in the torch backend: a fresh Dirichlet head predicts this concentration for every answer (a broad Dirichlet)."""


def _efficientnet_b0(config: ModelConfig) -> keras.Model:
    shape = (config.input_size, config.input_size, config.in_channels)
    full = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=shape, pooling="avg")
    backbone = keras.Model(full.get_layer("stem_conv_pad").input, full.output, name="efficientnet_b0")
    blocks = sorted({m.group(1) for layer in backbone.layers if (m := re.match(r"(block\d[a-z])_", layer.name))})
    for layer in backbone.layers:  # stochastic depth: Keras' schedule rate * b / n_blocks, at our rate
        match = re.match(r"(block\d[a-z])_drop$", layer.name)
        if match and isinstance(layer, keras.layers.Dropout):
            layer.rate = config.drop_path_rate * blocks.index(match.group(1)) / len(blocks)
        if isinstance(layer, keras.layers.BatchNormalization):  # timm's (torch's) batch norm, not Keras' defaults
            layer.momentum, layer.epsilon = TORCH_BATCH_NORM["momentum"], TORCH_BATCH_NORM["epsilon"]
    return backbone


def _gelu(x):
    """Exact GELU through ``erf`` (Keras' exact GELU uses ``erfc``, which tf2onnx cannot convert)."""
    return 0.5 * x * (1.0 + keras.ops.erf(x / math.sqrt(2.0)))


def _exportable(layer: keras.Layer) -> keras.Layer:
    """A fresh copy of ``layer``; a depthwise (grouped) convolution becomes a ``DepthwiseConv2D`` (the same operation:
    Keras runs grouped convolutions on the CPU as XLA functions, which tf2onnx cannot convert) and exact GELU goes
    through ``erf``."""
    if isinstance(layer, keras.layers.Conv2D) and 1 < layer.groups == layer.filters:
        return keras.layers.DepthwiseConv2D(layer.kernel_size, strides=layer.strides, padding=layer.padding,
                                            use_bias=layer.use_bias, name=layer.name)
    if isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "gelu":
        return keras.layers.Activation(_gelu, name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def _convnext_tiny(config: ModelConfig) -> keras.Model:
    shape = (config.input_size, config.input_size, config.in_channels)
    full = keras.applications.ConvNeXtTiny(include_top=False, include_preprocessing=False, weights=None,
                                           input_shape=shape, pooling="avg", name="convnext_tiny")
    return keras.models.clone_model(full, clone_function=_exportable)


def _test_resnet(config: ModelConfig) -> keras.Model:
    layers = keras.layers
    inputs = keras.Input((config.input_size, config.input_size, config.in_channels), name="test_resnet_input")

    def conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(**TORCH_BATCH_NORM, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    x = conv_bn(inputs, 24, 3, 2, "stem")
    for i, (filters, stride) in enumerate(((32, 1), (48, 2), (48, 2), (96, 2)), start=1):
        name = f"layer{i}"
        shortcut = x
        if stride > 1:
            shortcut = layers.AveragePooling2D(stride, name=f"{name}_down_pool")(shortcut)
        if stride > 1 or shortcut.shape[-1] != filters:
            shortcut = conv_bn(shortcut, filters, 1, 1, f"{name}_down", relu=False)
        y = conv_bn(x, filters, 3, stride, f"{name}_a")
        y = conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
        x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))
    outputs = layers.GlobalAveragePooling2D(name="test_resnet_pool")(x)
    return keras.Model(inputs, outputs, name="test_resnet")


ARCHITECTURES: dict[str, Callable[[ModelConfig], keras.Model]] = {
    "efficientnet_b0": _efficientnet_b0, "convnext_tiny": _convnext_tiny, "test_resnet": _test_resnet,
}
"""The encoders the tensorflow backend builds, by architecture name."""


def check_architecture(config: ModelConfig, source: str = "--architecture") -> str:
    """``config.architecture`` if the tensorflow backend builds it (and its options), else an
    :class:`~zoobot_pipeline.errors.UnknownNameError` (or :class:`UnavailableError`) naming ``source``."""
    name = config.architecture
    if name not in ARCHITECTURES:
        close = difflib.get_close_matches(name, ARCHITECTURES, n=2, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownNameError(f"{source}: unknown architecture {name!r} for the tensorflow backend; {hint}use one of "
                               f"{', '.join(ARCHITECTURES)}")
    if name == "convnext_tiny" and config.drop_path_rate > 0:
        raise UnavailableError(f"{source}: {name} with drop_path_rate={config.drop_path_rate:g}: keras.applications' "
                               "ConvNeXtTiny has no stochastic depth option; use 0 with the tensorflow backend")
    if name in ("efficientnet_b0", "convnext_tiny") and config.input_size < 32:
        raise UnavailableError(f"{source}: {name} needs input_size >= 32 px in keras.applications, "
                               f"got {config.input_size}")
    return name


def build_encoder(config: ModelConfig, source: str = "architecture") -> keras.Model:
    """The encoder ``(B, C, H, W) -> (B, n_features)``: channels-first input, transposed, then the backbone."""
    check_architecture(config, source)
    backbone = ARCHITECTURES[config.architecture](config)
    inputs = keras.Input((config.in_channels, config.input_size, config.input_size), name="images")
    channels_last = keras.layers.Permute((2, 3, 1), name="channels_last")(inputs)
    return keras.Model(inputs, backbone(channels_last), name="encoder")


def _linear_head(n_features: int, n_outputs: int, task: Task) -> keras.layers.Dense:
    """The head's dense layer, initialised as torch's ``nn.Linear`` (uniform in +-1/sqrt(fan_in)); a Dirichlet
    head's bias starts at :data:`INITIAL_CONCENTRATION`."""
    bound = 1.0 / math.sqrt(n_features)
    bias: keras.initializers.Initializer = keras.initializers.RandomUniform(-bound, bound)
    if task == "dirichlet":
        low, high = CONCENTRATION_RANGE
        bias = keras.initializers.Constant(math.log((INITIAL_CONCENTRATION - low) / (high - INITIAL_CONCENTRATION)))
    return keras.layers.Dense(n_outputs, kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                              bias_initializer=bias, name="head_dense")


def head_activation(task: Task, logits):
    """The task's output activation in the Keras graph: concentrations ``1 + 100 * sigmoid`` for a Dirichlet head;
    logits stay logits for training a classifier (softmax is applied at export)."""
    if task == "dirichlet":
        low, high = CONCENTRATION_RANGE
        return low + (high - low) * keras.ops.sigmoid(logits)
    return logits


@dataclass
class TFModel:
    """A Keras model with the parts the pipeline needs: ``encoder`` (images -> features), the head's ``dense`` layer
    and dropout rate, and ``net`` (images -> outputs: concentrations, class logits or regression values).

    ``config`` describes the encoder; a finetuned model adds ``finetune`` and ``class_names``; ``schema`` is the
    decision tree of a Dirichlet head (None for a classifier or regressor).
    """

    encoder: keras.Model
    dense: keras.layers.Dense
    dropout_rate: float
    task: Task
    config: ModelConfig
    schema: Schema | None
    net: keras.Model
    finetune: FinetuneConfig | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        """``"pretrained"`` or ``"finetuned"`` (as in ``checkpoint.json``)."""
        return "pretrained" if self.finetune is None else "finetuned"

    @property
    def n_features(self) -> int:
        """Width of the pooled features."""
        return int(self.encoder.output.shape[-1])

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per output: the classes, the regression columns, or the tree's label columns."""
        if self.class_names is not None:
            return self.class_names
        if self.schema is not None:
            return tuple(self.schema.label_cols)
        return tuple(self.finetune.label_columns) if self.finetune is not None else ()


def _assemble(encoder: keras.Model, n_outputs: int, dropout_rate: float, task: Task, config: ModelConfig,
              schema: Schema | None, finetune: FinetuneConfig | None = None,
              class_names: tuple[str, ...] | None = None) -> TFModel:
    n_features = int(encoder.output.shape[-1])
    dense = _linear_head(n_features, n_outputs, task)
    images = keras.Input(encoder.input.shape[1:], name="images")
    dropped = keras.layers.Dropout(dropout_rate, name="head_dropout")(encoder(images))
    net = keras.Model(images, head_activation(task, dense(dropped)), name="zoobot")
    return TFModel(encoder, dense, dropout_rate, task, config, schema, net, finetune, class_names)


def build_model(config: ModelConfig, schema: Schema | None = None, seed: int | None = None,
                source: str = "architecture") -> TFModel:
    """A freshly initialised pretraining model (``schema`` defaults to ``get_schema(config.schema_name)``);
    ``seed`` seeds Keras' initialisers; ``source`` is named if the architecture is unknown."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    schema = schema if schema is not None else get_schema(config.schema_name)
    return _assemble(build_encoder(config, source), schema.n_answers, config.dropout_rate, "dirichlet", config, schema)


def build_finetune_model(encoder: keras.Model, base_config: ModelConfig, finetune: FinetuneConfig,
                         schema: Schema | None = None, class_names: tuple[str, ...] | None = None) -> TFModel:
    """A new head on ``encoder``: a Dirichlet head over ``schema``'s answers, or dropout + dense to one output per
    class (logits) or regression column."""
    if finetune.task == "dirichlet":
        if schema is None:
            raise ValueError("task 'dirichlet' needs the new decision tree (schema)")
        n_outputs = schema.n_answers
    elif finetune.task == "classification":
        if class_names is None or len(class_names) < 2:
            raise ValueError(f"task 'classification' needs at least 2 class names, got {class_names}")
        n_outputs = len(class_names)
    else:
        n_outputs = len(finetune.label_columns)
    return _assemble(encoder, n_outputs, finetune.dropout_rate, finetune.task, base_config, schema, finetune,
                     tuple(class_names) if class_names is not None else None)
