"""A scored catalogue in the formats astronomers' tools open: one FITS table (TOPCAT, astropy), a HATS catalogue (LSDB)
and the CSV Zoobot's ``predict_on_catalog`` writes (Galaxy Zoo scripts).

Every export streams (:mod:`.parts`: one batch of rows in memory, never the catalogue) and is atomic (a temporary file
or directory beside ``out``, renamed into place at the end). An existing ``out`` is refused unless ``overwrite``, and
even then only what the export writes is replaced: the file, or a HATS catalogue's own entries (other files in that
directory are kept). ``out`` may not lie inside the catalogue or around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoobot_pipeline.errors import ZoobotPipelineError, check_name
from zoobot_pipeline.formats.parts import CatalogueSource

__all__ = ["FORMATS", "ExportResult", "export_catalogue"]

FORMATS = ("fits", "hats", "zoobot-csv")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``n_rows`` rows of ``n_tiles`` tiles to ``out``."""

    out: Path
    format: str
    n_rows: int
    n_tiles: int


def _check_out(out: Path, catalogue: Path, directory: bool, overwrite: bool) -> None:
    resolved, source = out.resolve(), catalogue.resolve()
    if resolved == source or resolved.is_relative_to(source) or source.is_relative_to(resolved):
        raise ZoobotPipelineError(f"{out}: would be written inside or around the catalogue {catalogue}; choose a path "
                                  "outside it")
    if directory:
        if out.exists() and not out.is_dir():
            raise ZoobotPipelineError(f"{out}: exists and is not a directory; a HATS catalogue is a directory")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise ZoobotPipelineError(f"{out}: exists and is not empty; choose another path, or pass --overwrite to "
                                      "replace the HATS catalogue's own files there (others are kept)")
    elif out.is_dir():
        raise ZoobotPipelineError(f"{out}: is a directory; give the path of the file to write")
    elif out.exists() and not overwrite:
        raise ZoobotPipelineError(f"{out}: exists; choose another path, or pass --overwrite to replace it")


def export_catalogue(catalogue: str | Path, out: str | Path, format: str, *, overwrite: bool = False,
                     partition_rows: int | None = None) -> ExportResult:
    """Export the scored catalogue directory ``catalogue`` to ``out`` in ``format`` (one of :data:`FORMATS`; see the
    module docstring). ``partition_rows``: most rows per HATS partition (default
    :data:`~.hats_catalogue.PARTITION_ROWS`; hats only)."""
    check_name(format, FORMATS, "catalogue export format")
    if partition_rows is not None and (format != "hats" or partition_rows < 1):
        raise ZoobotPipelineError(f"partition_rows {partition_rows}: only for --format hats, and at least 1")
    source = CatalogueSource.open(catalogue)
    out = Path(out)
    _check_out(out, source.path, format == "hats", overwrite)
    n_rows = source.n_rows
    if format == "fits":
        from zoobot_pipeline.formats.fits_table import write_fits

        write_fits(source, out)
    elif format == "hats":
        from zoobot_pipeline.formats.hats_catalogue import PARTITION_ROWS, write_hats

        write_hats(source, out, partition_rows or PARTITION_ROWS)
    else:
        from zoobot_pipeline.formats.zoobot_csv import write_zoobot_csv

        n_rows = write_zoobot_csv(source, out)
    return ExportResult(out, format, n_rows, len(source.files))
