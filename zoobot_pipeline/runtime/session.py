"""onnxruntime sessions for model packages, and the per-galaxy seeds of everything random in scoring.

A galaxy's MC-dropout masks come from ``numpy.random.default_rng([seed, h])`` and its sampled vote-space estimates
from the stream of :func:`galaxy_seeds`, with ``h`` a 64-bit BLAKE2b hash of its ``id_str``: its catalogue row
never depends on which other galaxies share its batch or chunk, on their sizes, or on the worker that scored it.

A file onnxruntime cannot load (not ONNX, a damaged or foreign graph) is a :class:`PackageError` naming it, and a
package's graph must have the inputs and outputs its ``model.json`` describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from zoobot_pipeline.errors import PackageError, UnavailableError, check_name
from zoobot_pipeline.io import blake2b64
from zoobot_pipeline.runtime.devices import DEVICES, PROVIDERS, Device
from zoobot_pipeline.runtime.package import INPUT_NAMES, MODEL_JSON, OUTPUT_NAMES, ModelPackage

__all__ = [
    "DEVICES", "PROVIDERS", "Device", "PackageSession", "check_device", "check_graph", "dropout_masks", "galaxy_seeds",
    "make_session",
]

# onnxruntime's errors for a file it cannot use as a model (its exceptions derive from Exception only).
_BAD_MODEL_ERRORS = tuple(getattr(_ort_state, name) for name in (
    "InvalidProtobuf", "InvalidGraph", "InvalidArgument", "NotImplemented", "Fail", "NoSuchFile", "NoModel")
    if hasattr(_ort_state, name))
_PROVIDER_ERRORS = tuple(getattr(_ort_state, name) for name in ("EPFail",) if hasattr(_ort_state, name))


def _ort_message(err: BaseException) -> str:
    """onnxruntime's message without its ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix, on one line."""
    text = " ".join(str(err).split())
    return text.rsplit(" : ", 1)[-1][:300]


def check_device(device: str) -> list[str]:
    """The providers to request for ``device``; a clear error when this onnxruntime build lacks the first one."""
    check_name(device, DEVICES, "device")
    wanted = PROVIDERS[device][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UnavailableError(
            f"device {device!r} needs onnxruntime's {wanted}, but this onnxruntime {ort.__version__} only has "
            f"{', '.join(available)}; on a GPU host install onnxruntime-gpu (pip install 'zoobot-pipeline[gpu]') "
            f"instead of onnxruntime, never both"
        )
    return PROVIDERS[device]


def make_session(path: str | Path, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An inference session on ``device`` with full graph optimisation; ``threads`` intra-op threads (default: all
    cores). The first provider in ``get_providers()`` is checked to be the one asked for."""
    providers = check_device(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except _PROVIDER_ERRORS as err:
        raise UnavailableError(f"{path}: onnxruntime's {providers[0]} could not run it: {_ort_message(err)}") from None
    except _BAD_MODEL_ERRORS as err:
        raise PackageError(f"{path}: onnxruntime cannot load this file as an ONNX model ({_ort_message(err)}); "
                           "the package is damaged or the file is not a graph zoobot-pipeline exported: "
                           "re-export the package") from None
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(f"{path}: asked for {providers[0]} but onnxruntime gave {session.get_providers()}")
    return session


def galaxy_seeds(ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """One uint64 seed per galaxy from its ``id_str`` and the run's ``seed`` (for the per-galaxy streams of
    :mod:`zoobot_pipeline.stats`)."""
    if not 0 <= seed < 2**128:
        raise ValueError(f"seed must be in [0, 2**128), got {seed}")
    salt = seed.to_bytes(16, "little")
    return np.fromiter((blake2b64(str(id_str), salt=salt) for id_str in ids), dtype=np.uint64, count=len(ids))


def dropout_masks(ids: Sequence[str], n_samples: int, n_features: int, rate: float, seed: int = 0) -> np.ndarray:
    """Inverted-dropout masks ``(len(ids), n_samples, n_features)``: 0 with probability ``rate``, else
    ``1 / (1 - rate)``; each galaxy's from its own generator (see the module docstring)."""
    masks = np.empty((len(ids), n_samples, n_features), dtype=np.float32)
    keep = np.float32(1.0 / (1.0 - rate)) if rate < 1 else np.float32(0.0)
    for i, id_str in enumerate(ids):
        draws = np.random.default_rng([seed, blake2b64(str(id_str))]).random((n_samples, n_features))
        masks[i] = np.where(draws >= rate, keep, np.float32(0.0))
    return masks


def _fits(graph_dims: Sequence[Any], expected: Sequence[int | None]) -> bool:
    """Whether a graph's dimensions (ints, or names/None where dynamic) can hold ``expected`` (None: any)."""
    return len(graph_dims) == len(expected) and all(
        want is None or not isinstance(dim, int) or dim == want for dim, want in zip(graph_dims, expected, strict=True))


def check_graph(session: ort.InferenceSession, package: ModelPackage, path: str | Path) -> None:
    """Refuse a graph whose inputs and outputs are not the ones ``package``'s ``model.json`` describes (see
    :mod:`zoobot_pipeline.runtime.package`): names, image shape, feature width and number of outputs."""
    inputs = {arg.name: list(arg.shape) for arg in session.get_inputs()}
    outputs = {arg.name: list(arg.shape) for arg in session.get_outputs()}
    if set(INPUT_NAMES) - set(inputs) or set(OUTPUT_NAMES) - set(outputs):
        raise PackageError(f"{path}: the graph has inputs {list(inputs)} and outputs {list(outputs)}, not those of a "
                           f"model package ({', '.join(INPUT_NAMES)} -> {', '.join(OUTPUT_NAMES)}); re-export it")
    meta = package.path / MODEL_JSON
    checks = (
        (inputs["images"], (None, *package.input_shape), f"input.shape {list(package.input_shape)}"),
        (inputs["dropout_mask"], (None, None, package.n_features), f"mc_dropout.n_features {package.n_features}"),
        (outputs["outputs"], (None, None, len(package.output_names)),
         f"{len(package.output_names)} output_names"),
    )
    for graph_dims, expected, field in checks:
        if not _fits(graph_dims, expected):
            raise PackageError(f"{path}: the graph's shape {graph_dims} does not fit {meta}'s {field}; was "
                               f"{MODEL_JSON} edited? Re-export the package")


class PackageSession:
    """A model package ready to predict: one onnxruntime session on one precision variant and device."""

    def __init__(self, package: ModelPackage | str | Path, *, variant: str = "fp32", device: str = "cpu",
                 threads: int | None = None) -> None:
        self.package = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
        self.variant = variant
        path = self.package.onnx_path(variant)
        self.session = make_session(path, device, threads)
        check_graph(self.session, self.package, path)

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use, first = preferred."""
        return self.session.get_providers()

    def run(self, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph call: ``(outputs (B, S, n_outputs), features (B, F))`` for given masks."""
        return tuple(self.session.run(None, {"images": images, "dropout_mask": masks}))  # type: ignore[return-value]

    def predict(self, images: np.ndarray, ids: Sequence[str], mc_samples: int | None = None,
                seed: int = 0) -> np.ndarray:
        """MC-dropout predictions ``(B, S, n_outputs)`` float32 for preprocessed ``images`` ``(B, C, H, W)``.

        ``mc_samples=0`` gives one deterministic sample (dropout off). Outputs are Dirichlet concentrations, class
        probabilities or regression values, by the package's task.
        """
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = self.package.input_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images (batch, {', '.join(map(str, expected))}), got {images.shape}")
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} ids for {len(images)} images")
        n_samples = self.package.mc_samples if mc_samples is None else mc_samples
        if n_samples == 0:
            masks = np.ones((len(images), 1, self.package.n_features), dtype=np.float32)
        else:
            masks = dropout_masks(ids, n_samples, self.package.n_features, self.package.dropout_rate, seed)
        return self.run(images, masks)[0]
