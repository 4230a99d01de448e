from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.models import ModelConfig, TrainingConfig, load_checkpoint, pretrain, read_checkpoint_json
from zoobot_pipeline.models.torch.model import ZoobotModel

PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=3, batch_size=16, patience=5, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


@pytest.fixture(scope="module")
def two_worker_run(local_ray, release, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray-run")
    out = pretrain(release, release / "votes.parquet", root / "model", MODEL, TRAINING, PREPROCESSING, workers=2,
                   storage_path=root / "storage", keep_run_dir=True)  # the tests below read its training state
    return out, root / "storage"


def _training_states(storage: Path) -> dict[int, Path]:
    """Ray checkpoint directories of every run under ``storage``, by the epoch they end."""
    return {json.loads((d / "training_state.json").read_text())["progress"]["epoch"]: d
            for d in storage.glob("*/checkpoint_*") if d.is_dir()}


def test_two_gloo_workers_train_and_export_the_best_model(two_worker_run):
    out, storage = two_worker_run
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["world_size"] == 2 and metrics["resumed_after_epoch"] is None
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in history)
    assert isinstance(load_checkpoint(out), ZoobotModel)

    states = _training_states(storage)
    assert states, "no Ray checkpoint kept"
    kept = next(iter(states.values()))
    assert sorted(p.name for p in kept.iterdir()) == ["model", "optimizer.safetensors", "training_state.json"]
    assert not [p for p in storage.rglob("*") if p.suffix in (".pkl", ".pt", ".pth")]


def test_a_run_resumes_from_a_ray_checkpoint_instead_of_restarting(two_worker_run, release, tmp_path):
    first, storage = two_worker_run
    states = _training_states(storage)
    last = max(states)
    out = pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL,
                   TRAINING.model_copy(update={"epochs": last + 3}), PREPROCESSING, workers=2,
                   storage_path=tmp_path / "storage", resume_from=states[last])
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["resumed_after_epoch"] == last
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(last + 3))
    assert history[: last + 1] == read_checkpoint_json(first)["metrics"]["history"][: last + 1]


def test_a_killed_worker_is_replaced_and_training_continues(local_ray, release, tmp_path):
    import psutil  # vendored by Ray: importable once ray is imported
    storage = tmp_path / "storage"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if any(storage.glob("*/checkpoint_manager_snapshot.json")):  # written once a checkpoint is registered
                for process in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "RayTrainWorker" in " ".join(process.cmdline()):
                            process.kill()
                            killed.append(process.pid)
                            return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    out = pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL,
                   TRAINING.model_copy(update={"epochs": 4}), PREPROCESSING, workers=2, max_failures=1,
                   storage_path=storage)
    killer.join()
    assert killed, "no Ray Train worker process found to kill"
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["resumed_after_epoch"] is not None and metrics["resumed_after_epoch"] >= 0
    assert [h["epoch"] for h in metrics["history"]] == list(range(4))
