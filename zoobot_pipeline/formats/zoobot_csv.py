"""A scored catalogue as the CSV Zoobot's ``predict_on_catalog.predict`` writes, so Galaxy Zoo scripts read it as is.

Zoobot 2.9 (``zoobot/pytorch/predictions/predict_on_catalog.py``) writes ``pd.DataFrame(predictions,
columns=label_cols)`` with ``id_str`` added as the last column, by ``to_csv(save_loc, index=False)``: one column per
model output, named by its label and nothing else, then ``id_str``. The outputs are what the model's ``predict_step``
returns: Dirichlet concentrations for a decision tree (``ZoobotTree``, ``FinetuneableZoobotTree``), softmax class
probabilities for a classifier, the values for a regressor. Here they come from the catalogue's
``{label}_concentration``, ``p_{class}`` or ``{name}`` columns (means over the MC-dropout samples; a catalogue scored
with ``--mc-samples 0`` holds the one pass with dropout off that Zoobot's ``predict`` makes). The header is written
as pandas writes it, the rows batch by batch by Arrow's CSV writer (ten times faster than pandas, the same numbers).
Only scored galaxies are written (Zoobot has a prediction for every row it writes); the flagged ones are in the FITS
and HATS exports, with their flags.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from zoobot_pipeline.catalogue import CLASS_PREFIX, CONCENTRATION_SUFFIX, FLAG, STD_SUFFIX
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.formats.parts import CatalogueSource
from zoobot_pipeline.io import atomic_path

__all__ = ["ID_COLUMN", "write_zoobot_csv", "zoobot_columns"]

ID_COLUMN = "id_str"


def zoobot_columns(schema: pa.Schema, task: str) -> dict[str, str]:
    """Catalogue column -> Zoobot prediction column (its label), in model output order, for a catalogue of ``task``."""
    names = schema.names
    if task == "dirichlet":
        labels = {n: n.removesuffix(CONCENTRATION_SUFFIX) for n in names if n.endswith(CONCENTRATION_SUFFIX)}
    elif task == "classification":
        labels = {n: n.removeprefix(CLASS_PREFIX) for n in names if n.startswith(CLASS_PREFIX)}
    elif task == "regression":
        labels = {n: n for n in names if f"{n}{STD_SUFFIX}" in names}
    else:
        raise ZoobotPipelineError(f"a catalogue of task {task!r} has no Zoobot prediction columns")
    if not labels:
        raise ZoobotPipelineError(f"no {task} prediction columns among the catalogue's columns")
    return labels


def write_zoobot_csv(source: CatalogueSource, out: str | Path) -> int:
    """Write the scored rows of ``source`` as Zoobot's prediction CSV to ``out``, atomically; returns the rows
    written (see the module docstring)."""
    labels = zoobot_columns(source.schema, source.provenance.get("task", ""))
    columns = [*labels, ID_COLUMN, FLAG]
    header = [*labels.values(), ID_COLUMN]
    written = 0
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        handle.write(pd.DataFrame(columns=header).to_csv(index=False).encode())
        for batch in source.batches(columns):
            scored = batch.filter(pc.is_null(batch[FLAG])).select([*labels, ID_COLUMN]).rename_columns(header)
            handle.write(_csv_rows(scored))
            written += scored.num_rows
    return written


def _csv_rows(batch: pa.RecordBatch) -> bytes:
    """The rows as CSV, quoted as pandas quotes them: an id only where it holds a comma, quote or line end (Arrow
    quotes every string of a batch that has one). Arrow writes a float32 with its shortest round-trip digits, as
    pandas does (below 1e-4 in fixed rather than exponent notation: the same number)."""
    sink = io.BytesIO()
    try:
        pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    except pa.ArrowInvalid:
        sink = io.BytesIO()
        pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()
