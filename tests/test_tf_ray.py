"""TensorFlow training on Ray Train (two CPU workers, MultiWorkerMirroredStrategy): a killed worker is replaced and
the run resumes from its last checkpoint, the best model is exported, the training state holds only safetensors and
JSON, and a later run (here in this process) resumes from that state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ray_checks import start_killer, training_states

pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
pytest.importorskip("tensorflow")

from zoobot_pipeline.data.preprocessing import PreprocessingConfig  # noqa: E402
from zoobot_pipeline.data.synthetic.simulate import simulate_release  # noqa: E402
from zoobot_pipeline.models import ModelConfig, TrainingConfig, load_checkpoint, pretrain, read_checkpoint_json  # noqa: E402
from zoobot_pipeline.models.tensorflow.loop import shard_order  # noqa: E402

pytestmark = pytest.mark.tensorflow
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=4, batch_size=16, patience=5, augmentation=None, grad_clip=1.0)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


@pytest.fixture(scope="module")
def killed_run(local_ray, release, tmp_path_factory) -> tuple[Path, Path, list[int]]:
    """Two workers, 4 epochs; one worker is killed once the first checkpoint is registered (max_failures=1)."""
    root = tmp_path_factory.mktemp("tf-ray")
    storage = root / "storage"
    killer, killed = start_killer(storage)
    out = pretrain(release, release / "votes.parquet", root / "model", MODEL, TRAINING, PREPROCESSING,
                   framework="tensorflow", workers=2, max_failures=1, storage_path=storage, keep_run_dir=True)
    killer.join()
    return out, storage, killed


def test_a_killed_worker_is_replaced_and_two_workers_finish_with_the_best_model(killed_run):
    out, storage, killed = killed_run
    assert killed, "no Ray Train worker process found to kill"
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["world_size"] == 2 and metrics["n_train"] + metrics["n_val"] == metrics["n_labelled"] > 50
    assert metrics["resumed_after_epoch"] is not None and metrics["resumed_after_epoch"] >= 0
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in history)
    assert read_checkpoint_json(out)["framework"]["name"] == "tensorflow"
    assert load_checkpoint(out).net.count_params() > 0

    states = training_states(storage)
    assert states, "no Ray checkpoint kept"
    for state in states.values():
        assert sorted(p.name for p in state.iterdir()) == ["model", "optimizer.safetensors", "training_state.json"]
    assert not [p for p in storage.rglob("*") if p.suffix in (".pkl", ".pt", ".pth", ".keras", ".h5", ".pb")]


def test_a_later_run_resumes_from_the_ray_training_state(killed_run, release, tmp_path):
    first, storage, _ = killed_run
    states = training_states(storage)
    last = max(states)
    out = pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL,
                   TRAINING.model_copy(update={"epochs": last + 2}), PREPROCESSING, framework="tensorflow",
                   resume_from=states[last])
    metrics = read_checkpoint_json(out)["metrics"]
    assert metrics["resumed_after_epoch"] == last and metrics["world_size"] == 1
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(last + 2))
    assert history[: last + 1] == read_checkpoint_json(first)["metrics"]["history"][: last + 1]


@pytest.mark.parametrize(("n", "world_size"), [(43, 2), (44, 2), (10, 3), (7, 1)])
def test_each_epoch_deals_every_training_row_out_to_the_ranks_evenly(n, world_size):
    shards = [shard_order(n, 5, 2, rank, world_size) for rank in range(world_size)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-n // world_size)
    dealt = np.concatenate(shards)
    assert set(dealt.tolist()) == set(range(n)) and len(dealt) - n < world_size
    assert not np.array_equal(shard_order(n, 5, 3, 0, world_size), shards[0]) or n < 3
