"""Figures a person wants after scoring a release: the least and most certain galaxies, and where acquisition falls;
and after evaluating a checkpoint: the reliability of its predicted vote fractions.

Both read only the catalogue columns they need (id, acquisition, flag, the first question's fractions), so they
suit releases of millions of sources; the grid renders only the galaxies it shows, from the release's tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from zoobot_pipeline.catalogue import part_files, part_metadata, read_catalogue
from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import contact_sheet, render_rgb, write_image
from zoobot_pipeline.io import atomic_path
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["acquisition_histogram", "certainty_grid", "reliability_diagram"]


def _schema(catalogue: Path) -> Schema:
    files = part_files(catalogue)
    if not files:
        raise FileNotFoundError(f"{catalogue}: no catalogue part files")
    return get_schema(part_metadata(files[0])["schema"])


def certainty_grid(catalogue: str | Path, release_dir: str | Path, out: str | Path, n: int = 6,
                   size: int = 160) -> Path:
    """A PNG grid: the ``n`` scored galaxies with the highest acquisition (least certain) on top, the ``n`` with the
    lowest (most certain) below, each captioned with its acquisition and first-question fractions (one answer a
    line, wrapped to the tile width)."""
    catalogue = Path(catalogue)
    schema = _schema(catalogue)
    first = schema.questions[0]
    fraction_columns = [f"{label}_fraction" for label in first.label_cols]
    table = read_catalogue(catalogue, ["id_str", "acquisition", "flag", *fraction_columns])
    table = table.filter(pc.is_null(table["flag"]))
    if table.num_rows == 0:
        raise ValueError(f"{catalogue}: no scored galaxies to show")
    order = np.argsort(table["acquisition"].to_numpy(), kind="stable")
    shown = [*order[::-1][:n], *order[:n]]
    rows = {table["id_str"][int(i)].as_py(): (rank, int(i)) for rank, i in enumerate(shown)}
    release = Release.open(release_dir)
    images: list[np.ndarray | None] = [None] * len(shown)
    captions = [""] * len(shown)
    answers = [label.rsplit("_", 1)[-1] for label in first.label_cols]
    for id_str, cut in release_cutouts(release, list(rows)):
        rank, i = rows[id_str]
        images[rank] = render_rgb(cut.data, release.bands, size=size)
        kind = "least certain" if rank < n else "most certain"
        fractions = [f"{answer} {table[col][i].as_py():.2f}"
                     for answer, col in zip(answers, fraction_columns, strict=True)]
        captions[rank] = "\n".join([f"{kind}: acq {table['acquisition'][i].as_py():.3g}", *fractions])
    kept = [(image, caption) for image, caption in zip(images, captions, strict=True) if image is not None]
    sheet = contact_sheet([k[0] for k in kept], [k[1] for k in kept], columns=min(n, len(kept)))
    return write_image(sheet, out)


def acquisition_histogram(catalogue: str | Path, out: str | Path, queued: int | None = None) -> Path:
    """A PNG histogram of the acquisition score of scored galaxies (log counts), with the score of the ``queued``-th
    best marked when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = read_catalogue(Path(catalogue), ["acquisition", "flag"])
    scores = table.filter(pc.is_null(table["flag"]))["acquisition"].to_numpy()
    if len(scores) == 0:
        raise ValueError(f"{catalogue}: no scored galaxies")
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    axes.hist(scores, bins=50, color="#4c72b0")
    axes.set_yscale("log")
    axes.set_xlabel("acquisition: sum over questions of mutual information x P(asked) [nat]")
    axes.set_ylabel("galaxies")
    axes.set_title(f"{len(scores)} scored galaxies")
    if queued:
        threshold = np.sort(scores)[::-1][min(queued, len(scores)) - 1]
        axes.axvline(threshold, color="#c44e52", linestyle="--", label=f"top {queued} queued")
        axes.legend()
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(out)


def reliability_diagram(calibration: dict, out: str | Path, title: str = "") -> Path:
    """A PNG reliability diagram from the ``calibration`` of :func:`zoobot_pipeline.stats.vote_fraction_metrics`:
    mean observed against mean predicted vote fraction per bin (the diagonal is perfect calibration), and below it the
    number of answers in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(calibration["edges"], dtype=np.float64)
    count = np.asarray(calibration["count"], dtype=np.int64)
    filled = count > 0
    predicted = np.array([np.nan if v is None else v for v in calibration["predicted"]], dtype=np.float64)[filled]
    observed = np.array([np.nan if v is None else v for v in calibration["observed"]], dtype=np.float64)[filled]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.0, 6.0), dpi=100, sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="perfect calibration")
    top.plot(predicted, observed, marker="o", color="#4c72b0", label="model")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("mean volunteer vote fraction")
    error = calibration.get("calibration_error")
    top.set_title(title + (f"\ncalibration error {error:.3f}" if error is not None else ""))
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
    bottom.set_xlabel("predicted vote fraction (expected, per answer)")
    bottom.set_ylabel("answers")
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(out)
