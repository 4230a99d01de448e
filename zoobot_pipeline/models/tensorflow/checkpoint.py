"""TensorFlow checkpoints that never unpickle: Keras weights in safetensors, everything else in ``checkpoint.json``.

The directory has the layout and ``checkpoint.json`` of a torch checkpoint (kind, model config, schema and label
columns, preprocessing, training config, metrics, framework versions, the weights' sha256), with ``framework.name``
``"tensorflow"``. ``model.safetensors`` holds every Keras variable (trainable or not, e.g. batch-norm statistics) as a
numpy array under its variable path; the header's metadata lists the paths in the model's variable order, which is how
they are loaded back (Keras numbers unnamed variables per process, so paths alone may differ between processes; the
order and shapes of an architecture do not). No ``.keras``, SavedModel or HDF5 file is ever read: the model is rebuilt
from ``checkpoint.json`` by code, then the arrays are assigned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import safetensors
import tensorflow as tf
from safetensors import safe_open
from safetensors.numpy import save_file

from zoobot_pipeline._version import __version__
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.checkpoint import (
    CHECKPOINT_FILES,
    CHECKPOINT_FORMAT,
    CHECKPOINT_JSON,
    WEIGHTS_FILE,
    read_checkpoint_json,
    weights_path,
    write_checkpoint,
)
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig, TrainingConfig
from zoobot_pipeline.models.tensorflow.model import TFModel, build_encoder, build_finetune_model, build_model
from zoobot_pipeline.schemas import schema_from_dict

__all__ = ["CHECKPOINT_FILES", "CHECKPOINT_FORMAT", "FRAMEWORK", "WEIGHTS_FILE", "framework_versions",
           "load_checkpoint", "save_checkpoint"]

FRAMEWORK = "tensorflow"
_ORDER_KEY = "keras_variable_order"


def framework_versions() -> dict[str, str]:
    """``checkpoint.json``'s ``framework`` entry."""
    return {"name": FRAMEWORK, "version": tf.__version__, "keras": keras.__version__,
            "safetensors": safetensors.__version__, "zoobot_pipeline": __version__}


def _model_meta(model: TFModel) -> dict[str, Any]:
    meta: dict[str, Any] = {"kind": model.kind, "model": model.config.model_dump(mode="json"),
                            "schema": model.schema.to_dict() if model.schema is not None else None,
                            "label_cols": list(model.output_names)}
    if model.finetune is not None:
        meta["finetune"] = model.finetune.model_dump(mode="json")
        meta["class_names"] = list(model.class_names) if model.class_names is not None else None
    return meta


def weight_arrays(model: TFModel) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every variable of ``model.net`` as ``{path: array}``, and the paths in the model's variable order."""
    paths = [variable.path for variable in model.net.weights]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{model.config.architecture}: duplicate Keras variable paths; name every layer")
    return {v.path: np.ascontiguousarray(keras.ops.convert_to_tensor(v).numpy()) for v in model.net.weights}, paths


def save_checkpoint(model: TFModel, directory: str | Path, preprocessing: PreprocessingConfig,
                    training_config: TrainingConfig | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (pretrained or finetuned) and its metadata to ``directory`` atomically; returns the directory.
    Other files already in ``directory`` are kept (see :func:`~zoobot_pipeline.models.checkpoint.write_checkpoint`)."""
    arrays, order = weight_arrays(model)

    def write_weights(path: Path) -> None:
        # one metadata key only: safetensors writes several in a per-process order, so the file's sha256 would vary
        save_file(arrays, str(path), metadata={_ORDER_KEY: json.dumps(order)})

    return write_checkpoint(directory, write_weights, _model_meta(model), framework_versions(), preprocessing,
                            training_config, metrics)


def rebuild(meta: dict[str, Any], source: str) -> TFModel:
    """The (freshly initialised) model that a checked ``checkpoint.json`` describes."""
    schema = schema_from_dict(meta["schema"], source=source) if meta["schema"] is not None else None
    config = ModelConfig.model_validate(meta["model"])
    if meta.get("kind", "pretrained") == "finetuned":
        encoder = build_encoder(config, f"{source} (model.architecture)")
        names = tuple(meta["class_names"]) if meta["class_names"] is not None else None
        return build_finetune_model(encoder, config, FinetuneConfig.model_validate(meta["finetune"]), schema, names)
    return build_model(config, schema, source=f"{source} (model.architecture)")


def load_checkpoint(directory: str | Path) -> TFModel:
    """Rebuild the model described by ``checkpoint.json`` and assign its safetensors weights.

    Before anything is read, ``checkpoint.json`` must name the tensorflow framework and the weights file is checked
    (:func:`~zoobot_pipeline.models.checkpoint.weights_path`: inside the directory, the recorded sha256, a safetensors
    file); weights that do not fit the architecture are an input error naming the files.
    """
    directory = Path(directory)
    meta = read_checkpoint_json(directory)
    source = str(directory / CHECKPOINT_JSON)
    if meta["framework"]["name"] != FRAMEWORK:
        raise ZoobotPipelineError(f"{source}: written by {meta['framework']['name']}, not {FRAMEWORK}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ZoobotPipelineError(f"{directory}: unsupported checkpoint format {meta.get('format')!r}")
    weights = weights_path(directory, meta)
    model = rebuild(meta, source)
    with safe_open(str(weights), framework="np") as handle:
        order = json.loads((handle.metadata() or {}).get(_ORDER_KEY, "[]"))
        variables = model.net.weights
        if sorted(order) != sorted(handle.keys()) or len(order) != len(variables):
            raise ZoobotPipelineError(f"{weights}: {len(order)} variables listed for {len(variables)} in the model "
                                      f"that {source} describes ({model.config.architecture})")
        for variable, key in zip(variables, order, strict=True):
            array = handle.get_tensor(key)
            if tuple(array.shape) != tuple(variable.shape):
                raise ZoobotPipelineError(f"{weights}: {key} has shape {tuple(array.shape)}, the model that {source} "
                                          f"describes ({model.config.architecture}) expects {tuple(variable.shape)} "
                                          f"for {variable.path}")
            variable.assign(array)
    return model
