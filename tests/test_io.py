"""Atomic outputs: a failure leaves the old file (or none), never half a file; files are world-readable."""

from __future__ import annotations

import json
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zoobot_pipeline.io import atomic_path, write_json_atomic, write_parquet_atomic


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    write_parquet_atomic(pa.table({"x": [1, 2, 3]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed half way")
    assert pq.read_table(target).column("x").to_pylist() == [1, 2, 3]
    assert [p.name for p in target.parent.iterdir()] == ["table.parquet"]


def test_outputs_are_readable_by_others(tmp_path):
    path = write_json_atomic({"a": 1}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & stat.S_IROTH
