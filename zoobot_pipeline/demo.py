"""The end-to-end demo on built-in data: what ``make demo`` runs.

Today: simulate a survey release with known truth, validate it the way a pipeline run would (every tile, WCS, band
and source; votes against the decision tree), pretrain a small model on the volunteer votes, predict every source,
render a gallery, and summarise. Export, scoring and ranking join as they land.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console

from zoobot_pipeline.data.check import check_release
from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.render import contact_sheet, render_rgb, write_image
from zoobot_pipeline.data.simulate import simulate_release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.io import write_json_atomic
from zoobot_pipeline.schemas import get_schema

__all__ = ["run_demo"]


def _gallery(release_dir: Path, out: Path, model_smooth: dict[str, float], per_kind: int = 4) -> Path:
    """A contact sheet of simulated sources, a few of each kind, captioned with kind and the smooth fraction that
    volunteers gave and that the model predicts."""
    release = Release.open(release_dir)
    schema = get_schema(release.info.schema_name or "decals_dr5")
    truth = pq.read_table(release_dir / "truth.parquet")
    votes = read_votes(release_dir / "votes.parquet", schema)
    counts = vote_matrix(votes, schema)
    root = schema.questions[0]
    smooth = counts[:, root.start] / np.maximum(counts[:, root.slice].sum(axis=1), 1)
    smooth_by_id = dict(zip(votes["id_str"].to_pylist(), smooth, strict=True))
    kinds = truth["kind"].to_pylist()
    ids = truth["id_str"].to_pylist()
    chosen = []
    for kind in dict.fromkeys(kinds):
        chosen.extend([i for i, k in zip(ids, kinds, strict=True) if k == kind and i in smooth_by_id][:per_kind])
    kind_by_id = dict(zip(ids, kinds, strict=True))
    images, captions = [], []
    for id_str, cut in release_cutouts(release, chosen):
        images.append(render_rgb(cut.data, release.bands, size=180))
        predicted = f"{model_smooth[id_str]:.2f}" if id_str in model_smooth else "-"
        captions.append(f"{id_str} {kind_by_id[id_str]}\nsmooth: votes {smooth_by_id[id_str]:.2f} model {predicted}")
    return write_image(contact_sheet(images, captions, columns=6), out)


def run_demo(out_dir: str | Path, n_galaxies: int = 1000, n_tiles: int = 2, seed: int = 0,
             architecture: str = "resnet18", input_size: int = 64, epochs: int = 15,
             console: Console | None = None) -> dict:
    """Run every stage that exists on a fresh simulated release under ``out_dir``; returns the summary it writes."""
    from zoobot_pipeline import models
    from zoobot_pipeline.data.preprocessing import PreprocessingConfig

    console = console or Console()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    console.rule("[bold]zoobot-pipeline demo")
    console.print(f"1/4 simulating a release: {n_galaxies} sources on {n_tiles} tiles (seed {seed})")
    t0 = time.perf_counter()
    release_dir = simulate_release(out_dir / "release", n_galaxies, n_tiles, seed=seed, progress=True,
                                   workers=min(n_tiles, os.cpu_count() or 1))
    simulate_s = time.perf_counter() - t0
    console.print(f"    {release_dir} in {simulate_s:.1f} s ({n_galaxies / simulate_s:.0f} sources/s)")
    console.print("2/4 checking the release: every tile, band, WCS, cutout, and the votes against the tree")
    check = check_release(release_dir)
    console.print(f"    {check.sources} sources on {check.tiles} tiles, cutout flags {check.cutout_flags}, "
                  f"{check.labelled} labelled, {check.tree_violations} tree violations")
    console.print(f"3/4 pretraining {architecture} at {input_size} px on the volunteer votes ({epochs} epochs)")
    t0 = time.perf_counter()
    preprocessing = PreprocessingConfig.gz_decals(input_size=input_size)
    checkpoint = models.pretrain(
        release_dir, release_dir / "votes.parquet", out_dir / "model",
        models.ModelConfig.from_preprocessing(preprocessing, architecture=architecture),
        models.TrainingConfig(epochs=epochs, batch_size=32, patience=epochs, seed=seed), preprocessing, quiet=False)
    train_s = time.perf_counter() - t0
    metrics = models.read_checkpoint_json(checkpoint)["metrics"]
    console.print(f"    {checkpoint} in {train_s:.0f} s: best validation NLL {metrics['best_val_loss']:.2f} "
                  f"at epoch {metrics['best_epoch']}")
    console.print("4/4 predicting every source and rendering a gallery of simulated galaxies")
    predictions = models.predict(checkpoint, release_dir)
    model_smooth = dict(zip(predictions["id_str"].to_pylist(),
                            predictions[f"{get_schema('decals_dr5').label_cols[0]}_fraction"].to_pylist(),
                            strict=True))
    gallery = _gallery(release_dir, out_dir / "gallery.png", model_smooth)
    summary = {
        "release": str(release_dir),
        "model": str(checkpoint),
        "gallery": str(gallery),
        "check": asdict(check),
        "best_val_nll": round(metrics["best_val_loss"], 3),
        "predicted_sources": predictions.num_rows,
        "simulate_seconds": round(simulate_s, 2),
        "train_seconds": round(train_s, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(summary, out_dir / "summary.json")
    console.rule("[bold green]done")
    console.print_json(json.dumps(summary))
    return summary
