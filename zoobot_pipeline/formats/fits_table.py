"""A scored catalogue as one FITS binary table (TOPCAT, astropy, fitsio, CFITSIO), written as a stream.

The table extension (``EXTNAME = 'CATALOGUE'``, after an empty primary HDU) has one column per catalogue column, in
catalogue order: float32 as ``E``, float64 as ``D``, booleans as ``L`` (a null is FITS's null logical, byte 0) and
strings as ``nA`` with ``n`` the longest value in bytes (a null string is empty). ``TUNITn`` holds the unit (``deg``
for ra/dec, ``nat`` for information) and ``TCOMMn`` the description. A null number is NaN. The header records the
provenance (:data:`KEYWORDS`: model sha256, package, variant, release, code version, MC samples, seed, ...).

The header is written first with the row count known from the part files' footers, then the rows batch by batch as
big-endian bytes (:class:`astropy.io.fits.StreamingHDU`): memory holds one batch, never the catalogue.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from zoobot_pipeline._version import __version__
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.formats.parts import CatalogueSource
from zoobot_pipeline.io import atomic_path

__all__ = ["EXTNAME", "KEYWORDS", "write_fits"]

EXTNAME = "CATALOGUE"
KEYWORDS = {
    "model_sha256": ("MODELSHA", "sha256 of the model package"),
    "package": ("PACKAGE", "model package directory"),
    "variant": ("VARIANT", "precision variant of the ONNX graph"),
    "task": ("TASK", "model task"),
    "schema": ("SCHEMA", "decision tree"),
    "release": ("RELEASE", "data release name"),
    "release_path": ("RELPATH", "data release directory"),
    "mc_samples": ("MCSAMPLE", "MC-dropout samples per galaxy (0: dropout off)"),
    "seed": ("SEED", "seed of the dropout masks (with each id_str)"),
    "chunk_size": ("CHUNKSIZ", "sources per unit of work"),
    "n_volunteers": ("NVOLUNT", "votes per galaxy in the information columns"),
    "preprocessing": ("PREPROC", "preprocessing (JSON)"),
    "cutout_sizing": ("CUTOUT", "cutout sizing (JSON)"),
    "code_version": ("CODEVERS", "zoobot-pipeline version that scored it"),
}
"""Header keyword and comment of each provenance key (:data:`~zoobot_pipeline.formats.parts.PROVENANCE_KEYS`)."""
_INTEGERS = frozenset({"mc_samples", "seed", "chunk_size", "n_volunteers"})
_TRUE, _FALSE, _NULL = ord("T"), ord("F"), 0


def _column_format(field: pa.Field, widths: dict[str, int]) -> tuple[str, str]:
    """FITS ``TFORM`` and the numpy big-endian dtype of one column."""
    if pa.types.is_float32(field.type):
        return "E", ">f4"
    if pa.types.is_float64(field.type):
        return "D", ">f8"
    if pa.types.is_boolean(field.type):
        return "L", "u1"
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return f"{widths[field.name]}A", f"S{widths[field.name]}"
    raise ZoobotPipelineError(f"column {field.name!r} has type {field.type}, which the FITS export does not write")


def _header(source: CatalogueSource, formats: list[tuple[str, str]]) -> fits.Header:
    columns = []
    for field, (tform, _) in zip(source.schema, formats, strict=True):
        info = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        columns.append(fits.Column(name=field.name, format=tform, unit=info.get("unit")))
    header = fits.BinTableHDU.from_columns(columns, nrows=0, name=EXTNAME).header
    header["NAXIS2"] = source.n_rows
    for i, field in enumerate(source.schema, start=1):
        description = (field.metadata or {}).get(b"description")
        if description:
            header[f"TCOMM{i}"] = description.decode()
    header["LONGSTRN"] = ("OGIP 1.0", "long strings continue on CONTINUE cards")
    header["ORIGIN"] = (f"zoobot-pipeline {__version__}", "catalogue export")
    header["NTILES"] = (len(source.files), "tiles (part files) of the catalogue")
    for key, value in source.provenance.items():
        keyword, comment = KEYWORDS[key]
        header.append(_card(keyword, int(value) if key in _INTEGERS else value, comment))
    return header


def _card(keyword: str, value: str | int, comment: str) -> fits.Card:
    """A header card with its comment where the comment fits beside the value (not beside a sha256 or a long path);
    a value longer than a card continues on CONTINUE cards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        try:
            card = fits.Card(keyword, value, comment)
            card.image  # noqa: B018 - formatting the card is what warns of a truncated comment
        except VerifyWarning:
            card = fits.Card(keyword, value)
    return card


def _rows(batch: pa.RecordBatch, dtype: np.dtype) -> np.ndarray:
    """One batch as FITS rows: a big-endian record array."""
    rows = np.zeros(batch.num_rows, dtype=dtype)
    for name in dtype.names:
        column = batch[name]
        kind = dtype[name].kind
        if kind == "S":
            rows[name] = pc.fill_null(column, "").cast(pa.binary()).to_numpy(zero_copy_only=False)
        elif kind == "u":
            values = pc.fill_null(column, False).to_numpy(zero_copy_only=False)
            rows[name] = np.where(column.is_valid().to_numpy(zero_copy_only=False),
                                  np.where(values, _TRUE, _FALSE), _NULL)
        else:
            rows[name] = column.to_numpy(zero_copy_only=False)  # a null float is NaN
    return rows


def write_fits(source: CatalogueSource, out: str | Path) -> Path:
    """Write the catalogue ``source`` as one FITS binary table to ``out``, atomically (see the module docstring)."""
    out = Path(out)
    strings = [f.name for f in source.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    widths = source.widest(strings)
    formats = [_column_format(field, widths) for field in source.schema]
    dtype = np.dtype([(field.name, dt) for field, (_, dt) in zip(source.schema, formats, strict=True)])
    header = _header(source, formats)
    changed = ZoobotPipelineError(f"{source.path}: its part files changed while they were exported (the rows differ "
                                  "from their footers' count); export it again")
    written = 0
    with atomic_path(out) as tmp:
        stream = fits.StreamingHDU(tmp, header)
        try:
            for batch in source.batches():
                written += batch.num_rows
                if written > source.n_rows:
                    raise changed
                stream.write(_rows(batch, dtype).view(np.uint8))
        finally:
            stream.close()
        if written != source.n_rows:
            raise changed
    return out
