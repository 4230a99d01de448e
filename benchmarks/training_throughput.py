"""Training throughput of the PyTorch backend (images/s), and the cost of MC-dropout samples at inference.

Run: .venv/bin/python benchmarks/training_throughput.py [--architecture efficientnet_b0] [--size 224] [--device auto]
     [--ray-workers 1 2]

Times ``train_one_epoch`` (the function every training path runs) over in-memory random images with random vote
counts, so cutting and preprocessing are excluded: NCHW and channels_last fp32 side by side with ``--precision bf16``
(CPU and CUDA) and, on CUDA, ``--precision fp16`` (autocast + gradient scaler); ``--compile`` adds a torch.compile row.
Then inference: encoder + head with S=1 against S=5 MC-dropout samples (dropout only in the head). With
``--ray-workers``, the same epoch runs as a Ray Train job (DDP, gloo on CPU) with each worker count, one CPU per
worker: images/s over all workers.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.models.torch.train import (
    compile_encoder,
    make_grad_scaler,
    make_optimizer,
    resolve_device,
    schema_loss,
    train_one_epoch,
)
from zoobot_pipeline.schemas import get_schema


def _loader(n: int, size: int, n_answers: int, batch: int, channels_last: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    votes = torch.randint(0, 10, (n, n_answers), generator=generator).float()
    return DataLoader(TensorDataset(images, votes), batch_size=batch)


def _train_rate(config: ModelConfig, device: torch.device, batch: int, batches: int, channels_last: bool,
                precision: str, compiled: bool = False) -> float:
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        compile_encoder(model)
    optimizer = make_optimizer(model, TrainingConfig())
    options = {"precision": precision, "scaler": make_grad_scaler(precision, device)}
    warm = _loader(batch * (2 if compiled else 1), config.input_size, model.schema.n_answers, batch, channels_last)
    timed = _loader(batch * batches, config.input_size, model.schema.n_answers, batch, channels_last)
    # train_one_epoch moves every batch to channels_last on the device: the NCHW row times that copy too
    train_one_epoch(model, warm, optimizer, None, schema_loss(model.schema), device, **options)
    _sync(device)
    start = time.perf_counter()
    train_one_epoch(model, timed, optimizer, None, schema_loss(model.schema), device, **options)
    _sync(device)
    return batch * batches / (time.perf_counter() - start)


@torch.no_grad()
def _mc_cost(config: ModelConfig, device: torch.device, batch: int, repeats: int) -> tuple[float, float]:
    model = build_model(config).to(device).eval()
    images = torch.rand(batch, 3, config.input_size, config.input_size, device=device)

    def run(samples: int) -> float:
        model.mc_forward(images, samples)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model.mc_forward(images, samples)
        _sync(device)
        return (time.perf_counter() - start) / repeats

    return run(1), run(5)


def _ray_worker(config: dict) -> dict:
    import ray.train
    from ray.train.torch import get_device, prepare_model

    device = get_device()
    model = prepare_model(build_model(config["model"]).to(device, memory_format=torch.channels_last))
    optimizer = make_optimizer(model, TrainingConfig())
    schema = get_schema(config["model"].schema_name)
    loss = schema_loss(schema)
    world = ray.train.get_context().get_world_size()
    per_worker = config["batch"] // world
    size = config["model"].input_size
    warm = _loader(per_worker, size, schema.n_answers, per_worker, True)
    timed = _loader(per_worker * config["batches"], size, schema.n_answers, per_worker, True)
    train_one_epoch(model, warm, optimizer, None, loss, device)
    start = time.perf_counter()
    train_one_epoch(model, timed, optimizer, None, loss, device)
    return {"seconds": time.perf_counter() - start, "images": per_worker * config["batches"] * world}


def _ray_train_rate(config: ModelConfig, workers: int, batch: int, batches: int) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(_ray_worker, train_loop_config={"model": config, "batch": batch, "batches": batches},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="throughput-ray-")))
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        metrics = trainer.fit().return_value
    finally:
        ray.shutdown()
    return metrics["images"] / metrics["seconds"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ray-workers", type=int, nargs="*", default=[], help="also time Ray Train with N workers")
    parser.add_argument("--compile", action="store_true", help="also time channels_last fp32 with torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = ModelConfig(architecture=args.architecture, input_size=args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.architecture} at {args.size} px, batch {args.batch}, {args.batches} timed batches, on {name}")

    variants = [("NCHW fp32", False, "fp32", False), ("channels_last fp32", True, "fp32", False),
                ("channels_last bf16 autocast", True, "bf16", False)]
    if device.type == "cuda":
        variants.append(("channels_last fp16 autocast", True, "fp16", False))
    if args.compile:
        variants.append(("channels_last fp32 compiled", True, "fp32", True))
    rates = {}
    for label, channels_last, precision, compiled in variants:
        rates[label] = _train_rate(config, device, args.batch, args.batches, channels_last, precision, compiled)
        print(f"  train {label:<28} {rates[label]:8.1f} images/s ({rates[label] / rates['NCHW fp32']:.2f}x NCHW fp32, "
              f"{rates[label] / rates.get('channels_last fp32', rates[label]):.2f}x channels_last fp32)")

    one, five = _mc_cost(config, device, args.batch, max(2, args.batches))
    print(f"  inference, encoder once + head: S=1 {args.batch / one:8.1f} images/s, S=5 {args.batch / five:8.1f} "
          f"images/s, cost ratio S=5/S=1 {five / one:.3f}")
    for workers in args.ray_workers:
        rates[f"Ray Train, {workers} workers"] = rate = _ray_train_rate(config, workers, args.batch, args.batches)
        print(f"  train Ray Train, {workers} CPU worker(s), DDP {rate:8.1f} images/s "
              f"({rate / rates['NCHW fp32']:.2f}x in-process NCHW fp32)")
    print(f"  summary: {np.round(list(rates.values()), 1).tolist()} images/s")


if __name__ == "__main__":
    main()
