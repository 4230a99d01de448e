"""Zooniverse subject manifests: ``manifest.csv`` plus one colour image per subject, in one directory.

The CSV follows the Zooniverse subject uploader convention (project builder and ``panoptes subject-set
upload-subjects``): one row per subject, the image file name in :data:`IMAGE_COLUMN` (the file sits beside the CSV),
every other column is subject metadata. Metadata columns start with ``#`` so volunteers do not see them but exports
keep them: ``#priority`` is the queue rank (1 = most wanted; a prioritised workflow shows the lowest first), then
``#id_str``, ``#ra``, ``#dec``, ``#acquisition``, ``#top_question``, ``#model`` (model sha256) and ``#release``.
Rows are in rank order.

Images are 424 x 424 colour composites as Galaxy Zoo shows them (:mod:`zoobot_pipeline.data.render`), at most 1 MiB,
cut from the release tiles with :class:`~zoobot_pipeline.data.cutouts.CutoutSizing` (size grows with the source's
half-light radius). Each is named after its ``id_str`` (:func:`~zoobot_pipeline.io.safe_file_name`: an id that is not
a plain file name, e.g. ``../x``, gets a safe name with a hash, inside the manifest directory) and written atomically;
a rerun reuses the images already there, so it never duplicates one and resumes an interrupted run. The CSV is written
last, atomically.

The release must be the queue's: its name must be the queue's ``release`` and, where the queue recorded them (queues
ranked from a scoring catalogue), each queued tile's source ids must have the digest the queue recorded; otherwise
the manifest is refused, naming both.

Spreadsheet formula injection (OWASP "CSV Injection"): a free-text cell (``#id_str``, ``#top_question``, ``#model``,
``#release``) that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is written with a ``'`` in
front, and so is one that begins with ``'`` (so that :func:`read_manifest` can take exactly one ``'`` off again and
upload the values as they were). Numbers (``#priority``, ``#ra``, ``#dec``, ``#acquisition``) and the image file
names (letters, digits, ``.``, ``_``, ``-`` only) are written as they are, so Zooniverse finds the images and reads
the numbers unchanged.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline.active.ranking import QUEUE_FILE, RANK_METADATA_KEY, SOURCES_DIGESTS
from zoobot_pipeline.catalogue import sources_digest
from zoobot_pipeline.data.cutouts import CutoutSizing, tile_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import check_image_size, render_image
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import atomic_path, path_inside, safe_file_name

__all__ = [
    "IMAGE_COLUMN", "IMAGE_FORMATS", "MANIFEST_COLUMNS", "MANIFEST_FILE", "ManifestRow", "check_release", "escape_cell",
    "image_name", "read_manifest", "read_queue", "unescape_cell", "write_manifest",
]

MANIFEST_FILE = "manifest.csv"
IMAGE_COLUMN = "image_1"
MANIFEST_COLUMNS = (IMAGE_COLUMN, "#priority", "#id_str", "#ra", "#dec", "#acquisition", "#top_question", "#model",
                    "#release")
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
_QUEUE_COLUMNS = ("rank", "id_str", "ra", "dec", "acquisition", "top_question", "model_sha256", "release")
_FLOAT_COLUMNS = ("#ra", "#dec", "#acquisition")
_TEXT_COLUMNS = ("#id_str", "#top_question", "#model", "#release")  # free text: escaped against formula injection
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # OWASP's trigger characters, and the escape itself


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
    """File name of a subject's image: :func:`~zoobot_pipeline.io.safe_file_name` of the ``id_str`` (the id itself
    when it is a plain file name, else a safe one with a short hash), with ``.{fmt}``."""
    return safe_file_name(id_str, f".{fmt}")


def escape_cell(text: str) -> str:
    """A free-text CSV cell that no spreadsheet runs as a formula: ``'`` in front of text that begins with ``=``,
    ``+``, ``-``, ``@``, a tab, a carriage return or ``'`` (OWASP CSV injection); other text as it is."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def unescape_cell(text: str) -> str:
    """The text :func:`escape_cell` was given."""
    return text[1:] if text.startswith("'") else text


def read_queue(queue: str | Path | pa.Table) -> pa.Table:
    """A queue table from a table, a queue directory (its ``queue.parquet``) or a Parquet file; sorted by rank."""
    if isinstance(queue, pa.Table):
        table, where = queue, "queue table"
    else:
        path = Path(queue)
        path = path / QUEUE_FILE if path.is_dir() else path
        if not path.is_file():
            raise ZoobotPipelineError(f"{path}: queue not found")
        try:
            table, where = pq.read_table(path), str(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise ZoobotPipelineError(f"{path}: cannot read the queue: {err}") from err
    missing = [c for c in _QUEUE_COLUMNS if c not in table.column_names]
    if missing:
        raise ZoobotPipelineError(f"{where}: missing queue column(s) {', '.join(missing)}")
    if table.column("id_str").null_count:
        raise ZoobotPipelineError(f"{where}: a queued id_str is null")
    if pc.count_distinct(table.column("id_str")).as_py() != table.num_rows:
        raise ZoobotPipelineError(f"{where}: an id_str appears more than once")
    return table.sort_by("rank")


def check_release(queue: pa.Table, release: Release, where: str = "queue") -> None:
    """Refuse a ``release`` that is not the one ``queue`` was ranked from: another release name than the queue's
    ``release`` column, or (where the queue's rank settings recorded them) other source ids on a queued tile."""
    names = sorted(set(queue.column("release").drop_null().to_pylist()))
    if len(names) > 1:
        raise ZoobotPipelineError(f"{where}: galaxies of more than one release ({', '.join(map(repr, names))}); "
                                  "make a manifest of one release's queue at a time")
    if names and names[0] != release.info.name:
        raise ZoobotPipelineError(f"{where}: the queue was ranked from release {names[0]!r}, but {release.path} is "
                                  f"release {release.info.name!r}; pass the release the queue was made from")
    raw = (queue.schema.metadata or {}).get(RANK_METADATA_KEY.encode())
    try:
        digests = json.loads(raw).get(SOURCES_DIGESTS) if raw is not None else None
    except (ValueError, AttributeError):
        digests = None
    if not isinstance(digests, dict):
        return  # a queue of an earlier version, or of a catalogue that is not scoring's: the name is all there is
    changed = sorted(tile for tile, digest in digests.items()
                     if sources_digest(release.tile_sources(tile).column("id_str").to_pylist()) != digest)
    if changed:
        raise ZoobotPipelineError(
            f"{where}: the sources of tile(s) {', '.join(changed[:5])} in {release.path} (release "
            f"{release.info.name!r}) are not those the queue was scored from; pass the release the queue was made "
            "from, or score and rank this release again")


def write_manifest(queue: str | Path | pa.Table, release_dir: str | Path, out_dir: str | Path, fmt: str = "png", *,
                   size: int = 424, sizing: CutoutSizing | None = None) -> Path:
    """Render every queued galaxy from ``release_dir`` into ``out_dir`` and write ``out_dir/manifest.csv``; returns
    the CSV's path. A ``release_dir`` that is not the queue's release (:func:`check_release`), a galaxy missing from
    the release, or one whose cutout is off its tile or mostly empty, is an error naming it."""
    if fmt not in IMAGE_FORMATS:
        raise ZoobotPipelineError(f"unsupported image format {fmt!r}; use {' or '.join(IMAGE_FORMATS)}")
    check_image_size(size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZoobotPipelineError(f"{out}: exists and is not a directory; choose another manifest directory")
    table = read_queue(queue)
    release = Release.open(release_dir)
    check_release(table, release, "queue table" if isinstance(queue, pa.Table) else str(queue))
    sizing = sizing or CutoutSizing()
    out.mkdir(parents=True, exist_ok=True)
    ids = table.column("id_str").to_pylist()
    names = {id_str: image_name(id_str, fmt) for id_str in ids}
    if len(set(names.values())) != len(names):
        raise ZoobotPipelineError("two id_str values map to the same image file name")
    _render_missing(release, [i for i in ids if not (out / names[i]).is_file()], names, out, fmt, size, sizing)

    rows = table.select(list(_QUEUE_COLUMNS)).to_pylist()
    with atomic_path(out / MANIFEST_FILE) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            text = [escape_cell(row[name] or "") for name in ("id_str", "top_question", "model_sha256", "release")]
            writer.writerow([names[row["id_str"]], row["rank"], text[0], repr(row["ra"]), repr(row["dec"]),
                             repr(row["acquisition"]), *text[1:]])
    return out / MANIFEST_FILE


def _render_missing(release: Release, ids: list[str], names: dict[str, str], out: Path, fmt: str, size: int,
                    sizing: CutoutSizing) -> None:
    """Render ``ids`` tile by tile (one tile open at a time), with source positions and sizes from the release."""
    if not ids:
        return
    sources = release.sources.filter(pc.is_in(release.sources.column("id_str"), value_set=pa.array(ids)))
    unknown = sorted(set(ids) - set(sources.column("id_str").to_pylist()))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ZoobotPipelineError(f"{release.path}: queued galaxies not in the release's sources: "
                                  f"{', '.join(unknown[:5])}{more}")
    tiles = sources.column("tile_id").to_numpy(zero_copy_only=False)
    for tile_id in sorted(set(tiles.tolist())):
        rows = sources.filter(pa.array(tiles == tile_id))
        with release.open_tile(tile_id) as tile:
            cutouts = tile_cutouts(tile, rows, sizing, release.info.pixel_scale_arcsec)
        for id_str, cut in zip(rows.column("id_str").to_pylist(), cutouts, strict=True):
            if cut.rejected:
                raise ZoobotPipelineError(f"{release.path}: cutout of {id_str} on tile {tile_id} is off the tile or "
                                          f"{cut.nan_fraction:.0%} empty; it cannot be shown to volunteers")
            render_image(cut.data, out / names[id_str], release.bands, size, fmt=fmt)


def read_manifest(manifest_dir: str | Path) -> list[ManifestRow]:
    """Read ``manifest_dir/manifest.csv`` back; checks the columns, the images (inside ``manifest_dir``) and that
    ``#id_str`` is unique. Free-text cells are unescaped (:func:`unescape_cell`): the metadata is as it was queued."""
    path = Path(manifest_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ZoobotPipelineError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ZoobotPipelineError(f"{path}: missing manifest column(s) {', '.join(missing)}")
            records = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ZoobotPipelineError(f"{path}: not a manifest CSV (UTF-8): {err}") from None
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for line, record in enumerate(records, start=2):
        record = {**record, **{column: unescape_cell(record[column] or "") for column in _TEXT_COLUMNS}}
        image = path_inside(path.parent, record[IMAGE_COLUMN] or "", f"{path}: line {line}: {IMAGE_COLUMN}")
        if not image.is_file():
            raise ZoobotPipelineError(f"{path}: line {line}: image {record[IMAGE_COLUMN]!r} not found beside the "
                                      "manifest")
        mime = IMAGE_FORMATS.get(image.suffix.lower().lstrip(".").replace("jpg", "jpeg"))
        if mime is None:
            raise ZoobotPipelineError(f"{path}: line {line}: image {image.name!r} is not PNG or JPEG")
        if record["#id_str"] in seen:
            raise ZoobotPipelineError(f"{path}: line {line}: #id_str {record['#id_str']!r} appears more than once")
        seen.add(record["#id_str"])
        metadata: dict[str, Any] = dict(record)
        try:
            metadata["#priority"] = int(record["#priority"])
            for column in _FLOAT_COLUMNS:
                metadata[column] = float(record[column])
        except (TypeError, ValueError) as err:
            raise ZoobotPipelineError(f"{path}: line {line}: {err}") from None
        rows.append(ManifestRow(image=image, mime_type=mime, metadata=metadata))
    return rows
