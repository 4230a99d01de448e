"""Files done once and right: atomic output, exclusive locks, and the project's hashes.

Atomic output writes to a temporary file in the destination folder, then renames it into place: a killed process
leaves either the old file or the new one, never half a file; a leftover ``.tmp-*`` file is ignored by readers.
Locks are ``flock`` locks, released by the OS when the process ends, however it ends. :func:`blake2b64` is the one
hash that turns an id into a stable number (random streams, splits, seeded scores); :func:`file_sha256` identifies
files. Paths that come from data go through :func:`safe_file_name` (names we write) or :func:`path_inside` (names we
read), and an output directory is checked by :func:`prepare_output_dir` before a command starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = [
    "MAX_NAME_BYTES", "atomic_directory", "atomic_path", "blake2b64", "exclusive_lock", "file_lock", "file_sha256",
    "path_inside", "prepare_output_dir", "read_table", "safe_file_name", "write_json_atomic", "write_parquet_atomic",
]


def _umask() -> int:
    """The process umask, read without changing it (Linux), else read by setting and restoring it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success it is fsynced and renamed onto ``destination``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{destination.name}.", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(destination: str | Path, own: Collection[str] | None = None,
                     marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``destination``; on success its files are fsynced and moved into place.
    On error it is removed, and ``destination`` is as it was.

    Without ``own``, or when ``destination`` holds nothing but entries named in ``own`` (this kind of output's own
    files), the new directory replaces ``destination`` in one rename (an existing one is moved aside, then deleted).
    Otherwise ``destination`` also holds files this output did not write: they are kept, and only the entries named in
    ``own`` are replaced, each with a rename, ``marker`` (the file readers open first) last; own entries the new
    output lacks are removed."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{destination.name}.", dir=destination.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        foreign = ([entry for entry in destination.iterdir() if entry.name not in own]
                   if own is not None and destination.is_dir() else [])
        if foreign:
            _replace_entries(tmp, destination, own, marker)
        elif destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{destination.name}.", dir=destination.parent))
            os.replace(destination, old / destination.name)
            os.replace(tmp, destination)
            shutil.rmtree(old)
        else:
            os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_entries(new: Path, destination: Path, own: Collection[str], marker: str | None) -> None:
    """Move ``new``'s entries into ``destination`` one rename each (``marker`` last), then remove the ``own`` entries
    of ``destination`` that ``new`` did not have."""
    entries = sorted(new.iterdir(), key=lambda entry: entry.name == marker)
    for entry in entries:
        target = destination / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    written = {entry.name for entry in entries}
    for name in set(own) - written:
        stale = destination / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def file_lock(lock_file: str | Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created, with its folder) for the block; yields whether it is
    held. ``wait``: block until it is free (always yields True); otherwise yield False at once if another process
    (or another open of the file) holds it."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextmanager
def exclusive_lock(lock_file: str | Path, busy: Exception) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` for the block, or raise ``busy`` at once if it is held."""
    with file_lock(lock_file) as held:
        if not held:
            raise busy
        yield


def write_parquet_atomic(table: pa.Table, destination: str | Path, **kwargs: Any) -> Path:
    """Write ``table`` to ``destination`` as Parquet, atomically."""
    with atomic_path(destination) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(destination)


def write_json_atomic(data: Any, destination: str | Path) -> Path:
    """Write ``data`` as indented JSON to ``destination``, atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(destination)


def blake2b64(text: str, *, key: bytes = b"", salt: bytes = b"") -> int:
    """An unsigned 64-bit BLAKE2b hash of ``text`` (little-endian), optionally keyed or salted (salt: 16 bytes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=key, salt=salt).digest(), "little")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: str | Path, error: type[Exception] = ValueError, what: str = "table",
               columns: Sequence[str] | None = None) -> pa.Table:
    """Read a Parquet or CSV (by suffix) table; an unreadable file raises ``error`` naming the path and ``what``.

    ``columns``: read only those of these columns that the file has (a Parquet file reads nothing else).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path)
            present = table.column_names  # header names are decoded here: a non-UTF-8 header fails inside the try
            return table if columns is None else table.select([c for c in columns if c in present])
        if path.is_dir():  # a dataset of Parquet files
            table = pq.read_table(path)
            return table if columns is None else table.select([c for c in columns if c in table.column_names])
        # one file: ParquetFile reads it without pyarrow.dataset, whose import (with pandas) costs ~0.25 s
        with pq.ParquetFile(path) as parquet:
            present = parquet.schema_arrow.names
            return parquet.read(columns=None if columns is None else [c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read {what}: {err}") from err


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME_BYTES = 200


def safe_file_name(text: str, suffix: str = "") -> str:
    """A file name for ``text`` (an id or name read from data) that stays one plain, visible name inside its folder,
    plus ``suffix`` (e.g. ``".png"``). Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, as
    do a leading ``.`` (a hidden file) and a leading ``-`` (option-like; formula-like in a spreadsheet). A name that
    had to change, or is longer than :data:`MAX_NAME_BYTES`, is cut to that length and gets ``-`` and an 8-hex-digit
    hash of ``text``, so that different texts never share a name."""
    safe = _UNSAFE_NAME.sub("_", text)
    if safe.startswith((".", "-")):
        safe = f"_{safe[1:]}"
    if safe != text or not safe or len(safe) > MAX_NAME_BYTES:
        digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
        safe = f"{safe[:MAX_NAME_BYTES]}-{digest}"
    return f"{safe}{suffix}"


def path_inside(directory: str | Path, name: str, source: str) -> Path:
    """``directory / name`` when it resolves inside ``directory`` (``name`` read from ``source``, e.g. a JSON file);
    otherwise a :class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming ``source`` and ``name``."""
    directory = Path(directory)
    path = directory / name
    if not name or Path(name).is_absolute() or not path.resolve().is_relative_to(directory.resolve()):
        raise ZoobotPipelineError(f"{source}: path {name!r} is not inside {directory}; refusing to follow it")
    return path


def prepare_output_dir(path: str | Path, *, marker: str, what: str, overwrite: bool = False,
                       inputs: Sequence[str | Path] = ()) -> Path:
    """Check that the directory ``path`` may receive a ``what`` (e.g. "checkpoint") before any work starts; returns
    it. Refused, with a :class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming it: a path that is a file; a path
    that is, contains or lies inside one of ``inputs``; an existing non-empty directory that is not an earlier output
    of the same kind (it has no ``marker`` file), unless ``overwrite``. Even then only the files the command writes
    are replaced (:func:`atomic_directory` with ``own``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ZoobotPipelineError(f"{path}: exists and is not a directory; choose another output directory")
    resolved = path.resolve()
    for source in inputs:
        other = Path(source).resolve()
        if resolved == other or resolved.is_relative_to(other) or other.is_relative_to(resolved):
            raise ZoobotPipelineError(f"{path}: the {what} would be written over or around the input {source}; "
                                      "choose another output directory")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file() and not overwrite:
        raise ZoobotPipelineError(f"{path}: not empty and not a {what} (no {marker}); refusing to write into it. "
                                  "Choose another output directory, or pass --overwrite to replace only the "
                                  f"{what}'s own files there")
    return path
