"""Prefect artifacts that a person reads in the UI: run summaries (Markdown), tables and links to files.

Every artifact gets a key (lowercase letters, digits and dashes), so the UI's Artifacts page keeps one versioned entry
per kind and subject (``score-dr1``, ``queue-dr1``, ...) and every flow run lists the versions it made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prefect.artifacts import create_link_artifact, create_table_artifact

from zoobot_pipeline.active.manifest import image_name
from zoobot_pipeline.data.render import contact_sheet, write_image

__all__ = ["artifact_key", "markdown_table", "publish_link", "publish_table", "queue_sheet"]


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key from ``parts``: lowercase, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (floats to 4 significant digits)."""
    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], description: str) -> None:
    """A table artifact under ``key`` with ``columns`` (an empty table still shows its columns)."""
    table = {c: [row.get(c) for row in rows] for c in columns}
    create_table_artifact(table=table, key=key, description=description)


def publish_link(key: str, path: Path, text: str, description: str) -> None:
    """A link artifact to a local or shared file (``file://`` URI of its absolute path)."""
    create_link_artifact(link=path.resolve().as_uri(), link_text=text, key=key, description=description)


def queue_sheet(queue: Sequence[Mapping[str, Any]], manifest_dir: Path, fmt: str, out: Path, n: int = 24,
                size: int = 160) -> Path | None:
    """A PNG contact sheet of the first ``n`` queued galaxies from their manifest images, captioned with rank, id and
    acquisition score; ``None`` for an empty queue."""
    images, captions = [], []
    for row in queue[:n]:
        with Image.open(manifest_dir / image_name(row["id_str"], fmt)) as image:
            images.append(np.asarray(image.convert("RGB").resize((size, size))))
        captions.append(f"#{row['rank']} {row['id_str']}\nacquisition {row['acquisition']:.3g}")
    if not images:
        return None
    return write_image(contact_sheet(images, captions, columns=min(6, len(images))), out)
