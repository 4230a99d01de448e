"""Zooniverse subject manifests: ``manifest.csv`` plus one colour image per subject, in one directory.

The CSV follows the Zooniverse subject uploader convention (project builder and ``panoptes subject-set
upload-subjects``): one row per subject, the image file name in :data:`IMAGE_COLUMN` (the file sits beside the CSV),
every other column is subject metadata. Metadata columns start with ``#`` so volunteers do not see them but exports
keep them: ``#priority`` is the queue rank (1 = most wanted; a prioritised workflow shows the lowest first), then
``#id_str``, ``#ra``, ``#dec``, ``#acquisition``, ``#top_question``, ``#model`` (model sha256) and ``#release``.
Rows are in rank order.

Images are 424 x 424 colour composites as Galaxy Zoo shows them (:mod:`zoobot_pipeline.data.render`), at most 1 MiB,
cut from the release tiles with :class:`~zoobot_pipeline.data.cutouts.CutoutSizing` (size grows with the source's
half-light radius). Each is named after its ``id_str`` and written atomically; a rerun reuses the images already
there, so it never duplicates one and resumes an interrupted run. The CSV is written last, atomically.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline.active.ranking import QUEUE_FILE
from zoobot_pipeline.data.cutouts import CutoutSizing, tile_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import render_image
from zoobot_pipeline.io import atomic_path

__all__ = [
    "IMAGE_COLUMN", "IMAGE_FORMATS", "MANIFEST_COLUMNS", "MANIFEST_FILE", "ManifestRow", "image_name", "read_manifest",
    "read_queue", "write_manifest",
]

MANIFEST_FILE = "manifest.csv"
IMAGE_COLUMN = "image_1"
MANIFEST_COLUMNS = (IMAGE_COLUMN, "#priority", "#id_str", "#ra", "#dec", "#acquisition", "#top_question", "#model",
                    "#release")
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
_QUEUE_COLUMNS = ("rank", "id_str", "ra", "dec", "acquisition", "top_question", "model_sha256", "release")
_FLOAT_COLUMNS = ("#ra", "#dec", "#acquisition")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ManifestRow:
    """One subject of a manifest: its image file, MIME type and metadata (numbers typed, the rest strings)."""

    image: Path
    mime_type: str
    metadata: dict[str, Any]

    @property
    def id_str(self) -> str:
        return str(self.metadata["#id_str"])


def image_name(id_str: str, fmt: str) -> str:
    """File name of a subject's image: the ``id_str``, with a short hash added when it had to be made file-safe."""
    safe = _UNSAFE.sub("_", id_str)
    if safe != id_str or safe.startswith("."):
        safe = f"{safe}-{hashlib.blake2b(id_str.encode(), digest_size=4).hexdigest()}"
    return f"{safe}.{fmt}"


def read_queue(queue: str | Path | pa.Table) -> pa.Table:
    """A queue table from a table, a queue directory (its ``queue.parquet``) or a Parquet file; sorted by rank."""
    if isinstance(queue, pa.Table):
        table, where = queue, "queue table"
    else:
        path = Path(queue)
        path = path / QUEUE_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: queue not found")
        table, where = pq.read_table(path), str(path)
    missing = [c for c in _QUEUE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing queue column(s) {', '.join(missing)}")
    if pc.count_distinct(table.column("id_str")).as_py() != table.num_rows:
        raise ValueError(f"{where}: an id_str appears more than once")
    return table.sort_by("rank")


def write_manifest(queue: str | Path | pa.Table, release_dir: str | Path, out_dir: str | Path, fmt: str = "png", *,
                   size: int = 424, sizing: CutoutSizing | None = None) -> Path:
    """Render every queued galaxy from ``release_dir`` into ``out_dir`` and write ``out_dir/manifest.csv``; returns
    the CSV's path. A galaxy missing from the release, or whose cutout is off its tile or mostly empty, is an error
    naming it."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; use {' or '.join(IMAGE_FORMATS)}")
    table = read_queue(queue)
    release = Release.open(release_dir)
    sizing = sizing or CutoutSizing()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = table.column("id_str").to_pylist()
    names = {id_str: image_name(id_str, fmt) for id_str in ids}
    if len(set(names.values())) != len(names):
        raise ValueError("two id_str values map to the same image file name")
    _render_missing(release, [i for i in ids if not (out / names[i]).is_file()], names, out, fmt, size, sizing)

    rows = table.select(list(_QUEUE_COLUMNS)).to_pylist()
    with atomic_path(out / MANIFEST_FILE) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow([names[row["id_str"]], row["rank"], row["id_str"], repr(row["ra"]), repr(row["dec"]),
                             repr(row["acquisition"]), row["top_question"] or "", row["model_sha256"] or "",
                             row["release"] or ""])
    return out / MANIFEST_FILE


def _render_missing(release: Release, ids: list[str], names: dict[str, str], out: Path, fmt: str, size: int,
                    sizing: CutoutSizing) -> None:
    """Render ``ids`` tile by tile (one tile open at a time), with source positions and sizes from the release."""
    if not ids:
        return
    sources = release.sources.filter(pc.is_in(release.sources.column("id_str"), value_set=pa.array(ids)))
    unknown = sorted(set(ids) - set(sources.column("id_str").to_pylist()))
    if unknown:
        raise ValueError(f"{release.path}: queued galaxies not in the release's sources: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    tiles = sources.column("tile_id").to_numpy(zero_copy_only=False)
    for tile_id in sorted(set(tiles.tolist())):
        rows = sources.filter(pa.array(tiles == tile_id))
        with release.open_tile(tile_id) as tile:
            cutouts = tile_cutouts(tile, rows, sizing, release.info.pixel_scale_arcsec)
        for id_str, cut in zip(rows.column("id_str").to_pylist(), cutouts, strict=True):
            if cut.rejected:
                raise ValueError(f"{release.path}: cutout of {id_str} on tile {tile_id} is off the tile or "
                                 f"{cut.nan_fraction:.0%} empty; it cannot be shown to volunteers")
            render_image(cut.data, out / names[id_str], release.bands, size, fmt=fmt)


def read_manifest(manifest_dir: str | Path) -> list[ManifestRow]:
    """Read ``manifest_dir/manifest.csv`` back; checks the columns, the images and that ``#id_str`` is unique."""
    path = Path(manifest_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing manifest column(s) {', '.join(missing)}")
        records = list(reader)
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for line, record in enumerate(records, start=2):
        image = path.parent / record[IMAGE_COLUMN]
        if not image.is_file():
            raise ValueError(f"{path}: line {line}: image {record[IMAGE_COLUMN]!r} not found beside the manifest")
        mime = IMAGE_FORMATS.get(image.suffix.lower().lstrip(".").replace("jpg", "jpeg"))
        if mime is None:
            raise ValueError(f"{path}: line {line}: image {image.name!r} is not PNG or JPEG")
        if record["#id_str"] in seen:
            raise ValueError(f"{path}: line {line}: #id_str {record['#id_str']!r} appears more than once")
        seen.add(record["#id_str"])
        metadata: dict[str, Any] = dict(record)
        try:
            metadata["#priority"] = int(record["#priority"])
            for column in _FLOAT_COLUMNS:
                metadata[column] = float(record[column])
        except ValueError as err:
            raise ValueError(f"{path}: line {line}: {err}") from None
        rows.append(ManifestRow(image=image, mime_type=mime, metadata=metadata))
    return rows
