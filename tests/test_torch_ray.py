"""Torch training on Ray Train (two gloo CPU workers): a killed worker is replaced and the run resumes from its last
checkpoint, the best model is exported, the training state holds only safetensors and JSON, and a new Ray run resumes
from that state instead of restarting."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray_checks import start_killer, training_states

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.models import ModelConfig, TrainingConfig, load_checkpoint, pretrain, read_checkpoint_json
from zoobot_pipeline.models.torch.model import ZoobotModel

PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=4, batch_size=16, patience=5, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


@pytest.fixture(scope="module")
def killed_run(local_ray, release, tmp_path_factory) -> tuple[Path, Path, list[int]]:
    """Two workers, 4 epochs; one worker is killed once the first checkpoint is registered (max_failures=1); the
    run directory is kept for the tests below."""
    root = tmp_path_factory.mktemp("ray-run")
    storage = root / "storage"
    killer, killed = start_killer(storage)
    out = pretrain(release, release / "votes.parquet", root / "model", MODEL, TRAINING, PREPROCESSING, workers=2,
                   max_failures=1, storage_path=storage, keep_run_dir=True)
    killer.join()
    return out, storage, killed


def test_a_killed_worker_is_replaced_and_two_workers_finish_with_the_best_model(killed_run):
    out, storage, killed = killed_run
    assert killed, "no Ray Train worker process found to kill"
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["world_size"] == 2
    assert metrics["resumed_after_epoch"] is not None and metrics["resumed_after_epoch"] >= 0
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in history)
    assert isinstance(load_checkpoint(out), ZoobotModel)

    states = training_states(storage)
    assert states, "no Ray checkpoint kept"
    for state in states.values():
        assert sorted(p.name for p in state.iterdir()) == ["model", "optimizer.safetensors", "training_state.json"]
    assert not [p for p in storage.rglob("*") if p.suffix in (".pkl", ".pt", ".pth")]


def test_a_run_resumes_from_a_ray_checkpoint_instead_of_restarting(killed_run, release, tmp_path):
    first, storage, _ = killed_run
    states = training_states(storage)
    last = max(states)
    out = pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL,
                   TRAINING.model_copy(update={"epochs": last + 2}), PREPROCESSING, workers=2,
                   storage_path=tmp_path / "storage", resume_from=states[last])
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["resumed_after_epoch"] == last
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(last + 2))
    assert history[: last + 1] == read_checkpoint_json(first)["metrics"]["history"][: last + 1]
