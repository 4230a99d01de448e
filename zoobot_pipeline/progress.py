"""One progress bar for long loops (rich): a callable that advances it, or does nothing when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(enabled: bool, total: int, what: str, unit: str = "") -> Iterator[Callable[[int], None]]:
    """A bar labelled ``what`` counting to ``total`` (in ``unit``s); yields ``advance(n=1)``."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)
