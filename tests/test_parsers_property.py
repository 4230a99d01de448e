"""Property tests of the parsers of user files (issue 17): whatever a schema YAML, ``model.json``, ``checkpoint.json``,
votes table, sources table or ``release.json`` holds, reading it either works or raises the project's input error
(:class:`~zoobot_pipeline.errors.ZoobotPipelineError`), never anything else. Inputs are valid files with a few fields
replaced or removed, random text in the file's syntax, and random bytes."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models.checkpoint import read_checkpoint_json, weights_path
from zoobot_pipeline.models.config import ModelConfig
from zoobot_pipeline.runtime.package import PACKAGE_FORMAT, ModelPackage
from zoobot_pipeline.schemas import Schema, load_schema, schema_from_dict

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
"""Small and repeatable: the same examples on every run (deeper runs: raise max_examples locally)."""

TREE = {"name": "tiny", "description": "two questions",
        "questions": [{"name": "shape", "answers": ["round", "disk"]},
                      {"name": "bar", "answers": ["yes", "no"], "asked_after": "shape_disk"}]}
SCHEMA = schema_from_dict(TREE)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
ONNX_BYTES = b"not really onnx"
WEIGHTS_BYTES = (lambda header: len(header).to_bytes(8, "little") + header + bytes(16))(
    json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode())

MODEL_JSON = {
    "format": PACKAGE_FORMAT, "task": "dirichlet", "schema": TREE, "output_names": SCHEMA.label_cols,
    "architecture": "test_resnet",
    "input": {"name": "images", "shape": [3, 32, 32], "dtype": "float32", "bands": ["g", "r", "z"]},
    "preprocessing": PREPROCESSING.model_dump(mode="json"),
    "mc_dropout": {"n_features": 8, "rate": 0.2, "samples": 5}, "n_volunteers": 40,
    "variants": {"fp32": {"file": "model.onnx", "sha256": hashlib.sha256(ONNX_BYTES).hexdigest()}},
}
CHECKPOINT_JSON = {
    "format": "zoobot-pipeline-checkpoint/1", "kind": "pretrained",
    "model": ModelConfig(architecture="test_resnet", input_size=32, schema_name="tiny").model_dump(mode="json"),
    "schema": TREE, "label_cols": SCHEMA.label_cols, "preprocessing": PREPROCESSING.model_dump(mode="json"),
    "training": None, "metrics": {"best_epoch": 1}, "framework": {"name": "torch"},
    "weights": {"file": "model.safetensors", "sha256": hashlib.sha256(WEIGHTS_BYTES).hexdigest()},
}
RELEASE_JSON = {"name": "tiny", "survey": "synthetic", "bands": ["g", "r", "z"], "pixel_scale_arcsec": 0.262,
                "created": "2025-01-01T00:00:00Z"}

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["../outside", "/etc/hostname", "a/../../b", ".", "", "model.onnx", "\x00"]))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value, as a tuple of keys and indices (the whole value: ``()``)."""
    found = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, template: Any) -> Any:
    """``template`` with one to three places replaced by a random JSON value or removed."""
    value = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        if not path:
            value = draw(json_values)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return value


def json_files(template: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Contents of a JSON file: the template mutated, random JSON, random text or random bytes."""
    return st.one_of(
        mutated(template).map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        text.map(str.encode),
        st.binary(max_size=300),
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parsers")


def _fresh(scratch: Path, name: str) -> Path:
    directory = scratch / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def _loads_or_input_error(read, *args: Any) -> Any:
    """``read(*args)``, or None when it raised the project's input error; anything else fails the test."""
    try:
        return read(*args)
    except ZoobotPipelineError:
        return None


# -- schemas (YAML) -----------------------------------------------------------------------------------------------

yaml_syntax = st.lists(st.sampled_from([*"ab1:-[]{}&*!|>?,#'\"\n ~.\t", "!!str", "!!int", "!!python/name:os.system",
                                        "<<", "yes", "null", "questions:", "name:", "answers:"]),
                       max_size=60).map("".join)


@SETTINGS
@given(content=st.one_of(mutated(TREE).map(lambda v: yaml.safe_dump(v).encode()),
                         mutated(TREE).map(lambda v: json.dumps(v).encode()),
                         yaml_syntax.map(str.encode), text.map(str.encode), st.binary(max_size=300)))
def test_any_schema_file_loads_or_is_a_schema_error(scratch, content):
    path = _fresh(scratch, "schema") / "tree.yaml"
    path.write_bytes(content)
    schema = _loads_or_input_error(load_schema, path)
    assert schema is None or (isinstance(schema, Schema) and schema.n_answers == len(schema.label_cols) > 0)


# -- model.json ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(content=json_files(MODEL_JSON))
def test_any_model_json_opens_or_is_a_package_error(scratch, content):
    directory = _fresh(scratch, "package")
    (directory / "model.onnx").write_bytes(ONNX_BYTES)
    (directory / "model.json").write_bytes(content)
    package = _loads_or_input_error(ModelPackage.open, directory)
    if package is not None:  # what the readers of a package use works
        assert len(package.input_shape) == 3 and package.n_features >= 1 and package.mc_samples >= 0
        assert 0 <= package.dropout_rate < 1 and package.n_volunteers >= 1 and package.output_names
        assert all(package.onnx_path(variant).is_relative_to(directory) for variant in package.variants)


def test_the_model_json_template_opens(scratch):
    directory = _fresh(scratch, "package-template")
    (directory / "model.onnx").write_bytes(ONNX_BYTES)
    (directory / "model.json").write_text(json.dumps(MODEL_JSON))
    assert ModelPackage.open(directory).sha256 == MODEL_JSON["variants"]["fp32"]["sha256"]


# -- checkpoint.json ----------------------------------------------------------------------------------------------


@SETTINGS
@given(content=json_files(CHECKPOINT_JSON),
       weights=st.one_of(st.just(WEIGHTS_BYTES), st.binary(max_size=64),
                         st.binary(min_size=8, max_size=64).map(lambda b: (8).to_bytes(8, "little") + b)))
def test_any_checkpoint_json_reads_or_is_an_input_error(scratch, content, weights):
    directory = _fresh(scratch, "checkpoint")
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "checkpoint.json").write_bytes(content)
    meta = _loads_or_input_error(read_checkpoint_json, directory)
    if meta is not None:
        path = _loads_or_input_error(weights_path, directory, meta)
        assert path is None or (path.is_file() and path.resolve().is_relative_to(directory.resolve()))


def test_the_checkpoint_json_template_reads(scratch):
    directory = _fresh(scratch, "checkpoint-template")
    (directory / "model.safetensors").write_bytes(WEIGHTS_BYTES)
    (directory / "checkpoint.json").write_text(json.dumps(CHECKPOINT_JSON))
    assert weights_path(directory, read_checkpoint_json(directory)) == directory / "model.safetensors"


# -- tables: votes and sources ------------------------------------------------------------------------------------


def _column(n: int) -> st.SearchStrategy[pa.Array]:
    """A column of ``n`` values of one random type, with nulls."""
    kinds = {
        pa.int64(): st.integers(-(2**63), 2**63 - 1),
        pa.float64(): st.floats(),
        pa.string(): st.text(max_size=6),
        pa.bool_(): st.booleans(),
    }
    return st.sampled_from(list(kinds)).flatmap(
        lambda kind: st.lists(st.none() | kinds[kind], min_size=n, max_size=n).map(lambda v: pa.array(v, kind)))


@st.composite
def tables(draw: st.DrawFn, columns: list[str]) -> pa.Table:
    """A table with some of ``columns`` (and perhaps an extra one), 0 to 6 rows; small non-negative integer counts
    and plain ids are likely, so that valid tables occur too."""
    n = draw(st.integers(0, 6))
    names = [c for c in columns if draw(st.integers(0, 9)) > 0] + draw(st.lists(st.text(max_size=4), max_size=1))
    arrays = {}
    for name in dict.fromkeys(names):
        plain = (st.lists(st.text("abcdef0123", min_size=1, max_size=4), min_size=n, max_size=n, unique=True)
                 .map(pa.array) if name in ("id_str", "tile_id") else
                 st.lists(st.integers(0, 3), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.int64())))
        arrays[name] = draw(plain if draw(st.booleans()) else _column(n))
    return pa.table(arrays) if arrays else pa.table({"other": pa.array([None] * n, pa.null())})


def _write_table(table: pa.Table, path: Path) -> None:
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)


@SETTINGS
@given(table=tables(["id_str", *SCHEMA.label_cols]), suffix=st.sampled_from([".parquet", ".csv"]),
       garbage=st.none() | st.binary(max_size=200))
@example(table=pa.table({"id_str": ["a"]}), suffix=".csv", garbage=b"\x80\r")  # a CSV that is not UTF-8
def test_any_votes_table_reads_or_is_a_votes_error(scratch, table, suffix, garbage):
    path = _fresh(scratch, "votes") / f"votes{suffix}"
    if garbage is None:
        _write_table(table, path)
    else:
        path.write_bytes(garbage)
    votes = _loads_or_input_error(read_votes, path, SCHEMA)
    assert votes is None or votes.column_names == ["id_str", *SCHEMA.label_cols]


@st.composite
def sources(draw: st.DrawFn) -> pa.Table:
    table = draw(tables(["id_str", "ra", "dec", "tile_id"]))
    if "ra" in table.column_names and draw(st.booleans()):  # positions on the sky, sometimes
        n = table.num_rows
        for name, low, high in (("ra", 0.0, 359.0), ("dec", -90.0, 90.0)):
            values = draw(st.lists(st.floats(low, high) | st.sampled_from([math.inf, math.nan, 1e300]),
                                   min_size=n, max_size=n))
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.float64()))
    return table


@SETTINGS
@given(table=sources())
def test_any_sources_table_opens_or_is_a_release_error(scratch, table):
    directory = _fresh(scratch, "release-sources")
    (directory / "release.json").write_text(json.dumps(RELEASE_JSON))
    pq.write_table(table, directory / "sources.parquet")
    release = _loads_or_input_error(lambda: Release.open(directory, allow_missing_tiles=True))
    if release is not None:
        assert release.sources.num_rows == table.num_rows > 0
        assert all(tile.is_relative_to(directory) for tile in release.tile_paths.values())


# -- release.json -------------------------------------------------------------------------------------------------


@SETTINGS
@given(content=json_files(RELEASE_JSON))
def test_any_release_json_opens_or_is_a_release_error(scratch, content):
    directory = _fresh(scratch, "release-json")
    (directory / "release.json").write_bytes(content)
    pq.write_table(pa.table({"id_str": ["a"], "ra": [150.0], "dec": [2.0], "tile_id": ["t0"]}),
                   directory / "sources.parquet")
    release = _loads_or_input_error(lambda: Release.open(directory, allow_missing_tiles=True))
    assert release is None or release.bands
