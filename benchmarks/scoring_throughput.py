"""Scoring throughput: FITS tiles to Parquet catalogue, against model-only onnxruntime and torch eager, same batches.

Run: .venv/bin/python benchmarks/scoring_throughput.py [--galaxies 800 --tiles 4 | --release DIR]
     [--architecture efficientnet_b0] [--size 224] [--epochs 2 | --checkpoint CKPT] [--batch 8]
     [--device cpu|cuda|tensorrt] [--torch-device cpu|cuda] [--threads N]

Simulates a release (or reads ``--release``), trains a model for a few epochs (or takes ``--checkpoint``), exports it
with an int8 variant (fp16 too on a GPU device) calibrated on the release, then measures in one run, in galaxies/s:
- cutting + preprocessing alone (one core, the pipeline's own functions);
- model-only onnxruntime on the preprocessed images: fp32 with S=1 and S=5 MC-dropout masks, int8 (and fp16) S=5;
- torch eager on the same checkpoint and batches (channels_last, encoder once + S=5 head samples);
- end to end: ``score_release`` from the FITS tiles to the Parquet catalogue (uncertainty included), fp32 and int8;
and prints the ratios: S=5/S=1 cost, end-to-end/model-only, int8/fp32 and onnxruntime/torch, with the variants'
accuracy against fp32 from ``model.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zoobot_pipeline.data.cutouts import CutoutSizing, tile_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.export import ModelPackage, export_package
from zoobot_pipeline.models import ModelConfig, TrainingConfig, pretrain
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.runtime.session import PackageSession
from zoobot_pipeline.scoring.pipeline import score_release


def _prepare(release_dir: Path, preprocessing: PreprocessingConfig) -> tuple[np.ndarray, list[str], float]:
    """All usable preprocessed images of the release, their ids, and the cut + preprocess rate (galaxies/s)."""
    release = Release.open(release_dir)
    images, ids = [], []
    start = time.perf_counter()
    for tile, sources in release.iter_tiles():
        cutouts = tile_cutouts(tile, sources, CutoutSizing(), release.info.pixel_scale_arcsec)
        for id_str, cut in zip(sources["id_str"].to_pylist(), cutouts, strict=True):
            if not cut.rejected:
                images.append(preprocess(cut.data, preprocessing, release.bands))
                ids.append(id_str)
    return np.stack(images), ids, len(ids) / (time.perf_counter() - start)


def _rate(run, n: int, repeats: int = 2) -> float:
    """Best of ``repeats`` timed passes of ``run()`` over ``n`` galaxies, after one warm-up batch inside ``run``."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = max(best, n / (time.perf_counter() - start))
    return best


def _onnx_rate(session: PackageSession, images: np.ndarray, ids: list[str], batch: int, samples: int) -> float:
    session.predict(images[:batch], ids[:batch], samples)

    def run() -> None:
        for start in range(0, len(images), batch):
            session.predict(images[start : start + batch], ids[start : start + batch], samples)

    return _rate(run, len(images))


@torch.no_grad()
def _torch_rate(checkpoint: Path, images: np.ndarray, batch: int, samples: int, device: str) -> float:
    model = load_checkpoint(checkpoint).to(device).to(memory_format=torch.channels_last).eval()
    tensor = torch.from_numpy(images)

    def run() -> None:
        for start in range(0, len(images), batch):
            x = tensor[start : start + batch].to(device).contiguous(memory_format=torch.channels_last)
            model.mc_forward(x, samples).cpu()

    run_batch = tensor[:batch].to(device).contiguous(memory_format=torch.channels_last)
    model.mc_forward(run_batch, samples)
    return _rate(run, len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, help="score this release instead of simulating one")
    parser.add_argument("--galaxies", type=int, default=800)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--architecture", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of training one")
    parser.add_argument("--work", type=Path, help="keep the release, model and catalogues here (default: a temporary "
                        "directory); a release or model already there is reused")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--torch-device", choices=["cpu", "cuda"], help="default: cuda when --device is a GPU")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime/torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_device = args.torch_device or ("cpu" if args.device == "cpu" else "cuda")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.work or Path(tmp_name)
        release = args.release or tmp / "release"
        if not (release / "release.json").exists():
            from zoobot_pipeline.data.synthetic.simulate import simulate_release

            simulate_release(release, args.galaxies, args.tiles, seed=1, progress=False)
        preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
        checkpoint = args.checkpoint or tmp / "model"
        if not (checkpoint / "checkpoint.json").exists():
            start = time.perf_counter()
            model_config = ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture)
            pretrain(release, release / "votes.parquet", checkpoint, model_config,
                                  TrainingConfig(epochs=args.epochs, batch_size=32, augmentation=None), preprocessing)
            print(f"trained {args.architecture} at {args.size} px for {args.epochs} epochs in "
                  f"{time.perf_counter() - start:.0f} s")
        variants = ["int8"] + (["fp16"] if args.device != "cpu" else [])
        start = time.perf_counter()
        package = ModelPackage.open(export_package(checkpoint, tmp / "package", mc_samples=args.samples,
                                                   variants=variants, calibration_release=release))
        print(f"exported with {', '.join(variants)} in {time.perf_counter() - start:.0f} s")
        images, ids, prep_rate = _prepare(release, package.preprocessing)
        n = len(images)

        rates: dict[str, float] = {"cut + preprocess (1 core)": prep_rate}
        sessions = {v: PackageSession(package, variant=v, device=args.device, threads=args.threads)
                    for v in ("fp32", *variants)}
        print(f"onnxruntime providers: {sessions['fp32'].providers[0]}; {n} galaxies, batch {args.batch}")
        rates["onnx fp32 S=1"] = _onnx_rate(sessions["fp32"], images, ids, args.batch, 1)
        for variant, session in sessions.items():
            rates[f"onnx {variant} S={args.samples}"] = _onnx_rate(session, images, ids, args.batch, args.samples)
        rates[f"torch eager S={args.samples}"] = _torch_rate(checkpoint, images, args.batch, args.samples,
                                                              torch_device)
        for variant in ("fp32", "int8"):
            start = time.perf_counter()
            score_release(release, tmp / "package", tmp / f"catalogue-{variant}", batch_size=args.batch,
                          mc_samples=args.samples, device=args.device, threads=args.threads, variant=variant,
                          overwrite=True, progress=False)
            rates[f"end to end {variant} S={args.samples}"] = n / (time.perf_counter() - start)

    print(f"\n{'path':36s} {'galaxies/s':>11s}")
    for name, rate in rates.items():
        print(f"{name:36s} {rate:11.1f}")
    s = args.samples
    print("\nratios (same run, same batches)")
    print(f"  S={s} / S=1 cost (onnx fp32):          {rates['onnx fp32 S=1'] / rates[f'onnx fp32 S={s}']:.3f}")
    for variant in ("fp32", "int8"):
        ratio = rates[f"end to end {variant} S={s}"] / rates[f"onnx {variant} S={s}"]
        print(f"  end to end / model-only ({variant}):       {ratio:.3f}")
    print(f"  int8 / fp32 (model-only):             {rates[f'onnx int8 S={s}'] / rates[f'onnx fp32 S={s}']:.3f}")
    print(f"  onnx fp32 / torch eager:              {rates[f'onnx fp32 S={s}'] / rates[f'torch eager S={s}']:.3f}")
    for variant in variants:
        accuracy = package.meta["variants"][variant]["accuracy"]
        print(f"  {variant} vs fp32: mean |diff| of {accuracy['quantity']} {accuracy['mean_abs_diff']:.4f}, "
              f"max {accuracy['max_abs_diff']:.4f} on {accuracy['n_galaxies']} held-out galaxies")


if __name__ == "__main__":
    main()
