"""Model packages: everything needed to score a survey without the training code.

A package is a directory with one ONNX graph per precision variant (``model.onnx`` for fp32, optionally
``model.int8.onnx`` and ``model.fp16.onnx``) and ``model.json``: task, schema and output names, preprocessing, input
shape and bands, MC-dropout settings, framework versions, the training checkpoint it came from, the parity check
against the framework and each variant's measured accuracy against fp32, and the sha256 of every ONNX file.
:meth:`ModelPackage.open` checks those digests before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import PackageError, check_name
from zoobot_pipeline.io import file_sha256
from zoobot_pipeline.schemas import Schema, schema_from_dict

if TYPE_CHECKING:
    from zoobot_pipeline.data.release import Release

__all__ = [
    "INPUT_NAMES", "MODEL_JSON", "OUTPUT_NAMES", "PACKAGE_FORMAT", "PRECISION_VARIANTS", "REDUCED_PRECISIONS", "TASKS",
    "VARIANT_FILES", "ReducedPrecision",
    "ModelPackage", "PackageError", "Task",
]

PACKAGE_FORMAT = "zoobot-pipeline-package/1"
MODEL_JSON = "model.json"

Task = Literal["dirichlet", "classification", "regression"]
TASKS: tuple[str, ...] = get_args(Task)
"""What a model predicts: a decision tree's Dirichlet concentrations, class probabilities or regression values."""

INPUT_NAMES = ("images", "dropout_mask")
OUTPUT_NAMES = ("outputs", "features")
# The graph: (images (B, C, H, W), dropout masks (B, S, F)) -> (outputs (B, S, n_outputs), features (B, F)), float32.

ReducedPrecision = Literal["int8", "fp16"]
REDUCED_PRECISIONS: tuple[str, ...] = get_args(ReducedPrecision)
PRECISION_VARIANTS: tuple[str, ...] = ("fp32", *REDUCED_PRECISIONS)
"""Precision variants a package may hold; ``fp32`` is always there, the reduced ones are optional."""
VARIANT_FILES = {"fp32": "model.onnx", **{variant: f"model.{variant}.onnx" for variant in REDUCED_PRECISIONS}}


class ModelPackage:
    """An opened model package (see the module docstring); ``open`` verifies it."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        source = str(path / MODEL_JSON)
        self.schema: Schema | None = schema_from_dict(meta["schema"], source) if meta["schema"] is not None else None
        self.preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> ModelPackage:
        """Read ``model.json``; with ``verify`` check every listed ONNX file's sha256 (:class:`PackageError` if not)."""
        path = Path(path)
        meta_path = path / MODEL_JSON
        if not meta_path.is_file():
            raise PackageError(f"{meta_path}: not a model package (no {MODEL_JSON})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise PackageError(f"{meta_path}: invalid JSON ({err})") from err
        if meta.get("format") != PACKAGE_FORMAT:
            raise PackageError(f"{meta_path}: unsupported package format {meta.get('format')!r} "
                               f"(this version reads {PACKAGE_FORMAT!r})")
        package = cls(path, meta)
        if verify:
            for variant in package.variants:
                package.verify(variant)
        return package

    @property
    def task(self) -> Task:
        """``"dirichlet"`` (a decision tree's concentrations), ``"classification"`` or ``"regression"``."""
        return self.meta["task"]

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per output: the schema's label columns, the class names or the regression columns."""
        return tuple(self.meta["output_names"])

    @property
    def bands(self) -> tuple[str, ...]:
        """The survey bands the model reads, in preprocessing order."""
        return self.preprocessing.bands

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one preprocessed image."""
        return tuple(self.meta["input"]["shape"])  # type: ignore[return-value]

    @property
    def n_features(self) -> int:
        """Width of the pooled representation (the last dimension of the dropout mask)."""
        return int(self.meta["mc_dropout"]["n_features"])

    @property
    def dropout_rate(self) -> float:
        """Head dropout rate: masks hold 0 with this probability and ``1 / (1 - rate)`` otherwise."""
        return float(self.meta["mc_dropout"]["rate"])

    @property
    def mc_samples(self) -> int:
        """Default number of MC-dropout samples per galaxy."""
        return int(self.meta["mc_dropout"]["samples"])

    @property
    def n_volunteers(self) -> int:
        """Volunteers per galaxy assumed for vote-space uncertainty (Galaxy Zoo: 40)."""
        return int(self.meta.get("n_volunteers", 40))

    @property
    def variants(self) -> tuple[str, ...]:
        """Precision variants in the package (``fp32`` always first)."""
        return tuple(self.meta["variants"])

    @property
    def sha256(self) -> str:
        """sha256 of the fp32 ``model.onnx``: the model's identity in catalogues and queues."""
        return self.meta["variants"]["fp32"]["sha256"]

    def onnx_path(self, variant: str = "fp32") -> Path:
        """Path of a variant's ONNX file."""
        check_name(variant, PRECISION_VARIANTS, "precision variant")
        if variant not in self.meta["variants"]:
            raise PackageError(f"{self.path}: no {variant!r} variant (has: {', '.join(self.variants)})")
        return self.path / self.meta["variants"][variant]["file"]

    def verify(self, variant: str = "fp32") -> None:
        """Check a variant's ONNX file against the sha256 in ``model.json``."""
        path = self.onnx_path(variant)
        if not path.is_file():
            raise PackageError(f"{path}: listed in {MODEL_JSON} but missing")
        expected = self.meta["variants"][variant]["sha256"]
        actual = file_sha256(path)
        if actual != expected:
            raise PackageError(f"{path}: sha256 {actual[:12]}... does not match {MODEL_JSON} ({expected[:12]}...); "
                               f"the file was modified or damaged after export")

    def check_release(self, release: Release) -> None:
        """Refuse a release the model cannot read: missing bands, or a different decision tree."""
        missing = [band for band in self.bands if band not in release.bands]
        if missing:
            raise PackageError(f"{self.path}: the model reads bands {list(self.bands)} but release "
                               f"{release.info.name!r} ({release.path}) has {list(release.bands)}; "
                               f"missing {missing}")
        release_schema = release.info.schema_name
        if self.schema is not None and release_schema and release_schema != self.schema.name:
            raise PackageError(f"{self.path}: the model predicts decision tree {self.schema.name!r} but release "
                               f"{release.info.name!r} declares schema {release_schema!r} in release.json")
