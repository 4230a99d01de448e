"""Atomic file output: write to a temporary file in the destination folder, then rename into place.

A killed process leaves either the old file or the new one, never half a file; a leftover ``.tmp-*`` file is ignored by
readers and overwritten by the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = [
    "atomic_directory", "atomic_path", "exclusive_lock", "file_sha256", "read_table", "write_json_atomic",
    "write_parquet_atomic",
]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success it is fsynced and renamed onto ``destination``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{destination.name}.", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``destination``; on success its files are fsynced and it replaces
    ``destination`` (an existing one is moved aside first, then deleted). On error it is removed."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{destination.name}.", dir=destination.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_UMASK)
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{destination.name}.", dir=destination.parent))
            os.replace(destination, old / destination.name)
            os.replace(tmp, destination)
            shutil.rmtree(old)
        else:
            os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def exclusive_lock(lock_file: str | Path, busy: Exception) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created, with its folder) for the block, or raise ``busy`` at
    once if another process holds it. The OS releases the lock when the process ends, however it ends."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
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
            return table if columns is None else table.select([c for c in columns if c in table.column_names])
        if columns is None:
            return pq.read_table(path)
        present = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid) as err:
        raise error(f"{path}: cannot read {what}: {err}") from err
