"""Active-learning commands: ``rank`` a scored catalogue, and ``queue manifest|upload|merge-votes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zoobot_pipeline.cli._options import ACQUISITIONS, FormatOption, choices, console
from zoobot_pipeline.errors import ZoobotPipelineError

app = typer.Typer()
queue_app = typer.Typer(help="Galaxy Zoo priority queue: manifests, uploads, returning votes.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")

# spelled out (as in cli._options) so that the command starts without numpy; tests/test_active_sampling.py keeps them
# equal to the library's lists
RANK_ACQUISITIONS = (*ACQUISITIONS, "power_bald", "softmax_bald", "softrank_bald")
"""``active.acquisition.available_acquisitions()`` then ``active.batch_sampling.STRATEGY_SHORTHANDS``."""
SAMPLINGS = ("top_k", "power", "softmax", "softrank")
"""``active.batch_sampling.SAMPLINGS``."""
Acquisition = choices("Acquisition", RANK_ACQUISITIONS)
Sampling = choices("Sampling", SAMPLINGS)


def _weights(pairs: list[str] | None) -> dict[str, float]:
    """``--weight QUESTION=W`` options as a dict."""
    weights: dict[str, float] = {}
    for pair in pairs or ():
        question, _, value = (part.strip() for part in pair.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not question or weight is None:
            raise ZoobotPipelineError(f"--weight {pair!r}: expected QUESTION=WEIGHT, e.g. bar-dr5=2")
        weights[question] = weight
    return weights


def _magnitude_edges(text: str | None) -> list[float] | None:
    """``--magnitude-bins 17,18,19`` as a list of edges."""
    if text is None:
        return None
    try:
        return [float(edge) for edge in text.split(",")]
    except ValueError:
        raise ZoobotPipelineError(
            f"--magnitude-bins {text!r}: expected comma-separated magnitudes, e.g. 17,18,19") from None


@app.command()
def rank(
    catalogue: Annotated[Path, typer.Option(help="Scored catalogue: a directory of Parquet files, or one file.")],
    top: Annotated[int, typer.Option(help="How many galaxies to queue.")],
    out: Annotated[Path, typer.Option(help="Queue directory (keeps its history: a rerun queues nobody twice).")],
    acquisition: Annotated[Acquisition, typer.Option(
        help="How to score galaxies: decision trees by mutual_information (BALD) or entropy, classifiers by "
             "class_mutual_information, regressors by predictive_std, any by random; power_bald (softmax_bald, "
             "softrank_bald) is mutual_information with --sampling power (softmax, softrank).")]
    = "mutual_information",
    sampling: Annotated[Sampling | None, typer.Option(
        help="How to draw the batch from the scores: without replacement in proportion to score**beta (power, the "
             "default), exp(beta*score) (softmax) or rank**-beta (softrank), or the top_k scores.")] = None,
    beta: Annotated[float, typer.Option(help="Beta of --sampling power|softmax|softrank (> 0; large: close to "
                                             "top_k, small: close to uniform).")] = 1.0,
    random_fraction: Annotated[float, typer.Option(help="Share of --top drawn uniformly at random from the eligible "
                                                        "galaxies (0 <= F < 1).")] = 0.0,
    exclude_answer: Annotated[list[str] | None, typer.Option(
        help="ANSWER>=T (or >, <=, <): skip galaxies whose expected vote fraction of ANSWER (a classifier: "
             "probability of the class) passes, e.g. smooth-or-featured-dr5_artifact>=0.5 (repeatable).")] = None,
    weight: Annotated[list[str] | None, typer.Option(help="QUESTION=W: weight a question's term (repeatable).")]
    = None,
    stratify_by: Annotated[list[str] | None, typer.Option(
        help="QUESTION (a classifier: class): share the acquisition's picks among the model's predicted answers in "
             "proportion to their eligible galaxies, e.g. smooth-or-featured-dr5 (repeatable: combinations).")]
    = None,
    exclude: Annotated[Path | None, typer.Option(help="Votes catalogue: skip galaxies that already have votes.")]
    = None,
    min_votes: Annotated[int, typer.Option(help="With --exclude: skip galaxies with this many votes or more on "
                                                "the first question.")] = 3,
    schema: Annotated[str | None, typer.Option(help="Tree of --exclude (default: the catalogue's).")] = None,
    per_tile_quota: Annotated[int | None, typer.Option(help="At most N galaxies from one tile.")] = None,
    magnitude_bins: Annotated[str | None, typer.Option(help="Bin edges, e.g. 17,18,19 (with --per-bin-quota).")]
    = None,
    per_bin_quota: Annotated[int | None, typer.Option(help="At most N galaxies from one magnitude bin.")] = None,
    magnitude_column: Annotated[str, typer.Option(help="Catalogue column the magnitude bins use.")] = "mag_r",
    seed: Annotated[int, typer.Option(help="Seed of --acquisition random, stochastic --sampling and "
                                           "--random-fraction (with each galaxy's id).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Catalogue rows read at a time (memory; the queue does not "
                                                 "depend on it).")] = 65_536,
) -> None:
    """Rank a scored catalogue and queue the galaxies volunteers should label next (QUEUE/queue.parquet)."""
    from rich.table import Table

    from zoobot_pipeline.active.ranking import QUEUE_FILE, rank_catalogue, rank_settings

    table = rank_catalogue(catalogue, top, acquisition=acquisition.value, weights=_weights(weight),
                           exclude_votes=exclude, min_votes=min_votes, schema=schema, queue_dir=out,
                           per_tile_quota=per_tile_quota, magnitude_bins=_magnitude_edges(magnitude_bins),
                           per_bin_quota=per_bin_quota, magnitude_column=magnitude_column, seed=seed,
                           batch_size=batch_size, sampling=None if sampling is None else sampling.value, beta=beta,
                           random_fraction=random_fraction, exclude_answers=exclude_answer or (),
                           stratify_by=stratify_by or ())
    info = rank_settings(table)
    shown = Table("rank", "id_str", "tile_id", "acquisition", "top question", "picked by", title=f"{out / QUEUE_FILE}")
    for row in table.slice(0, 10).to_pylist():
        shown.add_row(str(row["rank"]), row["id_str"], row["tile_id"], f"{row['acquisition']:.4g}",
                      row["top_question"] or "", row["picked_by"])
    console.print(shown)
    drawn = info["sampling"] if info["sampling"] == "top_k" else f"{info['sampling']} sampling, beta {info['beta']:g}"
    console.print(f"queued {table.num_rows} of {info['rows_read']} catalogue rows (run {info['run_id']}; "
                  f"{info['acquisition']}, {drawn}; {info['random_picks']} drawn at random); skipped "
                  f"{info['skipped_flagged']} flagged, {info['skipped_labelled']} labelled, "
                  f"{info['skipped_queued']} already queued, {info['skipped_answers']} by their answers")
    for stratum, counts in info.get("strata", {}).items():
        console.print(f"  {stratum}: {counts['drawn']} drawn of {counts['eligible']} eligible")


@queue_app.command("manifest")
def queue_manifest(
    queue: Annotated[Path, typer.Option(help="Queue directory (its queue.parquet) or a queue Parquet file.")],
    release: Annotated[Path, typer.Option(help="Release directory the queued galaxies come from.")],
    out: Annotated[Path, typer.Option(help="Directory for manifest.csv and the images.")],
    image_format: FormatOption = "png",
    size: Annotated[int, typer.Option(help="Image side in pixels (Galaxy Zoo uses 424).")] = 424,
) -> None:
    """Write a Zooniverse subject manifest (CSV + one colour image per galaxy, #priority = rank)."""
    from zoobot_pipeline.active.manifest import read_manifest, write_manifest
    from zoobot_pipeline.data.render import check_image_size

    check_image_size(size, "--size")
    path = write_manifest(queue, release, out, image_format.value, size=size)
    console.print(f"wrote {path} with {len(read_manifest(out))} subjects")


@queue_app.command("upload")
def queue_upload(
    manifest: Annotated[Path, typer.Option(help="Manifest directory (manifest.csv and images).")],
    project: Annotated[int, typer.Option(help="Zooniverse project id.")],
    subject_set: Annotated[int, typer.Option(help="Subject set id to link the subjects to.")],
    endpoint: Annotated[str, typer.Option(envvar="PANOPTES_ENDPOINT", help="Panoptes endpoint.")]
    = "https://www.zooniverse.org",
    dry_run: Annotated[bool, typer.Option("--dry-run/--no-dry-run", help="Only show what would be uploaded.")]
    = True,
    link_batch_size: Annotated[int, typer.Option(help="Subjects linked to the set per request.")] = 100,
) -> None:
    """Upload a manifest into a subject set (dry run unless --no-dry-run); credentials come from PANOPTES_USERNAME
    and PANOPTES_PASSWORD (or PANOPTES_CLIENT_ID and PANOPTES_CLIENT_SECRET). Resumable: rerun after a failure."""
    from rich.table import Table

    from zoobot_pipeline.active.zooniverse import upload_manifest

    report = upload_manifest(manifest, project, subject_set, endpoint=endpoint, dry_run=dry_run,
                             link_batch_size=link_batch_size)
    if dry_run:
        shown = Table("#priority", "#id_str", "image", "KiB", title="would upload (first 10)")
        for row in report.to_upload[:10]:
            shown.add_row(str(row.metadata["#priority"]), row.id_str, row.image.name,
                          f"{row.image.stat().st_size / 1024:.0f}")
        console.print(shown)
        console.print(f"dry run: would upload {len(report.to_upload)} of {report.total} subjects "
                      f"({report.already_uploaded} already uploaded, {report.to_link} waiting to be linked) to subject "
                      f"set {subject_set} of project {project} at {endpoint}; nothing was sent. Add --no-dry-run to "
                      "upload.")
    else:
        console.print(f"created {report.created} subjects and linked {report.linked} to subject set {subject_set}; "
                      f"all {report.total} manifest subjects are uploaded (state: {report.state_file})")


@queue_app.command("merge-votes")
def queue_merge_votes(
    labelled: Annotated[Path, typer.Option(help="The labelled votes catalogue (e.g. votes.parquet).")],
    new: Annotated[Path, typer.Option(help="New votes for queued galaxies (same columns).")],
    out: Annotated[Path, typer.Option(help="Merged votes catalogue to write (may be --labelled itself).")],
    schema: Annotated[str, typer.Option(help="Decision tree of the votes (built-in name or YAML).")] = "decals_dr5",
) -> None:
    """Add new volunteer votes to the labelled set: counts summed per galaxy, new galaxies appended."""
    from zoobot_pipeline.active.votes_merge import merge_votes

    table = merge_votes(labelled, new, out, schema)
    console.print(f"wrote {out}: {table.num_rows} galaxies")
