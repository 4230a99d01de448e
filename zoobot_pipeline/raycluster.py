"""The one way this package connects to Ray: use the Ray already initialised in this process, else join
``address``, else start a local cluster; a cluster started here is shut down when the block ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

__all__ = ["ray_cluster"]


@contextmanager
def ray_cluster(address: str | None = None, **init_options: Any) -> Iterator[None]:
    """Hold a Ray connection for the block (see the module docstring); ``init_options`` go to ``ray.init``."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **init_options)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
