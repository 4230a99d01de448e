"""What a scored catalogue holds: counts, flags, failed tiles and the distributions of its key columns.

Counts come from the part files' metadata; distributions from two streaming passes over only the key columns (range,
then a histogram of ``bins`` bins), so memory does not grow with the catalogue and quantiles are exact to within one
bin width ((max - min) / bins). Key columns:
the first question's ``{label}_fraction`` columns (decision trees), the ``p_{class}`` columns (classifiers) or the
value columns (regressors), and ``acquisition``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline.catalogue import (
    ACQUISITION,
    CLASS_PREFIX,
    FAILURES_FILE,
    FRACTION_SUFFIX,
    PREDICTED,
    STD_SUFFIX,
    TILES_DIR,
    catalogue_questions,
    part_files,
    part_metadata,
    read_summary_json,
)
from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = ["QUANTILES", "CatalogueSummary", "Distribution", "key_columns", "summarize_catalogue"]

QUANTILES = (0.05, 0.5, 0.95)
_METADATA_SHOWN = ("release", "model_sha256", "variant", "task", "schema", "mc_samples", "seed", "package",
                   "code_version")


@dataclass
class Distribution:
    """Distribution of one column over the scored rows: ``histogram`` counts between ``edges``."""

    column: str
    n: int
    mean: float
    edges: np.ndarray
    histogram: np.ndarray

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, interpolated linearly within its histogram bin."""
        if self.n == 0:
            return float("nan")
        cumulative = np.concatenate([[0], np.cumsum(self.histogram)])
        return float(np.interp(q * self.n, cumulative, self.edges))


@dataclass
class CatalogueSummary:
    """Totals, the run's metadata and the key columns' distributions of a catalogue directory."""

    path: Path
    metadata: dict[str, str]
    n_tiles: int
    n_sources: int
    n_scored: int
    flagged: dict[str, int]
    failures: list[dict[str, Any]]
    distributions: list[Distribution] = field(default_factory=list)
    first_question: str | None = None
    finished: dict[str, Any] | None = None

    def label(self, column: str) -> str:
        """A short row label: the answer for the first question's fractions, else the column name."""
        if self.first_question and column.endswith(FRACTION_SUFFIX):
            return column.removeprefix(f"{self.first_question}_").removesuffix(FRACTION_SUFFIX)
        return column


def key_columns(schema: pa.Schema) -> list[str]:
    """The columns whose distribution a summary shows (see the module docstring)."""
    names = schema.names
    questions = catalogue_questions(schema)
    if questions:
        keys = [n for n in names if n.startswith(f"{questions[0]}_") and n.endswith(FRACTION_SUFFIX)]
    elif PREDICTED in names:
        keys = [n for n in names if n.startswith(CLASS_PREFIX)]
    else:
        keys = [n.removesuffix(STD_SUFFIX) for n in names
                if n.endswith(STD_SUFFIX) and n.removesuffix(STD_SUFFIX) in names]
    return keys + ([ACQUISITION] if ACQUISITION in names else [])


def _unreadable(path: Path, err: Exception, what: str = "catalogue part file") -> ZoobotPipelineError:
    return ZoobotPipelineError(f"{path}: unreadable {what} ({' '.join(str(err).split())}); remove it and score "
                               "again into this catalogue to redo it (finished tiles are kept)")


def _stream(files: list[Path], columns: list[str]) -> Iterator[pa.Table]:
    for path in files:
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as err:
            raise _unreadable(path, err) from err
        yield table


def _counts(file: Path) -> dict[str, Any]:
    """The row counts a part file records in its metadata."""
    try:
        meta = part_metadata(file)
    except (OSError, pa.ArrowException) as err:
        raise _unreadable(file, err) from err
    if "counts" not in meta:
        raise ZoobotPipelineError(f"{file}: not a catalogue part file (no 'counts' metadata)")
    try:
        counts = json.loads(meta["counts"])
        if not (isinstance(counts["sources"], int) and isinstance(counts["scored"], int)
                and isinstance(counts["flagged"], dict)):
            raise TypeError("counts of the wrong type")
    except (ValueError, KeyError, TypeError) as err:
        raise ZoobotPipelineError(f"{file}: its 'counts' metadata is unreadable ({err!r}); remove it and score "
                                  "again into this catalogue to redo its tile") from None
    return counts | {"metadata": meta}


def _distributions(files: list[Path], columns: list[str], bins: int) -> list[Distribution]:
    lows = {c: np.inf for c in columns}
    highs = {c: -np.inf for c in columns}
    for table in _stream(files, columns):
        for c in columns:
            extremes = pc.min_max(table[c])
            if extremes["min"].as_py() is not None:
                lows[c] = min(lows[c], extremes["min"].as_py())
                highs[c] = max(highs[c], extremes["max"].as_py())
    edges = {c: np.linspace(lows[c], highs[c] if highs[c] > lows[c] else lows[c] + 1.0, bins + 1)
             if np.isfinite(lows[c]) else np.linspace(0.0, 1.0, bins + 1) for c in columns}
    counts = {c: np.zeros(bins, dtype=np.int64) for c in columns}
    sums = dict.fromkeys(columns, 0.0)
    for table in _stream(files, columns):
        for c in columns:
            values = pc.drop_null(table[c]).to_numpy().astype(np.float64)
            counts[c] += np.histogram(values, edges[c])[0]
            sums[c] += float(values.sum())
    return [Distribution(c, int(counts[c].sum()), sums[c] / max(int(counts[c].sum()), 1), edges[c], counts[c])
            for c in columns]


def summarize_catalogue(path: str | Path, bins: int = 1000) -> CatalogueSummary:
    """Summarise the catalogue directory ``path`` (see the module docstring)."""
    path = Path(path)
    files = part_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: not a scored catalogue (no part files under {path / TILES_DIR})")
    n_sources, n_scored, flagged = 0, 0, Counter()
    metadata: dict[str, str] = {}
    for file in files:
        counts = _counts(file)
        n_sources += counts["sources"]
        n_scored += counts["scored"]
        flagged.update(counts["flagged"])
        meta = counts["metadata"]
        metadata = metadata or {k: meta[k] for k in _METADATA_SHOWN if k in meta}
    failures_path = path / FAILURES_FILE
    try:
        failures = pq.read_table(failures_path).to_pylist() if failures_path.is_file() else []
    except (OSError, pa.ArrowException) as err:
        raise _unreadable(failures_path, err, "failures table") from err
    schema = pq.read_schema(files[0])
    questions = catalogue_questions(schema)
    return CatalogueSummary(path, metadata, len(files), n_sources, n_scored, dict(flagged), failures,
                            _distributions(files, key_columns(schema), bins), questions[0] if questions else None,
                            read_summary_json(path))
