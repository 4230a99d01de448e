"""onnxruntime sessions for model packages, and the per-galaxy seeds of everything random in scoring.

A galaxy's MC-dropout masks come from ``numpy.random.default_rng([seed, h])`` and its sampled vote-space estimates
from the stream of :func:`galaxy_seeds`, with ``h`` a 64-bit BLAKE2b hash of its ``id_str``: its catalogue row
never depends on which other galaxies share its batch or chunk, on their sizes, or on the worker that scored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zoobot_pipeline.errors import UnavailableError, check_name
from zoobot_pipeline.io import blake2b64
from zoobot_pipeline.runtime.devices import DEVICES, PROVIDERS, Device
from zoobot_pipeline.runtime.package import ModelPackage

__all__ = [
    "DEVICES", "PROVIDERS", "Device", "PackageSession", "check_device", "dropout_masks", "galaxy_seeds", "make_session",
]

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
    session = ort.InferenceSession(str(path), options, providers=providers)
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


class PackageSession:
    """A model package ready to predict: one onnxruntime session on one precision variant and device."""

    def __init__(self, package: ModelPackage | str | Path, *, variant: str = "fp32", device: str = "cpu",
                 threads: int | None = None) -> None:
        self.package = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
        self.variant = variant
        self.session = make_session(self.package.onnx_path(variant), device, threads)

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
