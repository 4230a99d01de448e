"""Model packages: everything needed to score a survey without the training code.

A package is a directory with one ONNX graph per precision variant (``model.onnx`` for fp32, optionally
``model.int8.onnx`` and ``model.fp16.onnx``) and ``model.json``: task, schema and output names, preprocessing, input
shape and bands, MC-dropout settings, framework versions, the training checkpoint it came from, the parity check
against the framework and each variant's measured accuracy against fp32, and the sha256 of every ONNX file.
:meth:`ModelPackage.open` reads ``model.json`` within bounds (size, nesting: :mod:`zoobot_pipeline._safe_load`),
checks every field the package's readers use, that each variant's file lies inside the package directory, and the
files' digests, before anything runs; what is wrong is a :class:`PackageError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import ValidationError

from zoobot_pipeline._safe_load import load_json_object
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import PackageError, ZoobotPipelineError, check_name
from zoobot_pipeline.io import file_sha256, path_inside
from zoobot_pipeline.schemas import Schema, schema_from_dict

if TYPE_CHECKING:
    from zoobot_pipeline.data.release import Release

__all__ = [
    "INPUT_NAMES", "MAX_MC_SAMPLES", "MAX_VOLUNTEERS", "MODEL_JSON", "OUTPUT_NAMES", "PACKAGE_FORMAT",
    "PRECISION_VARIANTS", "REDUCED_PRECISIONS", "TASKS", "VARIANT_FILES", "ModelPackage", "PackageError",
    "ReducedPrecision", "Task",
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
MAX_MC_SAMPLES = 1000
"""The most MC-dropout samples per galaxy a package or a scoring run may ask for (memory grows with them)."""
MAX_VOLUNTEERS = 1000
"""The most volunteers per galaxy vote-space uncertainty may assume (Galaxy Zoo asks 40; cost grows with them)."""

VARIANT_FILES = {"fp32": "model.onnx", **{variant: f"model.{variant}.onnx" for variant in REDUCED_PRECISIONS}}


def _problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the fields of ``model.json`` that the package's readers use, or None."""
    if meta.get("task") not in TASKS:
        return f"task: {meta.get('task')!r} is not one of {', '.join(TASKS)}"
    names = meta.get("output_names")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        return "output_names: expected a non-empty list of names"
    if meta.get("schema") is not None and not isinstance(meta["schema"], dict):
        return "schema: expected a decision tree ({name, questions}) or null"
    if meta["task"] == "dirichlet" and meta.get("schema") is None:
        return "schema: task 'dirichlet' needs the decision tree its outputs follow"
    if not isinstance(meta.get("preprocessing"), dict):
        return "preprocessing: expected an object"
    shape = meta.get("input", {}).get("shape") if isinstance(meta.get("input"), dict) else None
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        return f"input.shape: expected [channels, height, width] (positive integers), got {shape!r}"
    dropout = meta.get("mc_dropout")
    if not isinstance(dropout, dict):
        return "mc_dropout: expected an object with n_features, rate and samples"
    for key, kind, ok in (("n_features", "an integer >= 1", lambda v: _int(v) and v >= 1),
                          ("samples", "an integer >= 0", lambda v: _int(v) and v >= 0),
                          ("rate", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)):
        if not ok(dropout.get(key)):
            return f"mc_dropout.{key}: expected {kind}, got {dropout.get(key)!r}"
    volunteers = meta.get("n_volunteers", 40)
    if not (_int(volunteers) and volunteers >= 1):
        return f"n_volunteers: expected an integer >= 1, got {volunteers!r}"
    variants = meta.get("variants")
    if not isinstance(variants, dict) or "fp32" not in variants:
        return "variants: expected an object with at least the fp32 variant"
    for name, entry in variants.items():
        if name not in PRECISION_VARIANTS:
            return f"variants: unknown precision variant {name!r} (known: {', '.join(PRECISION_VARIANTS)})"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("file", "sha256")):
            return f"variants.{name}: expected an object with the file name and sha256 of its ONNX graph"
    return None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ModelPackage:
    """An opened model package (see the module docstring); ``open`` verifies it."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        source = str(path / MODEL_JSON)
        problem = _problem(meta)
        if problem is not None:
            raise PackageError(f"{source}: {problem}; re-export the package")
        self.schema: Schema | None = schema_from_dict(meta["schema"], source) if meta["schema"] is not None else None
        try:
            self.preprocessing = PreprocessingConfig.model_validate(meta["preprocessing"])
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise PackageError(f"{source}: preprocessing: {problems}") from None
        expected = (self.preprocessing.n_channels, self.preprocessing.input_size, self.preprocessing.input_size)
        if self.input_shape != expected:
            raise PackageError(f"{source}: input.shape {list(self.input_shape)} does not match its preprocessing "
                               f"({self.preprocessing.n_channels} channels of {self.preprocessing.input_size} px: "
                               f"{list(expected)}); was model.json edited? Re-export the package")
        if self.schema is not None and self.task == "dirichlet" and list(self.output_names) != self.schema.label_cols:
            raise PackageError(f"{source}: output_names do not match the label columns of its decision tree "
                               f"{self.schema.name!r}; re-export the package")

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> ModelPackage:
        """Read ``model.json``; with ``verify`` check every listed ONNX file's sha256 (:class:`PackageError` if not)."""
        path = Path(path)
        meta_path = path / MODEL_JSON
        if not meta_path.is_file():
            raise PackageError(f"{meta_path}: not a model package (no {MODEL_JSON})")
        meta = load_json_object(meta_path, PackageError, MODEL_JSON)
        if meta.get("format") != PACKAGE_FORMAT:
            raise PackageError(f"{meta_path}: unsupported package format {meta.get('format')!r} "
                               f"(this version reads {PACKAGE_FORMAT!r})")
        package = cls(path, meta)
        for variant in package.variants:
            package.onnx_path(variant)
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
        name = self.meta["variants"][variant]["file"]
        try:
            return path_inside(self.path, name, f"{self.path / MODEL_JSON} (variants.{variant}.file)")
        except ZoobotPipelineError as err:
            raise PackageError(str(err)) from None

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
