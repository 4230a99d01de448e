"""Scoring commands: ``score`` a release into a catalogue, ``catalogue summary`` and ``catalogue export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zoobot_pipeline.cli._options import PRECISION_VARIANTS, RayAddress, choices, console, error_console, one_of
from zoobot_pipeline.runtime.devices import DEVICES

app = typer.Typer()
catalogue_app = typer.Typer(help="Scored Parquet catalogues.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")

TILES_FAILED_EXIT = 3  # score: finished, some tiles failed and were recorded

Device = choices("Device", DEVICES)
Variant = choices("Variant", PRECISION_VARIANTS)


@app.command()
def score(
    release: Annotated[Path, typer.Option(help="Release directory (release.json, tiles/, sources.parquet).")],
    model: Annotated[Path, typer.Option(help="Model package directory (zoobot-pipeline export).")],
    out: Annotated[Path, typer.Option(help="Catalogue directory to write; rerun the same command to resume.")],
    batch_size: Annotated[int, typer.Option(help="Galaxies per onnxruntime call.")] = 32,
    chunk_size: Annotated[int, typer.Option(help="Sources per unit of work (a tile is split into chunks).")] = 256,
    mc_samples: Annotated[int | None, typer.Option(
        help="MC-dropout samples per galaxy, at most 1000 (default: the package's; 0: one pass, dropout off).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the dropout masks (with each galaxy's id_str).")] = 0,
    device: Annotated[Device, typer.Option(help=f"onnxruntime device: {one_of(DEVICES)}.")] = "cpu",
    variant: Annotated[Variant, typer.Option(help=f"Package precision variant: {one_of(PRECISION_VARIANTS)}.")]
    = "fp32",
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (per Ray actor: default 2).")]
    = None,
    prep_workers: Annotated[int | None, typer.Option(
        help="Threads cutting and preprocessing ahead of the model, in this process (0: every stage in turn; "
             "default: 0 on a CPU device, the cores but two on a GPU).")] = None,
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
                           seed=seed, device=device.value, variant=variant.value, threads=threads, use_ray=ray,
                           ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                           prep_workers=prep_workers, overwrite=overwrite, progress=not quiet)
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
def catalogue_summary(path: Annotated[Path, typer.Argument(help="Catalogue directory written by score.")]) -> None:
    """Counts, flags, failed tiles and the distribution of key fractions and acquisition."""
    from rich import box
    from rich.table import Table

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


@catalogue_app.command("export")
def catalogue_export(
    path: Annotated[Path, typer.Argument(help="Catalogue directory written by score.")],
    format_: Annotated[str, typer.Option(
        "--format", metavar="fits|hats|zoobot-csv",
        help="fits: one FITS binary table (TOPCAT, astropy); hats: a HATS catalogue directory (LSDB); zoobot-csv: "
             "the CSV of Zoobot's predict_on_catalog (scored galaxies only).")],
    out: Annotated[Path, typer.Option(help="File to write (fits, zoobot-csv) or directory (hats).")],
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing --out (a HATS directory: only the catalogue's own files).")] = False,
    partition_rows: Annotated[int | None, typer.Option(
        help="hats: most rows per HEALPix partition (default 250000).")] = None,
) -> None:
    """Export a catalogue for TOPCAT/astropy (FITS), LSDB (HATS) or Zoobot's scripts (CSV); streams, never loads it
    whole."""
    from zoobot_pipeline.formats import export_catalogue

    result = export_catalogue(path, out, format_, overwrite=overwrite, partition_rows=partition_rows)
    console.print(f"{result.out}: {result.format}, {result.n_rows} rows from {result.n_tiles} tiles of {path}",
                  highlight=False)
