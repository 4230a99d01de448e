"""Ray run directories: removed after a successful run unless ``keep_run_dir`` (kept: see the killed-worker runs of
test_torch_ray.py and test_tf_ray.py); never after a failure; only the run's own directory (and the storage root only
when the run created it and left it empty)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_checks import tree

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.models import (
    DistributedConfig,
    ModelConfig,
    TrainingConfig,
    pretrain,
    ray_train,
    read_checkpoint_json,
)
from zoobot_pipeline.models.backend import get_backend
from zoobot_pipeline.models.job import pretrain_job
from zoobot_pipeline.models.torch import distributed as torch_ray

PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(lr=3e-3, epochs=1, batch_size=16, patience=5, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 24, 1, tile_size=512, seed=0, labelled_fraction=1.0)


def _run_dirs(storage: Path) -> list[Path]:
    return sorted(p for p in storage.glob("pretrain-*") if p.is_dir())


def test_default_run_directory_is_removed_after_success(local_ray, release, tmp_path):
    out = pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL, TRAINING, PREPROCESSING, workers=2)
    assert read_checkpoint_json(out)["metrics"]["world_size"] == 2
    assert not Path(f"{out}.ray").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_user_storage_root_keeps_everything_but_the_run(local_ray, release, tmp_path):
    storage = tmp_path / "storage"
    (storage / "pretrain-earlier").mkdir(parents=True)
    (storage / "pretrain-earlier" / "state.json").write_text("{}")
    (storage / "notes.txt").write_text("mine")
    before = tree(storage)
    pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL, TRAINING, PREPROCESSING, workers=2,
             storage_path=storage)
    assert tree(storage) == before


def test_a_run_that_fails_in_the_workers_keeps_its_directory(local_ray, release, tmp_path):
    votes = tmp_path / "votes.parquet"
    shutil.copy(release / "votes.parquet", votes)
    job = pretrain_job(release, votes, MODEL, TRAINING, PREPROCESSING)
    votes.unlink()  # planned with the file, gone when the workers read it: every worker raises
    storage = tmp_path / "storage"
    distributed = DistributedConfig(workers=2, max_failures=0, storage_path=str(storage))
    with pytest.raises(Exception, match="votes.parquet"):
        get_backend("torch").train(job, tmp_path / "model", distributed)
    assert _run_dirs(storage), "the failed run's directory was removed"
    assert not (tmp_path / "model").exists()


def test_a_run_that_fails_after_training_keeps_its_checkpoints(local_ray, release, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk gone while writing the best model")

    monkeypatch.setattr(torch_ray, "export_model", fail)
    storage = tmp_path / "storage"
    with pytest.raises(OSError, match="disk gone"):
        pretrain(release, release / "votes.parquet", tmp_path / "model", MODEL, TRAINING, PREPROCESSING, workers=2,
                 storage_path=storage)
    [run] = _run_dirs(storage)
    assert [p for p in run.glob("checkpoint_*") if (p / "training_state.json").is_file()]


def test_remove_run_dir_never_removes_a_root_it_did_not_create_or_that_holds_more(tmp_path):
    storage = tmp_path / "storage"
    (storage / "run-a").mkdir(parents=True)
    (storage / "run-b").mkdir()
    ray_train.remove_run_dir(storage, "run-a", created_root=True)
    assert sorted(p.name for p in storage.iterdir()) == ["run-b"]
    ray_train.remove_run_dir(storage, "run-b", created_root=False)
    assert storage.is_dir() and not any(storage.iterdir())
    ray_train.remove_run_dir(storage, "missing", created_root=True)
    assert not storage.exists()
