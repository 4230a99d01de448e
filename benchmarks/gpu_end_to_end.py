"""End to end on a GPU host: FITS tiles -> cut + preprocess on N cores -> model on the GPU -> catalogue rows.

Run: python benchmarks/gpu_end_to_end.py --release DIR [--copies 20] [--checkpoint CKPT | --epochs 1]
     [--prep-workers 1,4,16] [--batch 256] [--samples 5] [--precision fp16|fp32]

The release (made beforehand, e.g. ``zoobot-pipeline simulate --out DIR --galaxies 200 --tiles 1``) is replicated
``--copies`` times under new tile and source ids (hard links to the same FITS files), so that a few megabytes carried
to a GPU host make a release of thousands of galaxies. Trains a model for ``--epochs`` on it unless ``--checkpoint``
is given, exports its package, and measures in one run, in galaxies/s:
- cut + preprocess alone with 1, 4, 16 ... worker threads (:func:`zoobot_pipeline.scoring.local.prepared_chunks`);
- the model alone: torch on the GPU, encoder once + S head samples, channels_last, ``--precision`` autocast, from
  preprocessed images in host memory (host-to-device copies included);
- end to end: the pipeline's own in-process engine (:func:`zoobot_pipeline.scoring.local.scored_chunks`: prepare
  threads, the model, a columns thread making the catalogue rows with vote-space uncertainties) with the model on the
  GPU, for each worker count; Parquet writing excluded;
and prints a per-stage timeline summary (busy time per stage and how much of it overlapped the model). The model
runs in torch because onnxruntime's CUDA provider needs onnxruntime-gpu; where it is installed, ``gpu_check.sh`` also
runs ``scoring_throughput.py --device cuda`` for the onnxruntime rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.export import ModelPackage, export_package
from zoobot_pipeline.models import ModelConfig, TrainingConfig, pretrain
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.scoring.chunks import ChunkConfig, ChunkScorer, TileJob
from zoobot_pipeline.scoring.local import Timeline, prepared_chunks, scored_chunks


def replicate_release(source: Path, target: Path, copies: int) -> Path:
    """``copies`` copies of ``source``'s tiles and sources under new ids (tile files hard-linked where possible)."""
    release = Release.open(source)
    if target.exists():
        shutil.rmtree(target)
    (target / "tiles").mkdir(parents=True)
    tables = []
    for copy in range(copies):
        for tile_id in release.tile_ids:
            new_id = f"{tile_id}-copy{copy}"
            src = release.tile_paths[tile_id]
            dst = target / "tiles" / f"{new_id}{''.join(src.suffixes)}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        sources = release.sources
        tables.append(sources.set_column(sources.schema.get_field_index("id_str"), "id_str",
                                         pa.array([f"{i}-copy{copy}" for i in sources["id_str"].to_pylist()]))
                      .set_column(sources.schema.get_field_index("tile_id"), "tile_id",
                                  pa.array([f"{t}-copy{copy}" for t in sources["tile_id"].to_pylist()])))
    pq.write_table(pa.concat_tables(tables), target / "sources.parquet")
    info = json.loads((source / "release.json").read_text())
    info.pop("tiles", None)
    (target / "release.json").write_text(json.dumps(info))
    votes = source / "votes.parquet"
    if votes.exists():
        table = pq.read_table(votes)
        pq.write_table(pa.concat_tables(
            [table.set_column(table.schema.get_field_index("id_str"), "id_str",
                              pa.array([f"{i}-copy{copy}" for i in table["id_str"].to_pylist()]))
             for copy in range(copies)]), target / "votes.parquet")
    return target


class TorchChunkScorer(ChunkScorer):
    """The pipeline's chunk scorer with the model in torch on a GPU (dropout masks drawn by torch)."""

    def __init__(self, package: ModelPackage, checkpoint: Path, device: str, precision: str, **options) -> None:
        super().__init__(package, **options)
        self.model = load_checkpoint(checkpoint).to(device).to(memory_format=torch.channels_last).eval()
        self.device = device
        self.dtype = torch.float16 if precision == "fp16" else None

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], ids: list[str]) -> np.ndarray:
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + self.batch_size], dtype=np.float32))
            if self.device == "cuda":
                batch = batch.pin_memory()
            x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
                outputs.append(self.model.mc_forward(x, max(self.mc_samples, 1)).float().cpu().numpy())
        if outputs:
            return np.concatenate(outputs)
        return np.zeros((0, max(self.mc_samples, 1), len(self.columns.output_names)), np.float32)


def _jobs(release: Release) -> list[TileJob]:
    columns = ["id_str", "ra", "dec", "tile_id"] + [c for c in ("r50_arcsec",) if c in release.sources.column_names]
    return [TileJob(t, release.tile_paths[t], release.tile_sources(t).select(columns)) for t in release.tile_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--architecture", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--prep-workers", default="1,4,16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: check the mechanics on a machine without a GPU (fp32 only)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_end_to_end: no CUDA device visible to torch; run it on a GPU host (or --device cpu)")
    if args.device == "cpu" and args.precision == "fp16":
        raise SystemExit("gpu_end_to_end: --precision fp16 needs --device cuda")
    workers = [int(w) for w in args.prep_workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        release_dir = replicate_release(args.release, tmp / "release", args.copies)
        release = Release.open(release_dir)
        preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
        checkpoint = args.checkpoint or tmp / "model"
        if args.checkpoint is None:
            start = time.perf_counter()
            pretrain(release_dir, release_dir / "votes.parquet", checkpoint,
                     ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture),
                     TrainingConfig(epochs=args.epochs, batch_size=64, augmentation=None, device=args.device),
                     preprocessing)
            print(f"trained {args.architecture} @ {args.size} for {args.epochs} epoch(s) in "
                  f"{time.perf_counter() - start:.0f} s")
        package = ModelPackage.open(export_package(checkpoint, tmp / "package", mc_samples=args.samples))
        config = ChunkConfig(release.bands, release.info.pixel_scale_arcsec, package.preprocessing)
        jobs = _jobs(release)
        n_sources = release.sources.num_rows
        print(f"{n_sources} sources in {len(jobs)} tiles; {os.cpu_count()} CPU cores; "
              f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; batch {args.batch}, "
              f"S={args.samples}, {args.precision}")

        rates: dict[str, float] = {}
        images: list[np.ndarray] = []
        for pass_index, n in enumerate(workers):
            start = time.perf_counter()
            for *_, prepared in prepared_chunks(jobs, config, args.chunk, n):
                if pass_index == 0:
                    images.extend(prepared.images)
            rates[f"cut + preprocess, {n} worker thread(s)"] = n_sources / (time.perf_counter() - start)
        scorer = TorchChunkScorer(package, checkpoint, args.device, args.precision, batch_size=args.batch,
                                  mc_samples=args.samples)
        ids = [str(i) for i in range(len(images))]
        best = 0.0
        for _ in range(3):  # the first pass warms up cuDNN's algorithm choice for each batch shape
            start = time.perf_counter()
            scorer.predict(images, ids)
            best = max(best, len(images) / (time.perf_counter() - start))
        rates[f"model only (torch, {args.device})"] = best
        first_chunk = next(prepared for *_, prepared in prepared_chunks(jobs[:1], config, args.chunk, 0))
        scorer.score(first_chunk)  # compiles (or loads) the vote-space kernels before the timed passes
        for n in workers:
            timeline = Timeline()
            start = time.perf_counter()
            for _ in scored_chunks(jobs, scorer, config, args.chunk, n, timeline):
                pass
            wall = time.perf_counter() - start
            rates[f"end to end, {n} prep thread(s)"] = n_sources / wall
            print(f"timeline, {n} prep thread(s): wall {wall:.2f} s; busy: prepare "
                  f"{timeline.busy_seconds('prepare'):.2f} thread-s, model {timeline.busy_seconds('model'):.2f} s, "
                  f"columns {timeline.busy_seconds('columns'):.2f} s; prepare during model "
                  f"{timeline.overlap_seconds('prepare', 'model'):.2f} s, columns during model "
                  f"{timeline.overlap_seconds('columns', 'model'):.2f} s")

    print(f"\n{'path':44s} {'galaxies/s':>11s}")
    for name, rate in rates.items():
        print(f"{name:44s} {rate:11.1f}")
    best = max(v for k, v in rates.items() if k.startswith("end to end"))
    model_only = rates[f"model only (torch, {args.device})"]
    print(f"\nend to end (best) / model-only: {best / model_only:.3f}; target >= 5000 galaxies/s per GPU: "
          f"{'met' if best >= 5000 else 'not met'} ({best:.0f})")


if __name__ == "__main__":
    main()
