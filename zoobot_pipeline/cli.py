"""The ``zoobot-pipeline`` command line. Each sub-command is a thin call into the library."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from zoobot_pipeline import __version__

app = typer.Typer(help="Galaxy Zoo morphology at survey scale: simulate, train, score, rank.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
schema_app = typer.Typer(help="Galaxy Zoo decision trees.", no_args_is_help=True)
release_app = typer.Typer(help="Survey data releases.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(release_app, name="release")

console = Console()
error_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


TILES_FAILED_EXIT = 3  # score: finished, some tiles failed and were recorded


def _user_errors(func: F) -> F:
    """Turn the library's input errors into a one-line message and exit code 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ValueError, KeyError, FileNotFoundError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            error_console.print(f"[bold red]error:[/] {message}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"zoobot-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Galaxy Zoo morphology at survey scale."""


@app.command()
@_user_errors
def simulate(
    out: Annotated[Path, typer.Option(help="Directory to write the release into.")],
    galaxies: Annotated[int, typer.Option(help="Number of catalogue entries (galaxies, a few stars and artifacts).")]
    = 2000,
    tiles: Annotated[int, typer.Option(help="Number of FITS tiles.")] = 4,
    schema: Annotated[str, typer.Option(help="Decision tree the simulated volunteers answer.")] = "decals_dr5",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same release.")] = 0,
    labelled_fraction: Annotated[float, typer.Option(help="Fraction of sources with volunteer votes.")] = 0.5,
    volunteers: Annotated[int, typer.Option(help="Mean number of volunteers per galaxy at the root question.")] = 40,
    tile_size: Annotated[int | None, typer.Option(help="Tile side in pixels (default: from source density).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes rendering tiles (default: one per CPU core).")]
    = None,
) -> None:
    """Write a synthetic survey release with known morphology and simulated volunteer votes."""
    from zoobot_pipeline.data.synthetic.simulate import simulate_release

    path = simulate_release(out, galaxies, tiles, schema=schema, seed=seed, labelled_fraction=labelled_fraction,
                            n_volunteers=volunteers, progress=True, tile_size=tile_size,
                            workers=workers or os.cpu_count() or 1)
    console.print(f"wrote release to {path}")


@schema_app.command("list")
def schema_list() -> None:
    """List the built-in decision trees."""
    from zoobot_pipeline.schemas import available_schemas, get_schema

    table = Table("name", "questions", "answers", "description")
    for name in available_schemas():
        schema = get_schema(name)
        table.add_row(name, str(len(schema.questions)), str(schema.n_answers), schema.description)
    console.print(table)


@schema_app.command("show")
@_user_errors
def schema_show(name: Annotated[str, typer.Argument(help="Built-in name or path of a YAML tree.")]) -> None:
    """Show a tree: questions, answers, label columns and what each question is asked after."""
    from zoobot_pipeline.schemas import get_schema

    schema = get_schema(name)
    table = Table("question", "answers", "columns", "asked after", title=f"{schema.name}: {schema.description}")
    for q in schema.questions:
        parent = q.asked_after.label_col if q.asked_after else "(always asked)"
        table.add_row(q.name, ", ".join(a.name for a in q.answers), f"{q.start}-{q.stop - 1}", parent)
    console.print(table)


@schema_app.command("validate")
@_user_errors
def schema_validate(path: Annotated[Path, typer.Argument(help="YAML file defining a decision tree.")]) -> None:
    """Check a YAML decision tree; errors name the question at fault."""
    from zoobot_pipeline.schemas import load_schema

    schema = load_schema(path)
    console.print(f"{path}: valid tree {schema.name!r} with {len(schema.questions)} questions, "
                  f"{schema.n_answers} answers")


@release_app.command("check")
@_user_errors
def release_check(
    path: Annotated[Path, typer.Argument(help="Release directory.")],
    schema: Annotated[str | None, typer.Option(help="Tree for votes.parquet (default: release.json's).")] = None,
) -> None:
    """Read a whole release (every tile, band, WCS and source; votes against the tree) and report what it found."""
    from dataclasses import asdict

    from zoobot_pipeline.data.check import check_release

    check = check_release(path, schema)
    console.print_json(json.dumps(asdict(check)))
    if check.tree_violations:
        error_console.print(f"[bold red]error:[/] {check.tree_violations} galaxies have more votes on a question "
                            "than on the answer it is asked after")
        raise typer.Exit(1)


class ImageFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"


@app.command()
@_user_errors
def render(
    release: Annotated[Path, typer.Argument(help="Release directory.")],
    out: Annotated[Path, typer.Option(help="Directory for the images.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="Source id_str to render (repeatable).")] = None,
    limit: Annotated[int, typer.Option(help="Without --id: render the first N sources.")] = 20,
    size: Annotated[int, typer.Option(help="Image side in pixels (Galaxy Zoo uses 424).")] = 424,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="png or jpeg.")] = ImageFormat.png,
) -> None:
    """Render colour cutouts of sources as Galaxy Zoo shows them (at most 1 MiB each)."""
    from zoobot_pipeline.data.cutouts import release_cutouts
    from zoobot_pipeline.data.release import Release
    from zoobot_pipeline.data.render import render_image

    opened = Release.open(release)
    known = opened.sources["id_str"].to_pylist()
    wanted = list(ids) if ids else known[:limit]
    unknown = set(wanted) - set(known)
    if unknown:
        raise ValueError(f"{release}: no sources with id_str {sorted(unknown)[:5]}")
    written = 0
    for id_str, cut in release_cutouts(opened, wanted):
        render_image(cut.data, out / f"{id_str}.{image_format.value}", opened.bands, size, fmt=image_format.value)
        written += 1
    console.print(f"wrote {written} images to {out}")


Epochs = Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation loss may end sooner).")]
BatchSize = Annotated[int, typer.Option(help="Galaxies per batch (per worker).")]
LearningRate = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
Patience = Annotated[int, typer.Option(help="Epochs without validation improvement before stopping.")]
Seed = Annotated[int, typer.Option(help="Random seed (split, initialisation, augmentation).")]
Workers = Annotated[int, typer.Option(help="Ray Train workers; 1 without --ray-address trains in this process.")]
GpusPerWorker = Annotated[float, typer.Option(help="GPUs per worker (0: CPU training).")]
CpusPerWorker = Annotated[float, typer.Option(help="CPUs reserved per Ray worker.")]
RayAddress = Annotated[str | None, typer.Option(help="Join a running Ray cluster (e.g. ray://head:10001 or auto).")]
MaxFailures = Annotated[int, typer.Option(help="Worker failures Ray Train recovers from (resuming a checkpoint).")]
ResumeFrom = Annotated[Path | None, typer.Option(help="A Ray training-state checkpoint of an earlier run.")]
Quiet = Annotated[bool, typer.Option("--quiet/--progress", help="Hide or show per-epoch progress.")]


def _training_config(epochs: int, batch_size: int, lr: float, patience: int, seed: int) -> Any:
    from zoobot_pipeline.models import TrainingConfig

    return TrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)


def _preprocessing(preset: str, input_size: int) -> Any:
    from zoobot_pipeline.data.preprocessing import PreprocessingConfig

    if preset.endswith(".json"):
        return PreprocessingConfig.model_validate_json(Path(preset).read_text())
    presets = {"gz_decals": PreprocessingConfig.gz_decals, "euclid": PreprocessingConfig.euclid}
    if preset not in presets:
        raise ValueError(f"unknown preprocessing {preset!r}: use {', '.join(presets)} or a JSON file")
    return presets[preset](input_size=input_size)


@app.command()
@_user_errors
def pretrain(
    release: Annotated[Path, typer.Option(help="Release directory with the images.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (the best epoch).")],
    votes: Annotated[Path | None, typer.Option(help="Votes catalogue (default: RELEASE/votes.parquet).")] = None,
    schema: Annotated[str, typer.Option(help="Decision tree of the votes (built-in name or YAML).")] = "decals_dr5",
    architecture: Annotated[str, typer.Option(help="Any timm architecture name.")] = "efficientnet_b0",
    input_size: Annotated[int, typer.Option(help="Model input size in pixels.")] = 224,
    preprocessing: Annotated[str, typer.Option(help="gz_decals, euclid, or a PreprocessingConfig JSON.")]
    = "gz_decals",
    epochs: Epochs = 50,
    batch_size: BatchSize = 64,
    lr: LearningRate = 1e-3,
    patience: Patience = 8,
    seed: Seed = 0,
    workers: Workers = 1,
    gpus_per_worker: GpusPerWorker = 0.0,
    cpus_per_worker: CpusPerWorker = 1.0,
    ray_address: RayAddress = None,
    max_failures: MaxFailures = 2,
    resume_from: ResumeFrom = None,
    quiet: Quiet = False,
) -> None:
    """Pretrain a Zoobot-style model on volunteer vote counts (Dirichlet-Multinomial loss), locally or on Ray Train."""
    from zoobot_pipeline import models

    config = _preprocessing(preprocessing, input_size)
    model_config = models.ModelConfig.from_preprocessing(config, architecture=architecture, schema_name=schema)
    path = models.pretrain(release, votes or release / "votes.parquet", out, model_config,
                           _training_config(epochs, batch_size, lr, patience, seed), config, workers=workers,
                           gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, ray_address=ray_address,
                           max_failures=max_failures, resume_from=resume_from, quiet=quiet)
    console.print(f"best checkpoint: {path}")


class FinetuneTask(StrEnum):
    classification = "classification"
    regression = "regression"
    dirichlet = "dirichlet"


@app.command()
@_user_errors
def finetune(
    release: Annotated[Path, typer.Option(help="Release directory with the images.")],
    labels: Annotated[Path, typer.Option(help="CSV or Parquet with id_str and the label columns.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (the best epoch).")],
    task: Annotated[FinetuneTask, typer.Option(help="classification, regression or dirichlet (a new tree).")],
    checkpoint: Annotated[Path | None, typer.Option(help="Pretrained checkpoint (omit with --from-scratch).")] = None,
    label_column: Annotated[list[str] | None, typer.Option(help="Label column (repeatable).")] = None,
    schema: Annotated[str | None, typer.Option(help="For --task dirichlet: the new tree (name or YAML).")] = None,
    n_blocks: Annotated[str, typer.Option(help="Encoder blocks to unfreeze from the top (0 = frozen, or 'all').")]
    = "0",
    lr_decay: Annotated[float, typer.Option(help="Layer-wise LR decay per block from the top.")] = 0.75,
    from_scratch: Annotated[bool, typer.Option(help="Train the same head on a random encoder (baseline).")] = False,
    architecture: Annotated[str, typer.Option(help="With --from-scratch: the timm architecture.")]
    = "efficientnet_b0",
    input_size: Annotated[int, typer.Option(help="With --from-scratch: input size in pixels.")] = 224,
    epochs: Epochs = 30,
    batch_size: BatchSize = 32,
    lr: LearningRate = 1e-3,
    patience: Patience = 5,
    seed: Seed = 0,
    workers: Workers = 1,
    gpus_per_worker: GpusPerWorker = 0.0,
    cpus_per_worker: CpusPerWorker = 1.0,
    ray_address: RayAddress = None,
    max_failures: MaxFailures = 2,
    resume_from: ResumeFrom = None,
    quiet: Quiet = False,
) -> None:
    """Finetune a pretrained model on a few labels: a classifier, a regressor, or a new decision tree."""
    from zoobot_pipeline import models

    if (checkpoint is None) != from_scratch:
        raise ValueError("give --checkpoint, or --from-scratch for the random-encoder baseline (not both)")
    config = models.FinetuneConfig(task=task.value, label_columns=tuple(label_column or ()), schema_name=schema,
                                   n_blocks="all" if n_blocks == "all" else int(n_blocks), lr_decay=lr_decay)
    model_config = None
    preprocessing = None
    if from_scratch:
        preprocessing = _preprocessing("gz_decals", input_size)
        model_config = models.ModelConfig.from_preprocessing(preprocessing, architecture=architecture)
    path = models.finetune(checkpoint, release, labels, out, config,
                           _training_config(epochs, batch_size, lr, patience, seed), model_config=model_config,
                           preprocessing=preprocessing, workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, ray_address=ray_address, max_failures=max_failures,
                           resume_from=resume_from, quiet=quiet)
    console.print(f"best checkpoint: {path}")


class Precision(StrEnum):
    int8 = "int8"
    fp16 = "fp16"


@app.command("export")
@_user_errors
def export_model(
    checkpoint: Annotated[Path, typer.Option("--from", help="Checkpoint directory (pretrained or finetuned).")],
    out: Annotated[Path, typer.Option(help="Model package directory to write.")],
    mc_samples: Annotated[int, typer.Option(help="Default MC-dropout samples per galaxy when scoring.")] = 5,
    variant: Annotated[list[Precision] | None, typer.Option(
        help="Also write a reduced-precision variant (repeatable): int8 (CPU, needs --calibration-release) or fp16.")]
    = None,
    calibration_release: Annotated[Path | None, typer.Option(
        help="Release whose galaxies calibrate int8 and check the variants' accuracy against fp32.")] = None,
    n_volunteers: Annotated[int, typer.Option(help="Volunteers per galaxy assumed for vote-space uncertainty.")] = 40,
) -> None:
    """Export a checkpoint to an ONNX model package, checked against the framework's own output."""
    from zoobot_pipeline.export import ModelPackage, export_package

    path = export_package(checkpoint, out, mc_samples=mc_samples, variants=[v.value for v in variant or ()],
                          calibration_release=calibration_release, n_volunteers=n_volunteers)
    package = ModelPackage.open(path)
    table = Table("variant", "file", "sha256", "check", title=f"model package {path}")
    for name, entry in package.meta["variants"].items():
        if "parity" in entry:
            check = f"max relative difference from {package.meta['framework']['name']}: " \
                    f"{entry['parity']['max_rel_diff']:.2g}"
        else:
            accuracy = entry["accuracy"]
            check = f"{accuracy['quantity']} vs fp32: mean |diff| {accuracy['mean_abs_diff']:.2g}, " \
                    f"max {accuracy['max_abs_diff']:.2g} ({accuracy['n_galaxies']} galaxies)"
        table.add_row(name, entry["file"], entry["sha256"][:16], check)
    console.print(table)


queue_app = typer.Typer(help="Galaxy Zoo priority queue: manifests, uploads, returning votes.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


class Acquisition(StrEnum):
    mutual_information = "mutual_information"
    entropy = "entropy"
    random = "random"


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
            raise ValueError(f"--weight {pair!r}: expected QUESTION=WEIGHT, e.g. bar-dr5=2")
        weights[question] = weight
    return weights


def _magnitude_edges(text: str | None) -> list[float] | None:
    """``--magnitude-bins 17,18,19`` as a list of edges."""
    if text is None:
        return None
    try:
        return [float(edge) for edge in text.split(",")]
    except ValueError:
        raise ValueError(f"--magnitude-bins {text!r}: expected comma-separated magnitudes, e.g. 17,18,19") from None


@app.command()
@_user_errors
def rank(
    catalogue: Annotated[Path, typer.Option(help="Scored catalogue: a directory of Parquet files, or one file.")],
    top: Annotated[int, typer.Option(help="How many galaxies to queue.")],
    out: Annotated[Path, typer.Option(help="Queue directory (keeps its history: a rerun queues nobody twice).")],
    acquisition: Annotated[Acquisition, typer.Option(help="How to score galaxies.")]
    = Acquisition.mutual_information,
    weight: Annotated[list[str] | None, typer.Option(help="QUESTION=W: weight a question's term (repeatable).")]
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
    seed: Annotated[int, typer.Option(help="Seed of --acquisition random.")] = 0,
) -> None:
    """Rank a scored catalogue and queue the galaxies volunteers should label next (QUEUE/queue.parquet)."""
    from zoobot_pipeline.active.ranking import QUEUE_FILE, rank_catalogue

    table = rank_catalogue(catalogue, top, acquisition=acquisition.value, weights=_weights(weight),
                           exclude_votes=exclude, min_votes=min_votes, schema=schema, queue_dir=out,
                           per_tile_quota=per_tile_quota, magnitude_bins=_magnitude_edges(magnitude_bins),
                           per_bin_quota=per_bin_quota, magnitude_column=magnitude_column, seed=seed)
    info = json.loads(table.schema.metadata[b"zoobot_pipeline.rank"])
    shown = Table("rank", "id_str", "tile_id", "acquisition", "top question", title=f"{out / QUEUE_FILE}")
    for row in table.slice(0, 10).to_pylist():
        shown.add_row(str(row["rank"]), row["id_str"], row["tile_id"], f"{row['acquisition']:.4g}",
                      row["top_question"] or "")
    console.print(shown)
    console.print(f"queued {table.num_rows} of {info['rows_read']} catalogue rows (run {info['run_id']}); skipped "
                  f"{info['skipped_flagged']} flagged, {info['skipped_labelled']} labelled, "
                  f"{info['skipped_queued']} already queued")


@queue_app.command("manifest")
@_user_errors
def queue_manifest(
    queue: Annotated[Path, typer.Option(help="Queue directory (its queue.parquet) or a queue Parquet file.")],
    release: Annotated[Path, typer.Option(help="Release directory the queued galaxies come from.")],
    out: Annotated[Path, typer.Option(help="Directory for manifest.csv and the images.")],
    image_format: Annotated[ImageFormat, typer.Option("--format", help="png or jpeg.")] = ImageFormat.png,
    size: Annotated[int, typer.Option(help="Image side in pixels (Galaxy Zoo uses 424).")] = 424,
) -> None:
    """Write a Zooniverse subject manifest (CSV + one colour image per galaxy, #priority = rank)."""
    from zoobot_pipeline.active.manifest import read_manifest, write_manifest

    path = write_manifest(queue, release, out, image_format.value, size=size)
    console.print(f"wrote {path} with {len(read_manifest(out))} subjects")


@queue_app.command("upload")
@_user_errors
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
    from zoobot_pipeline.active.zooniverse import UploadError, upload_manifest

    try:
        report = upload_manifest(manifest, project, subject_set, endpoint=endpoint, dry_run=dry_run,
                                 link_batch_size=link_batch_size)
    except UploadError as err:
        error_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from None
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
@_user_errors
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


catalogue_app = typer.Typer(help="Scored Parquet catalogues.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


@app.command()
@_user_errors
def score(
    release: Annotated[Path, typer.Option(help="Release directory (release.json, tiles/, sources.parquet).")],
    model: Annotated[Path, typer.Option(help="Model package directory (zoobot-pipeline export).")],
    out: Annotated[Path, typer.Option(help="Catalogue directory to write; rerun the same command to resume.")],
    batch_size: Annotated[int, typer.Option(help="Galaxies per onnxruntime call.")] = 32,
    chunk_size: Annotated[int, typer.Option(help="Sources per unit of work (a tile is split into chunks).")] = 256,
    mc_samples: Annotated[int | None, typer.Option(
        help="MC-dropout samples per galaxy (default: the package's; 0: one pass, dropout off).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the dropout masks (with each galaxy's id_str).")] = 0,
    device: Annotated[Device, typer.Option(help="onnxruntime device: cpu, cuda or tensorrt.")] = Device.cpu,
    variant: Annotated[str, typer.Option(help="Package precision variant: fp32, int8 or fp16.")] = "fp32",
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (per Ray actor: default 2).")]
    = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run on Ray Data (a local Ray unless --ray-address).")] = False,
    ray_address: RayAddress = None,
    workers: Annotated[int | None, typer.Option(help="Ray inference actors (default: from the cluster's CPUs/GPUs).")]
    = None,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per Ray inference actor (with --device cuda).")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace a catalogue written with another model or settings.")]
    = False,
    quiet: Annotated[bool, typer.Option("--quiet/--progress", help="Hide or show the progress bar.")] = False,
    allow_failed_tiles: Annotated[bool, typer.Option(
        help="Exit 0 even when tiles failed (they are recorded in failures.parquet either way).")] = False,
) -> None:
    """Score every source of a release into a Parquet catalogue (one file per tile); resumable.

    Exit code 3: the run finished but some tiles failed (recorded in failures.parquet, their sources flagged); a rerun
    retries them.
    """
    from zoobot_pipeline.scoring.pipeline import score_release

    result = score_release(release, model, out, batch_size=batch_size, chunk_size=chunk_size, mc_samples=mc_samples,
                           seed=seed, device=device.value, variant=variant, threads=threads, use_ray=ray,
                           ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                           overwrite=overwrite, progress=not quiet)
    flagged = ", ".join(f"{reason} {n}" for reason, n in sorted(result.flagged.items())) or "none"
    console.print(f"{result.out_dir}: {result.n_sources} sources, {result.n_scored} scored, flagged: {flagged}; "
                  f"tiles: {result.tiles_scored} scored, {result.tiles_skipped} already done, "
                  f"{len(result.failures)} failed ({result.executor}, {result.seconds:.1f} s)", highlight=False)
    for failure in result.failures:
        error_console.print(f"[yellow]tile {failure['tile_id']} failed:[/] {failure['reason']} "
                            f"({failure['n_sources']} sources flagged; rerun to retry)", highlight=False)
    if result.failures and not allow_failed_tiles:
        raise typer.Exit(TILES_FAILED_EXIT)


_SPARK = " ▁▂▃▄▅▆▇█"


def _sparkline(histogram: Any, width: int = 10) -> str:
    import numpy as np

    coarse = np.add.reduceat(histogram, np.linspace(0, len(histogram), width, endpoint=False).astype(int))
    top = coarse.max() or 1
    return "".join(_SPARK[int(np.ceil(8 * c / top))] for c in coarse)


@catalogue_app.command("summary")
@_user_errors
def catalogue_summary(path: Annotated[Path, typer.Argument(help="Catalogue directory written by score.")]) -> None:
    """Counts, flags, failed tiles and the distribution of key fractions and acquisition."""
    from rich import box

    from zoobot_pipeline.scoring.summary import QUANTILES, summarize_catalogue

    summary = summarize_catalogue(path)
    status = "complete" if summary.finished else "incomplete: no catalogue.json (run interrupted or in progress)"
    console.print(f"[bold]{summary.path}[/] ({status})", highlight=False)
    for key, value in summary.metadata.items():
        console.print(f"  {key}: {value}", highlight=False)
    counts = Table("", "rows", title="counts")
    counts.add_row("sources", str(summary.n_sources))
    counts.add_row("scored", str(summary.n_scored))
    for reason, n in sorted(summary.flagged.items()):
        counts.add_row(f"flagged: {reason}", str(n))
    counts.add_row("tiles", str(summary.n_tiles))
    counts.add_row("failed tiles", str(len(summary.failures)))
    console.print(counts)
    if summary.failures:
        failures = Table("tile", "sources", "reason", title="failed tiles")
        for failure in summary.failures:
            failures.add_row(failure["tile_id"], str(failure["n_sources"]), failure["reason"])
        console.print(failures)
    title = f"{summary.first_question} fractions, acquisition" if summary.first_question else "key columns"
    labels = [summary.label(d.column) for d in summary.distributions]
    table = Table(box=box.SIMPLE, title=f"{title} (scored rows)")
    table.add_column("", no_wrap=True, min_width=max(map(len, labels), default=1))
    for name in ("n", "mean", *(f"q{round(100 * q):02d}" for q in QUANTILES), "histogram"):
        table.add_column(name, no_wrap=True)
    for label, d in zip(labels, summary.distributions, strict=True):
        table.add_row(label, str(d.n), f"{d.mean:.3g}", *(f"{d.quantile(q):.3g}" for q in QUANTILES),
                      _sparkline(d.histogram))
    console.print(table)
