"""The scored catalogue on disk: one Parquet part file per tile, a failures table and a summary.

Layout::

    CATALOGUE/tiles/{tile_id}.parquet   one file per tile, every source of the tile once, written atomically
    CATALOGUE/failures.parquet          tiles that could not be read in the latest run: tile_id, path, reason, n_sources
    CATALOGUE/catalogue.json            counts, model, release and settings, written at the end of a run

Columns of a part file: ``id_str``, ``ra``, ``dec`` (deg), ``tile_id``, the model columns (values:
:class:`~zoobot_pipeline.scoring.columns.OutputColumns`, names: below), then the quality flags ``edge`` (the cutout
is cut by the tile edge), ``nan_fraction`` (share of NaN or zero pixels in the cutout) and ``flag``: null for a
scored galaxy, otherwise why it was not scored (``off_tile``, ``nan_fraction 0.35 >= 0.2``, ``tile_failed: <reason>``,
``preprocessing_failed: <reason>``, ``outputs_not_finite``). Unscored rows keep id, position and tile and have null
model columns (and null ``edge``/``nan_fraction`` when the tile could not be read).

File metadata (Parquet key-value, strings): the run settings of :class:`RunSettings` (model sha256, schema, release,
MC samples, seed, ...), the tile id, a digest of the tile's source ids, row counts, and, for astropy, the
``table_meta_yaml`` and ``table::len::*`` keys that its Parquet reader uses for units, descriptions, metadata and
string widths. astropy shows a null string as ``"None"``; pandas, polars and pyarrow read nulls as nulls.

Model column names: a decision tree gives ``{label}_fraction`` and ``{label}_concentration`` per answer,
``{question}_mutual_information``, ``{question}_entropy`` and ``{question}_probability_asked`` per question, and
``acquisition``; a classifier ``p_{class}``, ``predicted``, ``entropy``, ``mutual_information`` and ``acquisition``; a
regressor ``{name}`` and ``{name}_std``.

A catalogue handed to a reader (:func:`catalogue_files`) is a directory of Parquet files, searched recursively, or one
Parquet file: a scored catalogue, or any table with its columns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from zoobot_pipeline.errors import ZoobotPipelineError, check_name
from zoobot_pipeline.io import write_json_atomic, write_parquet_atomic

__all__ = [
    "ACQUISITION", "CATALOGUE_JSON", "CLASS_PREFIX", "CONCENTRATION_SUFFIX", "ENTROPY", "FAILURES_FILE",
    "FAILURES_SCHEMA", "FLAG", "FRACTION_SUFFIX", "MUTUAL_INFORMATION", "PREDICTED", "PROBABILITY_ASKED",
    "QUESTION_QUANTITIES", "STD_SUFFIX", "TILES_DIR", "RunSettings", "catalogue_files", "catalogue_questions",
    "catalogue_schema", "class_column", "concentration_column", "flag_category", "flag_counts", "fraction_column",
    "part_files", "part_metadata", "part_path", "question_column", "read_catalogue", "read_summary_json",
    "sources_digest",
    "std_column", "write_failures", "write_part", "write_summary_json",
]

TILES_DIR = "tiles"
FAILURES_FILE = "failures.parquet"
CATALOGUE_JSON = "catalogue.json"

ACQUISITION = "acquisition"
FLAG = "flag"
PREDICTED = "predicted"
MUTUAL_INFORMATION = "mutual_information"
ENTROPY = "entropy"
PROBABILITY_ASKED = "probability_asked"
QUESTION_QUANTITIES = (MUTUAL_INFORMATION, ENTROPY, PROBABILITY_ASKED)
FRACTION_SUFFIX = "_fraction"
CONCENTRATION_SUFFIX = "_concentration"
STD_SUFFIX = "_std"
CLASS_PREFIX = "p_"

_DEG = {"unit": "deg"}
BASE_FIELDS = [
    pa.field("id_str", pa.string(), nullable=False),
    pa.field("ra", pa.float64(), metadata=_DEG | {"description": "right ascension (ICRS)"}),
    pa.field("dec", pa.float64(), metadata=_DEG | {"description": "declination (ICRS)"}),
    pa.field("tile_id", pa.string()),
]
FLAG_FIELDS = [
    pa.field("edge", pa.bool_(), metadata={"description": "cutout cut by the tile edge"}),
    pa.field("nan_fraction", pa.float32(), metadata={"description": "fraction of NaN or zero cutout pixels"}),
    pa.field(FLAG, pa.string(), metadata={"description": "null when scored, otherwise why not"}),
]
FAILURES_SCHEMA = pa.schema([
    pa.field("tile_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("n_sources", pa.int64()),
])


@dataclass(frozen=True)
class RunSettings:
    """What a catalogue's numbers depend on; every part file records it, and a run only resumes a catalogue whose
    parts have the same settings."""

    model_sha256: str
    variant: str
    task: str
    schema: str
    release: str
    mc_samples: int
    seed: int
    chunk_size: int
    n_volunteers: int
    preprocessing: str
    cutout_sizing: str

    def metadata(self) -> dict[str, str]:
        """The settings as Parquet key-value strings."""
        return {key: str(value) for key, value in asdict(self).items()}

    def differences(self, metadata: dict[str, str]) -> list[str]:
        """``key: theirs != ours`` for every setting that differs from a part file's metadata."""
        return [f"{key}: {metadata.get(key)!r} != {value!r}" for key, value in self.metadata().items()
                if metadata.get(key) != value]


def fraction_column(label: str) -> str:
    """``{label}_fraction``: the expected vote fraction of an answer."""
    return f"{label}{FRACTION_SUFFIX}"


def concentration_column(label: str) -> str:
    """``{label}_concentration``: the Dirichlet concentration of an answer."""
    return f"{label}{CONCENTRATION_SUFFIX}"


def question_column(question: str, quantity: str) -> str:
    """``{question}_{quantity}`` for a ``quantity`` of :data:`QUESTION_QUANTITIES`."""
    return f"{question}_{check_name(quantity, QUESTION_QUANTITIES, 'per-question quantity')}"


def class_column(name: str) -> str:
    """``p_{name}``: a classifier's probability of class ``name``."""
    return f"{CLASS_PREFIX}{name}"


def std_column(name: str) -> str:
    """``{name}_std``: the spread over MC samples of a regressor's output ``name``."""
    return f"{name}{STD_SUFFIX}"


def catalogue_questions(schema: pa.Schema) -> list[str]:
    """The questions of a decision-tree catalogue (those with a ``{question}_mutual_information`` column), in
    column order; none for a classifier's or regressor's catalogue."""
    suffix = f"_{MUTUAL_INFORMATION}"
    return [name.removesuffix(suffix) for name in schema.names if name.endswith(suffix)]


def catalogue_schema(model_fields: Sequence[pa.Field]) -> pa.Schema:
    """Arrow schema of a part file (without file metadata): base columns, the model's columns, then the flags."""
    return pa.schema([*BASE_FIELDS, *model_fields, *FLAG_FIELDS])


def part_path(out_dir: str | Path, tile_id: str) -> Path:
    """The part file of a tile; the id is percent-encoded where it is not a plain file name."""
    name = urllib.parse.quote(tile_id, safe="")
    if name.startswith((".", "_")):  # readers (pyarrow datasets, the ranker) skip these names
        name = f"%{ord(name[0]):02X}" + name[1:]
    return Path(out_dir) / TILES_DIR / f"{name}.parquet"


def part_files(out_dir: str | Path) -> list[Path]:
    """The catalogue's part files, sorted; unfinished ``.tmp-*`` files are not listed."""
    tiles = Path(out_dir) / TILES_DIR
    return sorted(p for p in tiles.glob("*.parquet") if not p.name.startswith(".")) if tiles.is_dir() else []


def catalogue_files(catalogue: str | Path) -> list[Path]:
    """The Parquet files of a catalogue, sorted: ``catalogue`` itself if it is a file, else every ``*.parquet`` under
    the directory except :data:`FAILURES_FILE` at its top and any path with a part starting with ``.`` or ``_``
    (unfinished writes, private files)."""
    root = Path(catalogue)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: catalogue not found")
    files = []
    for path in root.rglob("*.parquet"):
        relative = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in relative.parts) or relative == Path(FAILURES_FILE):
            continue
        files.append(path)
    if not files:
        raise ZoobotPipelineError(f"{root}: no catalogue Parquet files found")
    return sorted(files)


def part_metadata(path: str | Path) -> dict[str, str]:
    """A part file's key-value metadata (read from the footer only)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def flag_category(flag: str) -> str:
    """The reason category of a flag: ``tile_failed: ...`` and ``nan_fraction 0.4 >= 0.2`` give their first word."""
    return flag.split(":", 1)[0].split(" ", 1)[0]


def flag_counts(flags: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Rows per flag category (scored rows, with a null flag, not counted)."""
    return dict(Counter(flag_category(f) for f in pc.drop_null(flags).to_pylist()))


@functools.cache
def _astropy_columns_yaml(schema: pa.Schema) -> str:
    """astropy's YAML description of the columns (units, descriptions, types); dumping it takes ~0.1 s, once."""
    from astropy.table import Table, meta  # astropy.table: ~0.3 s, needed only when writing parts

    empty = Table()
    for field in schema:
        empty[field.name] = np.zeros(0, dtype="U1" if pa.types.is_string(field.type) else field.type.to_pandas_dtype())
        info = field.metadata or {}
        if b"unit" in info:
            empty[field.name].unit = info[b"unit"].decode()
        if b"description" in info:
            empty[field.name].description = info[b"description"].decode()
    return "\n".join(meta.get_yaml_from_table(empty))


def _astropy_metadata(table: pa.Table, metadata: dict[str, str]) -> dict[str, str]:
    """The keys astropy's Parquet reader takes units, descriptions, table meta and string widths from."""
    meta_yaml = yaml.safe_dump({"meta": metadata}, default_flow_style=False, sort_keys=False, width=float("inf"))
    widths = {f"table::len::{field.name}": str(max(1, pc.max(pc.utf8_length(table[field.name])).as_py() or 1))
              for field in table.schema if pa.types.is_string(field.type)}
    return {"table_meta_yaml": f"{_astropy_columns_yaml(table.schema.remove_metadata())}\n{meta_yaml}", **widths}


def write_part(table: pa.Table, path: Path, metadata: dict[str, str]) -> Path:
    """Write one tile's rows with ``metadata`` (plus astropy's keys) atomically to ``path``."""
    table = table.replace_schema_metadata({**metadata, **_astropy_metadata(table, metadata)})
    return write_parquet_atomic(table, path)


def read_catalogue(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every part file of a catalogue as one table (tile by tile); ``columns`` selects columns."""
    files = part_files(out_dir)
    if not files:
        raise FileNotFoundError(f"{out_dir}: no catalogue part files under {Path(out_dir) / TILES_DIR}")
    import pyarrow.dataset as pads  # ~0.2 s, for readers only

    dataset = pads.dataset([str(p) for p in files], format="parquet")
    return dataset.to_table(columns=columns)


def write_failures(out_dir: str | Path, failures: list[dict[str, object]]) -> Path:
    """Write the failures table (possibly empty) atomically."""
    table = pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA)
    return write_parquet_atomic(table, Path(out_dir) / FAILURES_FILE)


def write_summary_json(out_dir: str | Path, summary: dict[str, object]) -> Path:
    """Write ``catalogue.json`` atomically."""
    return write_json_atomic(summary, Path(out_dir) / CATALOGUE_JSON)


def read_summary_json(out_dir: str | Path) -> dict[str, object] | None:
    """``catalogue.json`` of a finished run, or None; an unreadable one is a
    :class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming it."""
    path = Path(out_dir) / CATALOGUE_JSON
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ZoobotPipelineError(f"{path}: unreadable catalogue summary ({err}); scoring again into this "
                                  "catalogue rewrites it") from None
    if not isinstance(summary, dict):
        raise ZoobotPipelineError(f"{path}: not a catalogue summary (expected a JSON object)")
    return summary


def sources_digest(id_strs: Sequence[str]) -> str:
    """sha256 of a tile's source ids in release order: a part file's ``sources_digest``, by which a rerun reuses a
    tile only for the same sources and a queue recognises the release it was ranked from."""
    return hashlib.sha256("\n".join(id_strs).encode()).hexdigest()
