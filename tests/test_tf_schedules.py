"""The TensorFlow backend's learning-rate schedules step for step against torch's schedulers (same settings)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
keras = pytest.importorskip("keras")

from zoobot_pipeline.models.config import TrainingConfig  # noqa: E402
from zoobot_pipeline.models.tensorflow.train import Plateau, learning_rate_schedule  # noqa: E402

pytestmark = pytest.mark.tensorflow


def _torch_lrs(schedule: str, lr: float, total: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total) if schedule == "onecycle"
                 else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total))
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_per_step_schedules_follow_torch(schedule):
    total = 37
    ours = learning_rate_schedule(TrainingConfig(schedule=schedule), 3e-3, total)
    got = [float(ours(step)) for step in range(total)]
    np.testing.assert_allclose(got, _torch_lrs(schedule, 3e-3, total), rtol=1e-5, atol=1e-10)


def test_plateau_lowers_the_lr_when_torch_does():
    val_losses = [5.0, 4.0, 4.0, 3.9999, 4.1, 3.0, 3.5, 3.5, 3.5, 3.5]
    optimizer = keras.optimizers.AdamW(learning_rate=1e-2)
    plateau = Plateau([optimizer], factor=0.5, patience=2)
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    torch_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, mode="min", factor=0.5, patience=2)
    ours, theirs = [], []
    for loss in val_losses:
        plateau.step(loss)
        torch_plateau.step(loss)
        ours.append(float(keras.ops.convert_to_tensor(optimizer.learning_rate)))
        theirs.append(reference.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert min(theirs) < 1e-2  # the sequence does lower the LR
