"""Files done once and right: atomic output, exclusive locks, and the project's hashes.

Atomic output writes to a temporary file in the destination folder, then renames it into place: a killed process
leaves either the old file or the new one, never half a file; a leftover ``.tmp-*`` file is ignored by readers.
Locks are ``flock`` locks, released by the OS when the process ends, however it ends. :func:`blake2b64` is the one
hash that turns an id into a stable number (random streams, splits, seeded scores); :func:`file_sha256` identifies
files.
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
    "atomic_directory", "atomic_path", "blake2b64", "exclusive_lock", "file_lock", "file_sha256", "read_table",
    "write_json_atomic", "write_parquet_atomic",
]


def _umask() -> int:
    """The process umask, read without changing it (Linux), else read by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
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
        os.chmod(tmp, 0o777 & ~_umask())
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
            return table if columns is None else table.select([c for c in columns if c in table.column_names])
        if columns is None:
            return pq.read_table(path)
        present = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid) as err:
        raise error(f"{path}: cannot read {what}: {err}") from err
