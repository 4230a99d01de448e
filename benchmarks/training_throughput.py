"""Training throughput of the PyTorch backend (images/s), and the cost of MC-dropout samples at inference.

Run: .venv/bin/python benchmarks/training_throughput.py [--architecture efficientnet_b0] [--size 224] [--device auto]

Times ``train_one_epoch`` (the function every training path runs) over in-memory random images with random vote
counts, so cutting and preprocessing are excluded: NCHW and channels_last side by side, plus bf16 autocast on CUDA.
Then inference: encoder + head with S=1 against S=5 MC-dropout samples (dropout only in the head).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.models.torch.train import make_optimizer, resolve_device, schema_loss, train_one_epoch


def _loader(n: int, size: int, n_answers: int, batch: int, channels_last: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    votes = torch.randint(0, 10, (n, n_answers), generator=generator).float()
    return DataLoader(TensorDataset(images, votes), batch_size=batch)


def _train_rate(config: ModelConfig, device: torch.device, batch: int, batches: int, channels_last: bool,
                autocast: bool) -> float:
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainingConfig())
    warm = _loader(batch, config.input_size, model.schema.n_answers, batch, channels_last)
    timed = _loader(batch * batches, config.input_size, model.schema.n_answers, batch, channels_last)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        train_one_epoch(model, warm, optimizer, None, schema_loss(model.schema), device)
        _sync(device)
        start = time.perf_counter()
        train_one_epoch(model, timed, optimizer, None, schema_loss(model.schema), device)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = ModelConfig(architecture=args.architecture, input_size=args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.architecture} at {args.size} px, batch {args.batch}, {args.batches} timed batches, on {name}")

    variants = [("NCHW fp32", False, False), ("channels_last fp32", True, False)]
    if device.type == "cuda":
        variants.append(("channels_last bf16 autocast", True, True))
    rates = {}
    for label, channels_last, autocast in variants:
        rates[label] = _train_rate(config, device, args.batch, args.batches, channels_last, autocast)
        print(f"  train {label:<28} {rates[label]:8.1f} images/s "
              f"({rates[label] / rates['NCHW fp32']:.2f}x NCHW fp32)")

    one, five = _mc_cost(config, device, args.batch, max(2, args.batches))
    print(f"  inference, encoder once + head: S=1 {args.batch / one:8.1f} images/s, S=5 {args.batch / five:8.1f} "
          f"images/s, cost ratio S=5/S=1 {five / one:.3f}")
    print(f"  summary: {np.round(list(rates.values()), 1).tolist()} images/s")


if __name__ == "__main__":
    main()
