"""The whole service once, end to end, on built-in data and no network: what ``make demo`` runs.

``python -m flows.demo --out demo-output`` runs the ``demo`` flow, whose steps are the service's own flows (each a
subflow run in Prefect's UI): simulate a release -> ``pretrain`` -> ``export`` -> ``score-release`` on a local Ray
(Ray Data) -> ``rank-and-queue`` (queue, Zooniverse manifest and images; the upload is not attempted) -> the same
model scores the Hubble eXtreme Deep Field image that scikit-image ships, as a one-tile release with its own source
detection. It ends with PNG figures (least and most certain galaxies, acquisition distribution) and ``summary.json``.
Without ``PREFECT_API_URL`` the runs go to a temporary local Prefect API (SQLite in ``PREFECT_HOME``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.scoring import rank_and_queue, score_release
from flows.training import export, pretrain
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.hubble import hubble_deep_field_release
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.figures import acquisition_histogram, certainty_grid
from zoobot_pipeline.io import write_json_atomic
from zoobot_pipeline.models import ModelConfig, TrainingConfig

__all__ = ["demo", "main"]


@task(name="simulate-release", cache_policy=NO_CACHE)
def simulate(out_dir: Path, n_galaxies: int, n_tiles: int, seed: int) -> Path:
    """A synthetic release with known morphology and simulated volunteer votes."""
    if (out_dir / "release.json").is_file():
        return out_dir
    return simulate_release(out_dir, n_galaxies, n_tiles, seed=seed, workers=min(n_tiles, os.cpu_count() or 1))


@task(name="hubble-deep-field-release", cache_policy=NO_CACHE)
def hubble_release(out_dir: Path, input_size: int) -> Path:
    """scikit-image's Hubble Deep Field as a one-tile release with detected sources."""
    return hubble_deep_field_release(out_dir, input_size=input_size)


@task(name="figures", cache_policy=NO_CACHE)
def figures(catalogue: Path, release_dir: Path, out_dir: Path, name: str, queued: int | None) -> dict[str, str]:
    """The certainty grid and the acquisition histogram of a catalogue."""
    grid = certainty_grid(catalogue, release_dir, out_dir / f"{name}_certainty.png")
    histogram = acquisition_histogram(catalogue, out_dir / f"{name}_acquisition.png", queued)
    return {"certainty_grid": str(grid), "acquisition_histogram": str(histogram)}


@flow(name="demo")
def demo(out_dir: Path = Path("demo-output"), n_galaxies: int = 1000, n_tiles: int = 2, seed: int = 0,
         architecture: str = "resnet18", input_size: int = 64, epochs: int = 15, top_k: int = 50,
         use_ray: bool = True) -> dict[str, Any]:
    """Simulate, pretrain, export, score (on a local Ray), rank and queue, and score the Hubble Deep Field; returns
    the summary written to ``out_dir/summary.json``."""
    logger = get_run_logger()
    started = time.perf_counter()
    out_dir = out_dir.resolve()
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        logger.info("%s done in %.1f s", name, timings[name])

    t0 = time.perf_counter()
    release = simulate(out_dir / "release", n_galaxies, n_tiles, seed)
    step("simulate", t0)
    t0 = time.perf_counter()
    preprocessing = PreprocessingConfig.gz_decals(input_size=input_size)
    checkpoint = pretrain(release_dir=release, out_dir=out_dir / "model",
                          model=ModelConfig.from_preprocessing(preprocessing, architecture=architecture),
                          training=TrainingConfig(epochs=epochs, batch_size=32, patience=epochs, seed=seed),
                          preprocessing=preprocessing)
    step("pretrain", t0)
    t0 = time.perf_counter()
    package = export(checkpoint_dir=checkpoint, out_dir=out_dir / "package", mc_samples=5)
    step("export", t0)
    t0 = time.perf_counter()
    scored = score_release(release_dir=release, package_dir=package, out_dir=out_dir / "catalogue",
                           use_ray=use_ray, overwrite=True)
    step("score", t0)
    t0 = time.perf_counter()
    queue = rank_and_queue(catalogue=scored.out_dir, release_dir=release, queue_dir=out_dir / "queue", top_k=top_k,
                           exclude_votes=release / "votes.parquet", run_key=f"demo-{seed}",
                           manifest_dir=out_dir / "manifest")
    step("rank and queue", t0)
    t0 = time.perf_counter()
    hxdf = hubble_release(out_dir / "hubble-release", input_size)
    hxdf_scored = score_release(release_dir=hxdf, package_dir=package, out_dir=out_dir / "hubble-catalogue",
                                overwrite=True)
    step("hubble deep field", t0)
    t0 = time.perf_counter()
    plots = {"simulated": figures(scored.out_dir, release, out_dir, "simulated", top_k),
             "hubble_deep_field": figures(hxdf_scored.out_dir, hxdf, out_dir, "hubble", None)}
    step("figures", t0)
    summary = {
        "release": str(release), "model": str(checkpoint), "package": str(package),
        "catalogue": str(scored.out_dir), "queue": str(queue.run_file), "manifest": str(queue.manifest),
        "queue_sheet": str(queue.sheet) if queue.sheet else None,
        "galaxies": {"sources": scored.n_sources, "scored": scored.n_scored, "flagged": scored.flagged,
                     "queued": queue.queued},
        "hubble_deep_field": {"catalogue": str(hxdf_scored.out_dir), "sources": hxdf_scored.n_sources,
                              "scored": hxdf_scored.n_scored},
        "figures": plots, "seconds": timings, "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(summary, out_dir / "summary.json")
    lines = "\n".join(f"- {k}: `{v}`" for k, v in summary.items() if isinstance(v, str))
    create_markdown_artifact(key="demo-summary", description="demo: where everything is",
                             markdown=f"# zoobot-pipeline demo\n\n{lines}\n\n```json\n"
                                      f"{json.dumps(summary['galaxies'], indent=2)}\n```")
    return summary


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.rule("[bold green]zoobot-pipeline demo: done")
    galaxies = summary["galaxies"]
    console.print(f"{galaxies['sources']} simulated sources, {galaxies['scored']} scored, flagged "
                  f"{galaxies['flagged'] or 'none'}; {galaxies['queued']} queued for Galaxy Zoo. Hubble Deep Field: "
                  f"{summary['hubble_deep_field']['scored']} of {summary['hubble_deep_field']['sources']} detected "
                  f"sources scored. Wall time {summary['wall_seconds']:.0f} s.", highlight=False)
    queue = pq.read_table(summary["queue"]).slice(0, 10).to_pylist()
    table = Table("rank", "id_str", "acquisition", "top question", title="top of the queue")
    for row in queue:
        table.add_row(str(row["rank"]), row["id_str"], f"{row['acquisition']:.3f}", row["top_question"] or "")
    console.print(table)
    for key in ("catalogue", "queue", "manifest", "queue_sheet", "model", "package"):
        console.print(f"{key:>12}: {summary[key]}", highlight=False)
    for name, plots in summary["figures"].items():
        for kind, path in plots.items():
            console.print(f"{name + ' ' + kind:>12}: {path}", highlight=False)
    console.print(f"{'summary':>12}: {out_dir / 'summary.json'}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.demo [--out DIR] [--galaxies N] [--epochs E]``."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--galaxies", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray for one run: no token file in $HOME
    summary = demo(out_dir=args.out, n_galaxies=args.galaxies, epochs=args.epochs)
    _print_summary(summary, args.out.resolve())


if __name__ == "__main__":
    main()
