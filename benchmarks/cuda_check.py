"""CUDA checks of the PyTorch backend, for a GPU host (run by benchmarks/gpu_check.sh); exits non-zero on failure.

- concentrations on CUDA equal the CPU's for the same weights and inputs (fp32, 1e-4 relative);
- the Dirichlet-Multinomial loss on CUDA equals the CPU's and ``zoobot_pipeline.stats`` (float64, 1e-6 relative);
- MC-dropout head samples on CUDA have the right shape and range and differ between samples;
- training on CUDA through ``train_one_epoch`` lowers the training loss on a fixed batch;
- ``resolve_device("auto")`` picks CUDA.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.models.torch.train import make_optimizer, resolve_device, schema_loss, train_one_epoch
from zoobot_pipeline.stats import dirichlet_multinomial_nll


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    cuda = resolve_device("auto")
    assert cuda.type == "cuda", cuda
    torch.manual_seed(0)
    config = ModelConfig(architecture="efficientnet_b0", input_size=96)
    model = build_model(config).eval()
    images = torch.rand(8, 3, 96, 96)
    with torch.no_grad():
        on_cpu = model(images)
        on_gpu = model.to(cuda)(images.to(cuda)).cpu()
    np.testing.assert_allclose(on_gpu.numpy(), on_cpu.numpy(), rtol=1e-4)
    print(f"forward parity CPU vs {torch.cuda.get_device_name(cuda)}: max rel diff "
          f"{float(((on_gpu - on_cpu).abs() / on_cpu).max()):.2e}")

    schema = model.schema
    votes = torch.randint(0, 15, (64, schema.n_answers), dtype=torch.float64)
    votes[::3, schema.question("bar-dr5").slice] = 0
    alpha = 1 + 100 * torch.rand(64, schema.n_answers, dtype=torch.float64)
    loss_gpu = float(dirichlet_multinomial_loss(votes.to(cuda), alpha.to(cuda), schema))
    reference = float(dirichlet_multinomial_nll(votes.numpy(), alpha.numpy(), schema).sum(axis=1).mean())
    assert abs(loss_gpu - reference) <= 1e-6 * abs(reference), (loss_gpu, reference)
    print(f"loss parity CUDA float64 vs stats: {loss_gpu:.10f} vs {reference:.10f}")

    with torch.no_grad():
        samples = model.mc_forward(images.to(cuda), 5)
    assert samples.shape == (8, 5, schema.n_answers)
    assert bool(((samples > 1) & (samples < 101)).all())
    assert float((samples[:, 0] - samples[:, 1]).abs().max()) > 0, "MC samples identical: dropout is off"
    print("MC head on CUDA: shape, range and sample diversity ok")

    train = DataLoader(TensorDataset(torch.rand(64, 3, 96, 96), torch.randint(0, 20, (64, schema.n_answers)).float()),
                       batch_size=16)
    model = build_model(config).to(cuda)
    optimizer = make_optimizer(model, TrainingConfig(lr=1e-3))
    losses = []
    for _ in range(8):
        total, count = train_one_epoch(model, train, optimizer, None, schema_loss(schema), cuda)
        losses.append(total / count)
    assert losses[-1] < losses[0], losses
    print(f"training on CUDA: training loss {losses[0]:.2f} -> {losses[-1]:.2f} over 8 epochs on a fixed batch")
    print("cuda_check: all passed")


if __name__ == "__main__":
    main()
