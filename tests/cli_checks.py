"""Checks the fault tests share: the one line a CLI error prints, and a listing of a tree to compare before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def error_line(result: Any, code: int = 2) -> str:
    """The one ``error:`` line on stderr of a command that failed with exit ``code``, after checking that nothing
    else was printed there and that no traceback was."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root`` (links not followed): kind, size and mtime in ns, by relative path."""
    return {str(path.relative_to(root)): ("dir" if path.is_dir() else "file", path.lstat().st_size,
                                          path.lstat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}
