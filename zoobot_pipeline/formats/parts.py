"""A finished scored catalogue opened for export: its part files checked to be one catalogue, then read in row batches.

:meth:`CatalogueSource.open` reads only the part files' footers: every part must have the same columns (names and
types) and the same run settings (:class:`~zoobot_pipeline.catalogue.RunSettings`), and ``catalogue.json`` must exist
(the scoring run finished) and count as many sources as the parts hold. :meth:`CatalogueSource.batches` then streams
the rows, tile by tile in part-file order, in batches of at most ``batch_rows`` rows, so an export holds one batch in
memory whatever the catalogue's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline.catalogue import TILES_DIR, RunSettings, part_files, read_summary_json
from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = ["BATCH_ROWS", "PROVENANCE_KEYS", "CatalogueSource"]

BATCH_ROWS = 65_536
"""Rows per batch read from a part file."""
_RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(RunSettings))
PROVENANCE_KEYS = (*_RUN_SETTINGS, "package", "release_path", "code_version")
"""The part-file metadata an export records: what the numbers depend on, where the model and release were, and the
version of the code that scored them."""


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as err:
        raise ZoobotPipelineError(f"{path}: unreadable catalogue part file ({' '.join(str(err).split())})") from err


def _settings(path: Path, footer: pq.FileMetaData) -> dict[str, str]:
    metadata = {k.decode(): v.decode() for k, v in (footer.metadata or {}).items()}
    if "model_sha256" not in metadata:
        raise ZoobotPipelineError(f"{path}: not a catalogue part file (no 'model_sha256' metadata)")
    return metadata


@dataclass(frozen=True)
class CatalogueSource:
    """The part files of a finished catalogue, their common Arrow ``schema`` (with each column's unit and
    description), the run's ``provenance`` (:data:`PROVENANCE_KEYS` present in the parts) and the total rows."""

    path: Path
    files: tuple[Path, ...]
    schema: pa.Schema
    provenance: dict[str, str]
    n_rows: int

    @classmethod
    def open(cls, path: str | Path) -> CatalogueSource:
        """Open the catalogue directory ``path`` (see the module docstring); anything else is a
        :class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming the file and the problem."""
        path = Path(path)
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise ZoobotPipelineError(f"{path}: {what}; give a catalogue directory written by score")
        files = part_files(path)
        if not files:
            raise ZoobotPipelineError(f"{path}: not a scored catalogue (no part files under {path / TILES_DIR})")
        summary = read_summary_json(path)
        if summary is None:
            raise ZoobotPipelineError(f"{path}: incomplete catalogue (no catalogue.json: its scoring run was "
                                      "interrupted or is still running); finish it with the same score command first")
        first = _footer(files[0])
        schema = first.schema.to_arrow_schema().remove_metadata()
        settings = _settings(files[0], first)
        n_rows = 0
        for file in files:
            footer = _footer(file)
            theirs = footer.schema.to_arrow_schema()
            if theirs.names != schema.names or theirs.types != schema.types:
                raise ZoobotPipelineError(f"{file}: its columns differ from those of {files[0]}; a catalogue's parts "
                                          "must come from one scoring run")
            theirs_settings = _settings(file, footer)
            differences = [f"{key}: {theirs_settings.get(key)!r} != {settings.get(key)!r}" for key in _RUN_SETTINGS
                           if theirs_settings.get(key) != settings.get(key)]
            if differences:
                raise ZoobotPipelineError(f"{file}: scored with other settings than {files[0]} "
                                          f"({'; '.join(differences)})")
            n_rows += footer.num_rows
        counted = summary.get("counts", {}).get("sources") if isinstance(summary.get("counts"), dict) else None
        if counted != n_rows:
            raise ZoobotPipelineError(f"{path}: catalogue.json counts {counted} sources but the part files hold "
                                      f"{n_rows} rows; score again into this catalogue to make it whole")
        provenance = {key: settings[key] for key in PROVENANCE_KEYS if key in settings}
        return cls(path, tuple(files), schema, provenance, n_rows)

    def batches(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows (``columns`` only, if given), tile by tile, in batches of at most ``batch_rows``."""
        for file in self.files:
            try:
                # one thread: Arrow's decoding threads each keep memory, and make the peak vary from run to run
                yield from pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns,
                                                             use_threads=False)
            except (OSError, pa.ArrowException) as err:
                raise ZoobotPipelineError(f"{file}: unreadable catalogue part file "
                                          f"({' '.join(str(err).split())})") from err
            # hand the part's buffers back: Arrow's allocator otherwise keeps them, and its peak grows with the parts
            pa.default_memory_pool().release_unused()

    def widest(self, columns: Sequence[str]) -> dict[str, int]:
        """The longest value, in UTF-8 bytes (at least 1), of each string column, from a pass over those columns."""
        widths = dict.fromkeys(columns, 1)
        if columns:
            for batch in self.batches(columns):
                for name in columns:
                    longest = pc.max(pc.binary_length(batch[name])).as_py()
                    widths[name] = max(widths[name], longest or 0)
        return widths

