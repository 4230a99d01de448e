"""ONNX model packages: export a trained checkpoint, check it against its framework, add reduced precisions.

``export_package`` asks the checkpoint's backend for an ONNX graph (see :mod:`zoobot_pipeline.models.backend`), runs
it with onnxruntime next to the framework on random inputs and the same dropout masks, and refuses to write a
package whose outputs differ by more than ``rtol``. Optional ``int8`` and ``fp16`` variants carry their measured
accuracy against fp32. The package directory appears all at once (written beside it, then renamed). Before any
work the output is checked (:func:`zoobot_pipeline.io.prepare_output_dir`): not a file, not over or around the
checkpoint or calibration release, and an existing non-empty directory only when it is an earlier package or with
``overwrite``; even then only the package's own files (:data:`PACKAGE_FILES`) are replaced, the rest is kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from zoobot_pipeline._version import __version__
from zoobot_pipeline.errors import ExportError, PackageError, ZoobotPipelineError, check_name
from zoobot_pipeline.io import atomic_directory, file_sha256, prepare_output_dir
from zoobot_pipeline.models.backend import ExportedGraph, checkpoint_backend
from zoobot_pipeline.models.checkpoint import read_checkpoint_json
from zoobot_pipeline.runtime.package import (
    INPUT_NAMES,
    MAX_MC_SAMPLES,
    MAX_VOLUNTEERS,
    MODEL_JSON,
    OUTPUT_NAMES,
    PACKAGE_FORMAT,
    REDUCED_PRECISIONS,
    VARIANT_FILES,
    ModelPackage,
)
from zoobot_pipeline.runtime.session import dropout_masks, make_session
from zoobot_pipeline.schemas import schema_from_dict

__all__ = ["PACKAGE_FILES", "ExportError", "ModelPackage", "PackageError", "export_package"]

FP32_FILE = VARIANT_FILES["fp32"]
PACKAGE_FILES = (MODEL_JSON, *VARIANT_FILES.values())
"""The files a model package is made of: the only ones :func:`export_package` replaces in its output directory."""


def _parity(graph: ExportedGraph, onnx_path: Path, mc_samples: int, rtol: float, seed: int) -> dict[str, Any]:
    """Compare onnxruntime with the framework on random images and MC masks; raise :class:`ExportError` if they
    differ by more than ``rtol`` (relative, with an absolute floor of ``1e-6`` of the largest output)."""
    channels, size = graph.preprocessing.n_channels, graph.preprocessing.input_size
    rng = np.random.default_rng(seed)
    images = rng.random((4, channels, size, size), dtype=np.float32)
    masks = dropout_masks([f"parity-{i}" for i in range(4)], mc_samples, graph.n_features, graph.dropout_rate, seed)
    masks[0] = 1.0  # one galaxy with dropout off
    expected, expected_features = graph.reference(images, masks)
    outputs, features = make_session(onnx_path).run(None, {"images": images, "dropout_mask": masks})
    scale = max(1.0, float(np.abs(expected).max()))
    excess = np.abs(outputs - expected) - (rtol * np.abs(expected) + 1e-6 * scale)
    relative = np.abs(outputs - expected) / np.maximum(np.abs(expected), 1e-6 * scale)
    record = {"inputs": f"4 uniform random images, {mc_samples} dropout masks each (one galaxy dropout-off)",
              "rtol": rtol, "max_rel_diff": float(relative.max()),
              "features_max_abs_diff": float(np.abs(features - expected_features).max())}
    if excess.max() > 0:
        raise ExportError(f"{onnx_path}: onnxruntime differs from {graph.framework['name']} by up to "
                          f"{record['max_rel_diff']:.3g} relative (tolerance {rtol:g}); no package written")
    return record


def _variant(name: str, fp32_path: Path, out_path: Path, graph: ExportedGraph, check_images: np.ndarray,
             inputs: str, calibration_images: np.ndarray | None) -> dict[str, Any]:
    from zoobot_pipeline.export.quantize import compare_outputs, quantize_int8, to_fp16

    if name == "int8":
        quantize_int8(fp32_path, out_path, calibration_images, graph.n_features)
    else:
        to_fp16(fp32_path, out_path)
    ones = np.ones((len(check_images), 1, graph.n_features), dtype=np.float32)
    feeds = {"images": check_images, "dropout_mask": ones}
    reference = make_session(fp32_path).run(["outputs"], feeds)[0]
    outputs = make_session(out_path).run(["outputs"], feeds)[0]
    schema = schema_from_dict(graph.schema) if graph.schema is not None else None
    return {"file": out_path.name, "sha256": file_sha256(out_path),
            "accuracy": compare_outputs(reference, outputs, graph.task, schema, inputs)}


def _training_summary(checkpoint_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in meta.get("metrics", {}).items() if k != "history"}
    return {"checkpoint": str(checkpoint_dir.resolve()), "kind": meta.get("kind", "pretrained"),
            "created": meta.get("created"), "weights_sha256": meta["weights"]["sha256"],
            "model": meta["model"], "finetune": meta.get("finetune"), "metrics": metrics}


def export_package(checkpoint_dir: str | Path, out_dir: str | Path, *, mc_samples: int = 5,
                   variants: Sequence[str] = (), calibration_release: str | Path | None = None,
                   n_calibration: int = 128, n_check: int = 64, n_volunteers: int = 40, rtol: float = 1e-4,
                   seed: int = 0, overwrite: bool = False) -> Path:
    """Export a checkpoint to a model package at ``out_dir``; returns ``out_dir``.

    ``variants`` may hold ``"int8"`` (needs ``calibration_release``: its galaxies calibrate the quantizer and check
    accuracy) and ``"fp16"`` (checked on the release's galaxies if given, else on uniform random images).
    ``mc_samples`` is the package's default number of dropout samples; ``n_volunteers`` the votes per galaxy assumed
    for vote-space uncertainty. ``out_dir`` may be an earlier package (replaced); another non-empty directory only
    with ``overwrite`` (only the package's files are replaced, the rest is kept); never the checkpoint or the
    calibration release, nor a directory over or inside them.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    meta = read_checkpoint_json(checkpoint_dir)
    for variant in variants:
        check_name(variant, REDUCED_PRECISIONS, "precision variant")
    if "int8" in variants and calibration_release is None:
        raise ZoobotPipelineError("int8 quantization needs a calibration release (galaxy images to calibrate on)")
    if not 1 <= mc_samples <= MAX_MC_SAMPLES:
        raise ZoobotPipelineError(f"--mc-samples {mc_samples}: must be 1 to {MAX_MC_SAMPLES}")
    if not 1 <= n_volunteers <= MAX_VOLUNTEERS:
        raise ZoobotPipelineError(f"--n-volunteers {n_volunteers}: must be 1 to {MAX_VOLUNTEERS}")
    inputs = [checkpoint_dir] if calibration_release is None else [checkpoint_dir, calibration_release]
    prepare_output_dir(out_dir, marker=MODEL_JSON, what="model package", overwrite=overwrite, inputs=inputs)
    backend = checkpoint_backend(checkpoint_dir)
    with atomic_directory(out_dir, own=PACKAGE_FILES, marker=MODEL_JSON) as tmp:
        graph: ExportedGraph = backend.export_onnx(checkpoint_dir, tmp / FP32_FILE)
        parity = _parity(graph, tmp / FP32_FILE, mc_samples, rtol, seed)
        entries: dict[str, Any] = {"fp32": {"file": FP32_FILE, "sha256": file_sha256(tmp / FP32_FILE),
                                            "parity": parity}}
        if variants:
            from zoobot_pipeline.export.calibration import release_images

            calibration = None
            if calibration_release is not None:
                images = release_images(calibration_release, graph.preprocessing, n_calibration + n_check, seed)
                calibration, check = images[n_check:], images[:n_check]
                inputs = f"{len(check)} galaxies of {Path(calibration_release).resolve()} (not used to calibrate)"
            else:
                shape = (n_check, graph.preprocessing.n_channels, graph.preprocessing.input_size,
                         graph.preprocessing.input_size)
                check = np.random.default_rng(seed).random(shape, dtype=np.float32)
                inputs = f"{n_check} uniform random images"
            for name in variants:
                entries[name] = _variant(name, tmp / FP32_FILE, tmp / VARIANT_FILES[name], graph, check, inputs,
                                         calibration)
        channels, size = graph.preprocessing.n_channels, graph.preprocessing.input_size
        model_json = {
            "format": PACKAGE_FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": graph.task,
            "schema": graph.schema,
            "output_names": list(graph.output_names),
            "architecture": graph.architecture,
            "input": {"name": INPUT_NAMES[0], "shape": [channels, size, size], "dtype": "float32",
                      "layout": "NCHW", "bands": list(graph.preprocessing.bands), "range": [0.0, 1.0]},
            "outputs": {OUTPUT_NAMES[0]: "(batch, samples, n_outputs): " + {
                "dirichlet": "Dirichlet concentrations", "classification": "class probabilities",
                "regression": "values"}[graph.task], OUTPUT_NAMES[1]: "(batch, n_features): pooled representation"},
            "preprocessing": graph.preprocessing.model_dump(mode="json"),
            "mc_dropout": {"rate": graph.dropout_rate, "samples": mc_samples, "n_features": graph.n_features,
                           "mask_input": INPUT_NAMES[1],
                           "masks": "0 with probability rate, else 1/(1-rate); all ones = dropout off; per galaxy "
                                    "from numpy default_rng([seed, blake2b-64(id_str)])"},
            "n_volunteers": n_volunteers,
            "framework": {**graph.framework, "zoobot_pipeline": __version__},
            "training": _training_summary(checkpoint_dir, meta),
            "variants": entries,
        }
        (tmp / MODEL_JSON).write_text(json.dumps(model_json, indent=2) + "\n")
    return out_dir
