"""A scored catalogue as a HATS catalogue (hats-import), which LSDB reads and cross-matches with other HATS catalogues
(Rubin, Gaia, Euclid, ZTF ...).

hats-import maps the rows to HEALPix pixels, then writes each partition (a pixel holding at most ``partition_rows``
rows) as one Parquet file under ``dataset/``, sorted by the ``_healpix_29`` spatial index it adds, with
``hats.properties``, ``partition_info.csv`` and sky maps. It reads the part files in batches and holds at most one
partition at a time, so memory does not grow with the catalogue. It runs in this process on dask's in-process
scheduler with one worker thread (no cluster, no network, nothing left running). The Parquet files keep each column's
unit and description, and their metadata, like ``hats.properties`` (keys ``zoobot_*``), the run's provenance.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zoobot_pipeline.formats.parts import BATCH_ROWS, CatalogueSource
from zoobot_pipeline.io import atomic_directory, safe_file_name

__all__ = ["HATS_ENTRIES", "PARTITION_ROWS", "import_hats", "write_hats"]

HATS_ENTRIES = ("hats.properties", "properties", "partition_info.csv", "dataset", "skymap.fits", "point_map.fits")
"""What hats-import writes into a catalogue directory (the entries ``--overwrite`` replaces; others are kept)."""
PARTITION_ROWS = 250_000
"""Default most rows per HATS partition (hats-import's ``pixel_threshold``): ~0.1 GB of a decision tree's columns."""


def import_hats(files: Sequence[Path], out: str | Path, *, schema: pa.Schema, properties: dict[str, str],
                expected_rows: int, partition_rows: int = PARTITION_ROWS, ra_column: str = "ra",
                dec_column: str = "dec") -> Path:
    """Convert the Parquet ``files`` (columns ``schema``, positions in degrees in ``ra_column``/``dec_column``) into
    the HATS catalogue ``out``, atomically; only :data:`HATS_ENTRIES` of an existing ``out`` are replaced.
    ``properties`` are added to ``hats.properties``; hats-import checks that it wrote ``expected_rows`` rows."""
    from dask.distributed import Client  # dask and hats-import take ~3 s to import: only for this export
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.catalog.file_readers.parquet import ParquetPyarrowReader
    from hats_import.pipeline import pipeline_with_client

    out = Path(out)
    name = safe_file_name(out.name)
    with atomic_directory(out, own=HATS_ENTRIES, marker="hats.properties") as tmp:
        work = tmp / ".work"
        work.mkdir()
        schema_file = work / "schema.parquet"
        pq.write_table(schema.empty_table(), schema_file)
        arguments = ImportArguments(
            output_path=work, output_artifact_name=name, input_file_list=[str(f) for f in files],
            file_reader=ParquetPyarrowReader(chunksize=BATCH_ROWS), ra_column=ra_column, dec_column=dec_column,
            use_schema_file=schema_file, pixel_threshold=partition_rows, expected_total_rows=expected_rows,
            addl_hats_properties=properties, tmp_dir=work / "intermediate", resume=False, progress_bar=False)
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                    local_directory=str(work / "dask"), silence_logs=logging.ERROR) as client:
            pipeline_with_client(arguments, client)
        for entry in (work / name).iterdir():
            os.replace(entry, tmp / entry.name)
        shutil.rmtree(work)
    return out


def write_hats(source: CatalogueSource, out: str | Path, partition_rows: int = PARTITION_ROWS) -> Path:
    """Write the catalogue ``source`` as the HATS catalogue ``out`` (see the module docstring)."""
    provenance = {f"zoobot_{key}": value for key, value in source.provenance.items()}
    return import_hats(source.files, out, schema=source.schema.with_metadata(source.provenance),
                       properties=provenance, expected_rows=source.n_rows, partition_rows=partition_rows)
