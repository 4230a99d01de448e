"""Scoring throughput: FITS tiles to Parquet catalogue, against model-only onnxruntime and torch eager, same batches.

Run: .venv/bin/python benchmarks/scoring_throughput.py [--galaxies 800 --tiles 4 | --release DIR]
     [--architectures efficientnet_b0,convnext_nano] [--size 224] [--epochs 2] [--batch 8] [--prep-workers 1]
     [--passes 3] [--device cpu|cuda|tensorrt] [--torch-device cpu|cuda] [--threads N] [--cli] [--ray] [--work DIR]

Simulates a release (or reads ``--release``), and for each architecture trains a model for a few epochs, exports it
with an int8 variant (fp16 too on a GPU device) calibrated on the release, then measures in one run, in galaxies/s:
- cutting + preprocessing alone (one core, the pipeline's own ``prepare_chunk``, warm), and per stage: reading the
  tile's pages, WCS, cutting, NaN fraction, stretch + normalise + resize (the pipeline's batch kernel; its two halves
  also timed per window apart), stacking into batches;
- model-only onnxruntime on the preprocessed images: fp32 with S=1 and S=5 MC-dropout masks, int8 (and fp16) S=5;
- torch eager on the same checkpoint and batches (channels_last, encoder once + S=5 head samples);
- end to end: ``score_release`` from the FITS tiles to the Parquet catalogue (uncertainty included), fp32 and int8,
  ``--passes`` times each, every pass back to back with a model-only pass (order alternating; the end-to-end /
  model-only ratio is the median over these pairs, as one pass on a shared machine swings by 0.25), with
  ``--prep-workers`` preparing threads (and, for comparison, fp32 with every stage in one thread), with the
  per-stage timeline of the fp32 run (prepare, model and columns, and how much of them overlapped);
- with ``--cli``: the same fp32 job through ``zoobot-pipeline score`` in a fresh process (wall clock, start-up
  included), ``--passes`` times, each back to back with the library's fp32 run (the ratio their pairs' median);
- with ``--ray``: the fp32 job on Ray Data on this machine, with Ray started beforehand and by the run;
and prints the ratios: S=5/S=1 cost, end-to-end/model-only, int8/fp32, onnxruntime/torch and CLI/library, with the
variants' accuracy against fp32 from ``model.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from zoobot_pipeline.data.cutouts import MAX_NAN_FRACTION, _band_pixels, _float32_bits
from zoobot_pipeline.data.image_kernels import cut_band, nan_or_zero_fractions, normalise_resize, stretch_mix
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, _crop_box, _stretch_value, preprocess_windows
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.export import ModelPackage, export_package
from zoobot_pipeline.models import ModelConfig, TrainingConfig, pretrain
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.runtime.session import PackageSession
from zoobot_pipeline.scoring.chunks import ChunkConfig, image_buffer, prepare_chunk
from zoobot_pipeline.scoring.local import Timeline
from zoobot_pipeline.scoring.pipeline import default_prep_workers, score_release

CUT_BATCH = 32
CHUNK = 256


def _prepare(release_dir: Path, preprocessing: PreprocessingConfig) -> tuple[np.ndarray, list[str], float]:
    """All usable preprocessed images of the release, their ids, and the cut + preprocess rate (galaxies/s) of the
    pipeline's own ``prepare_chunk`` in this thread, timed on a pass that reuses one image block, as scoring does
    (a second pass keeps the images for the model-only rows, untimed)."""
    release = Release.open(release_dir)
    config = ChunkConfig(release.bands, release.info.pixel_scale_arcsec, preprocessing)
    buffer = image_buffer(config, CHUNK)
    n, seconds = 0, 0.0
    for tile, sources in release.iter_tiles():
        for first in range(0, sources.num_rows, CHUNK):
            start = time.perf_counter()
            n += len(prepare_chunk(tile, None, sources.slice(first, CHUNK), config, buffer=buffer).images)
            seconds += time.perf_counter() - start
    images, ids = [], []
    for tile, sources in release.iter_tiles():
        for first in range(0, sources.num_rows, CHUNK):
            prepared = prepare_chunk(tile, None, sources.slice(first, CHUNK), config)
            images.extend(prepared.images)
            ids.extend(pc.filter(prepared.rows["id_str"], pc.is_null(prepared.rows["flag"])).to_pylist())
    return np.stack(images), ids, n / seconds


class _Stopwatch:
    """Seconds spent per named stage: ``with watch("stage"): ...``."""

    def __init__(self, stages: list[str]) -> None:
        self.seconds = dict.fromkeys(stages, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start


SPLIT = "of which, per window apart: "


def _stage_profile(release_dir: Path, preprocessing: PreprocessingConfig) -> dict[str, float]:
    """Milliseconds per galaxy of each step of cutting and preprocessing, on one core, the pipeline's own kernels:
    stretching, normalising and resizing are one batch kernel there (``preprocess_windows``), timed as such; the
    entries named ``SPLIT ...`` time its two halves per window apart (not part of the total)."""
    release = Release.open(release_dir)
    watch = _Stopwatch(["reading (tile pages, first touch)", "WCS (sky to pixel)", "cutting", "NaN fraction",
                        "stretch + normalise + resize (batch)", "stacking into batches",
                        f"{SPLIT}stretch (scale, mix, arcsinh)", f"{SPLIT}normalise + resize"])
    p = preprocessing
    scales = np.asarray(p.band_scales or (1.0,) * len(p.bands), dtype=np.float32)
    mixing = np.ascontiguousarray(p.mixing_matrix(), dtype=np.float32)
    band_index = np.array([release.bands.index(b) for b in p.bands], dtype=np.int64)
    low = _stretch_value(p.clip_min, p)
    high = np.full(p.n_channels, _stretch_value(p.clip_max, p))
    block = np.empty((CUT_BATCH, p.n_channels, p.input_size, p.input_size), dtype=np.float32)  # reused, as scoring does
    n = 0
    for tile, sources in release.iter_tiles():
        n_bands = len(tile.images)
        with watch("reading (tile pages, first touch)"):
            for image in tile.images:
                float(np.sum(image))
        for first in range(0, sources.num_rows, CUT_BATCH):
            batch = sources.slice(first, CUT_BATCH)
            r50 = batch["r50_arcsec"].to_numpy() if "r50_arcsec" in batch.column_names else None
            sizes = p.cutout.sizes(r50, release.info.pixel_scale_arcsec, batch.num_rows)
            with watch("WCS (sky to pixel)"):
                pixels = _band_pixels(tile.wcs, batch["ra"].to_numpy(), batch["dec"].to_numpy())
            lengths = n_bands * sizes * sizes
            offsets = np.zeros(len(sizes), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            bits = np.empty(int(lengths.sum()), dtype=np.uint32)
            overlaps = np.zeros((n_bands, len(sizes)), dtype=bool)
            edges = np.zeros(len(sizes), dtype=bool)
            with watch("cutting"):
                for band, (image, (x, y)) in enumerate(zip(tile.images, pixels, strict=True)):
                    image_bits, swap = _float32_bits(image)
                    cut_band(image_bits, swap, np.asarray(x, np.float64), np.asarray(y, np.float64), sizes, offsets,
                             band, n_bands, bits, overlaps[band], edges)
            with watch("NaN fraction"):
                fractions = nan_or_zero_fractions(bits, offsets, lengths)
            data = bits.view(np.float32)
            kept = np.array([g for g in range(len(sizes)) if fractions[g] < MAX_NAN_FRACTION and overlaps[:, g].any()],
                            dtype=np.int64)
            out = block[: len(kept)]
            with watch("stretch + normalise + resize (batch)"):
                preprocess_windows(data, offsets[kept], sizes[kept], n_bands, p, release.bands, out=out)
            with watch("stacking into batches"):
                np.stack(list(out))
            for g in kept:
                size = int(sizes[g])
                cutout = data[offsets[g] : offsets[g] + lengths[g]].reshape(n_bands, size, size)
                top, left, height, width = _crop_box(size, size, p.crop_fraction)
                with watch(f"{SPLIT}stretch (scale, mix, arcsinh)"):
                    stretched = stretch_mix(cutout, band_index, scales, mixing, p.q, p.stretch == "arcsinh", top,
                                            left, height, width)
                with watch(f"{SPLIT}normalise + resize"):
                    normalise_resize(stretched, low, high, p.nan_fill, 0, 0, height, width, out[0])
            n += len(kept)
    return {stage: 1e3 * value / n for stage, value in watch.seconds.items()}


def _rate(run: Callable[[], object], n: int, repeats: int = 2) -> float:
    """Best of ``repeats`` timed passes of ``run()`` over ``n`` galaxies, after one warm-up batch inside ``run``."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = max(best, n / (time.perf_counter() - start))
    return best


def _onnx_rate(session: PackageSession, images: np.ndarray, ids: list[str], batch: int, samples: int,
               repeats: int = 2) -> float:
    session.predict(images[:batch], ids[:batch], samples)

    def run() -> None:
        for start in range(0, len(images), batch):
            session.predict(images[start : start + batch], ids[start : start + batch], samples)

    return _rate(run, len(images), repeats)


def _interleaved_pairs(runs: dict[str, tuple[Callable[[], float], Callable[[], float]]],
                       passes: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per variant, ``passes`` (model-only, end-to-end) rates, each pair measured back to back, the order alternating
    between passes and the variants interleaved, so that a slow spell of a shared machine lands on both sides of a
    ratio rather than on one."""
    pairs: dict[str, tuple[list[float], list[float]]] = {variant: ([], []) for variant in runs}
    for i in range(passes):
        for variant, (model_only, end_to_end) in runs.items():
            if i % 2 == 0:
                model_rate, e2e_rate = model_only(), end_to_end()
            else:
                e2e_rate, model_rate = end_to_end(), model_only()
            pairs[variant][0].append(model_rate)
            pairs[variant][1].append(e2e_rate)
    return pairs


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


def _print_timeline(timeline: Timeline, width: int = 72) -> None:
    """Each thread's busy time as a bar over the run, then busy seconds and overlaps per stage."""
    stages = [s for s in timeline.stages if s.name != "arrived"]  # spans between the writer's receipts, not work
    start = min(s.start for s in stages)
    wall = max(s.end for s in stages) - start
    rows: dict[tuple[str, str], list[str]] = {}
    for stage in sorted(stages, key=lambda s: (s.name != "prepare", s.name, s.thread)):
        row = rows.setdefault((stage.name, stage.thread), [" "] * width)
        first = int((stage.start - start) / wall * width)
        last = max(first + 1, int((stage.end - start) / wall * width))
        for i in range(first, min(last, width)):
            row[i] = "#"
    threads = len({s.thread for s in timeline.stages if s.name == "prepare"})
    print(f"\nper-stage timeline of the fp32 end-to-end run with preparing threads ({threads} used; {wall:.2f} s, "
          "'#' = busy)")
    for (name, thread), row in rows.items():
        print(f"  {name:8s} {thread:12s} |{''.join(row)}|")
    print(f"  busy: prepare {timeline.busy_seconds('prepare'):.2f} thread-s, model "
          f"{timeline.busy_seconds('model'):.2f} s, columns {timeline.busy_seconds('columns'):.2f} s; "
          f"prepare during model "
          f"{timeline.overlap_seconds('prepare', 'model'):.2f} s, columns during model "
          f"{timeline.overlap_seconds('columns', 'model'):.2f} s")


def _cli_seconds(release: Path, package: Path, out: Path, args: argparse.Namespace) -> float:
    """Wall seconds of ``zoobot-pipeline score`` for the fp32 job in a fresh process."""
    command = [sys.executable, "-m", "zoobot_pipeline.cli", "score", "--release", str(release), "--model",
               str(package), "--out", str(out), "--batch-size", str(args.batch), "--mc-samples", str(args.samples),
               "--device", args.device, "--overwrite", "--quiet"]
    if args.prep_workers is not None:
        command += ["--prep-workers", str(args.prep_workers)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start


def _ray_rates(release: Path, package_dir: Path, tmp: Path, args: argparse.Namespace, n: int) -> dict[str, float]:
    """The fp32 job on Ray Data on this machine: Ray started beforehand (excluded), then by the run (included)."""
    import ray

    options = {"batch_size": args.batch, "mc_samples": args.samples, "device": args.device, "threads": args.threads,
               "use_ray": True, "overwrite": True, "progress": False}
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        score_release(release, package_dir, tmp / "catalogue-ray", **options)
        excluded = n / (time.perf_counter() - start)
    finally:
        ray.shutdown()
    start = time.perf_counter()
    score_release(release, package_dir, tmp / "catalogue-ray", **options)
    included = n / (time.perf_counter() - start)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        start = time.perf_counter()
        result = score_release(release, package_dir, tmp / "catalogue-ray", **options, ray_address=cluster.address,
                               workers=2)
        two_nodes = n / (time.perf_counter() - start)
    finally:
        cluster.shutdown()
    chunks = sorted(result.chunks_by_node.values())
    print(f"two-node ray.cluster_utils cluster on this machine: chunks per node {chunks}, {two_nodes:.1f} galaxies/s"
          f" (the nodes share this machine's cores: correctness, not speed)")
    return {"Ray Data fp32, start-up excluded": excluded, "Ray Data fp32, start-up included": included,
            "Ray Data fp32, two local nodes": two_nodes}


def _measure(architecture: str, release: Path, tmp: Path, args: argparse.Namespace, torch_device: str) -> None:
    preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
    checkpoint = tmp / f"model-{architecture}"
    if not (checkpoint / "checkpoint.json").exists():
        start = time.perf_counter()
        model_config = ModelConfig.from_preprocessing(preprocessing, architecture=architecture)
        pretrain(release, release / "votes.parquet", checkpoint, model_config,
                 TrainingConfig(epochs=args.epochs, batch_size=32, augmentation=None), preprocessing)
        print(f"trained {architecture} at {args.size} px for {args.epochs} epochs in "
              f"{time.perf_counter() - start:.0f} s")
    variants = ["int8"] + (["fp16"] if args.device != "cpu" else [])
    start = time.perf_counter()
    package_dir = tmp / f"package-{architecture}"
    package = ModelPackage.open(export_package(checkpoint, package_dir, mc_samples=args.samples, variants=variants,
                                               calibration_release=release, overwrite=True))
    print(f"exported {architecture} with {', '.join(variants)} in {time.perf_counter() - start:.0f} s")
    images, ids, prep_rate = _prepare(release, package.preprocessing)
    n = len(images)
    rates: dict[str, float] = {"cut + preprocess (1 core)": prep_rate}
    sessions = {v: PackageSession(package, variant=v, device=args.device, threads=args.threads)
                for v in ("fp32", *variants)}
    print(f"onnxruntime providers: {sessions['fp32'].providers[0]}; {n} galaxies, batch {args.batch}")
    rates["onnx fp32 S=1"] = _onnx_rate(sessions["fp32"], images, ids, args.batch, 1)
    for variant, session in sessions.items():
        rates[f"onnx {variant} S={args.samples}"] = _onnx_rate(session, images, ids, args.batch, args.samples)
    rates[f"torch eager S={args.samples}"] = _torch_rate(checkpoint, images, args.batch, args.samples, torch_device)
    workers = default_prep_workers(args.device) if args.prep_workers is None else args.prep_workers
    other = 1 if workers == 0 else 0

    def end_to_end(variant: str, workers_: int, recorded: Timeline | None = None) -> float:
        start = time.perf_counter()
        score_release(release, package_dir, tmp / f"catalogue-{variant}", batch_size=args.batch,
                      mc_samples=args.samples, device=args.device, threads=args.threads, variant=variant,
                      prep_workers=workers_, overwrite=True, progress=False, timeline=recorded)
        return n / (time.perf_counter() - start)

    def model_only(variant: str) -> float:
        return _onnx_rate(sessions[variant], images, ids, args.batch, args.samples, repeats=1)

    timelines: list[Timeline] = []

    def end_to_end_fp32() -> float:
        timelines.append(Timeline())
        return end_to_end("fp32", workers, timelines[-1])

    runs = {"fp32": (lambda: model_only("fp32"), end_to_end_fp32),
            "int8": (lambda: model_only("int8"), lambda: end_to_end("int8", workers))}
    if args.cli:  # the library's fp32 run against the CLI's, back to back like the others
        runs["cli"] = (lambda: end_to_end("fp32", workers),
                       lambda: n / _cli_seconds(release, package_dir, tmp / "catalogue-cli", args))
    pairs = _interleaved_pairs(runs, args.passes)
    cli_pairs = pairs.pop("cli", None)
    timeline = timelines[-1]
    for variant, (_, e2e_rates) in pairs.items():
        rates[f"end to end {variant} S={args.samples}"] = float(np.median(e2e_rates))
    rates[f"end to end fp32, {other} prep threads S={args.samples}"] = end_to_end("fp32", other)
    if cli_pairs is not None:
        rates[f"CLI end to end fp32 S={args.samples}"] = float(np.median(cli_pairs[1]))
    if args.ray:
        rates.update(_ray_rates(release, package_dir, tmp, args, n))

    print(f"\n{architecture} @ {args.size} px, S={args.samples}, prep workers {workers}")
    print(f"{'path':36s} {'galaxies/s':>11s}")
    for name, rate in rates.items():
        print(f"{name:36s} {rate:11.1f}")
    s = args.samples
    print("\nratios (same run, same batches)")
    print(f"  S={s} / S=1 cost (onnx fp32):          {rates['onnx fp32 S=1'] / rates[f'onnx fp32 S={s}']:.3f}")
    for variant, (model_rates, e2e_rates) in pairs.items():
        ratios = np.array(e2e_rates) / np.array(model_rates)
        print(f"  end to end / model-only ({variant}):       {np.median(ratios):.3f}  (median of {len(ratios)} "
              f"interleaved pairs: {', '.join(f'{r:.3f}' for r in ratios)}; model-only "
              f"{', '.join(f'{r:.1f}' for r in model_rates)}/s)")
    alternative = rates[f"end to end fp32, {other} prep threads S={s}"] / rates[f"onnx fp32 S={s}"]
    print(f"  end to end, {other} prep threads / model-only (fp32): {alternative:.3f}")
    print(f"  int8 / fp32 (model-only):             {rates[f'onnx int8 S={s}'] / rates[f'onnx fp32 S={s}']:.3f}")
    print(f"  onnx fp32 / torch eager:              {rates[f'onnx fp32 S={s}'] / rates[f'torch eager S={s}']:.3f}")
    if cli_pairs is not None:
        ratios = np.array(cli_pairs[1]) / np.array(cli_pairs[0])
        print(f"  CLI / library end to end (fp32):      {np.median(ratios):.3f}  (median of {len(ratios)} interleaved "
              f"pairs: {', '.join(f'{r:.3f}' for r in ratios)}; library "
              f"{', '.join(f'{r:.1f}' for r in cli_pairs[0])}/s)")
    if args.ray:
        for when in ("excluded", "included"):
            ray_ratio = rates[f"Ray Data fp32, start-up {when}"] / rates[f"end to end fp32 S={s}"]
            print(f"  Ray Data / in-process (start-up {when}): {ray_ratio:.3f}")
    for variant in variants:
        accuracy = package.meta["variants"][variant]["accuracy"]
        print(f"  {variant} vs fp32: mean |diff| of {accuracy['quantity']} {accuracy['mean_abs_diff']:.4f}, "
              f"max {accuracy['max_abs_diff']:.4f} on {accuracy['n_galaxies']} held-out galaxies")
    _print_timeline(timeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, help="score this release instead of simulating one")
    parser.add_argument("--galaxies", type=int, default=800)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--architectures", default="efficientnet_b0", help="comma-separated timm names")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the release, models and catalogues here (default: a "
                        "temporary directory); a release or model already there is reused")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="interleaved (model-only, end-to-end) pairs per "
                        "variant; the ratios printed are their medians")
    parser.add_argument("--prep-workers", type=int, default=None,
                        help="threads cutting and preprocessing (default: score's, 0 on a CPU device)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--torch-device", choices=["cpu", "cuda"], help="default: cuda when --device is a GPU")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime/torch intra-op threads")
    parser.add_argument("--cli", action="store_true", help="also time `zoobot-pipeline score` in a fresh process")
    parser.add_argument("--ray", action="store_true", help="also time the fp32 job on Ray Data on this machine")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, got {args.passes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_device = args.torch_device or ("cpu" if args.device == "cpu" else "cuda")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.work or Path(tmp_name)
        release = args.release or tmp / "release"
        if not (release / "release.json").exists():
            from zoobot_pipeline.data.synthetic.simulate import simulate_release

            simulate_release(release, args.galaxies, args.tiles, seed=1, progress=False)
        _stage_profile(release, PreprocessingConfig.gz_decals(input_size=args.size))  # loads the kernels
        profile = _stage_profile(release, PreprocessingConfig.gz_decals(input_size=args.size))
        print(f"cut + preprocess per stage, one core, ms per galaxy ({args.size} px, gz_decals):")
        for stage, ms in profile.items():
            if not stage.startswith(SPLIT):
                print(f"  {stage:38s} {ms:7.3f}")
        total = sum(ms for stage, ms in profile.items() if not stage.startswith(SPLIT))
        print(f"  {'total':38s} {total:7.3f}  ({1e3 / total:.0f} galaxies/s)")
        for stage, ms in profile.items():
            if stage.startswith(SPLIT):
                print(f"  ({stage[len(SPLIT):]}, per window apart: {ms:.3f})")
        for architecture in args.architectures.split(","):
            _measure(architecture, release, tmp, args, torch_device)


if __name__ == "__main__":
    main()
