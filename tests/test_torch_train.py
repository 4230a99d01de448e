from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.preprocessing import CutoutSizing, PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.models import (
    AugmentationConfig,
    ModelConfig,
    TrainingConfig,
    pretrain,
    read_checkpoint_json,
)
from zoobot_pipeline.models.images import LabelledImages, load_labelled_images, validation_mask
from zoobot_pipeline.models.torch import loop
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.data import GalaxyDataset
from zoobot_pipeline.models.torch.job import TrainingTask
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.models.torch.train import evaluate, schema_loss
from zoobot_pipeline.schemas import get_schema

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


def test_labelled_images_follow_votes(release: Path):
    data = load_labelled_images(release, release / "votes.parquet", get_schema("decals_dr5"), PREPROCESSING)
    assert data.images.shape == (len(data.ids), 3, 32, 32) and data.images.dtype == np.float32
    assert data.targets.shape == (len(data.ids), get_schema("decals_dr5").n_answers)
    assert len(data.ids) + data.n_rejected + data.n_missing == 60
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0


def test_labelled_images_are_cut_as_the_preprocessing_says(release: Path):
    fixed = PREPROCESSING.model_copy(update={"cutout": CutoutSizing(size_px=40, r50_factor=None)})
    data = load_labelled_images(release, release / "votes.parquet", get_schema("decals_dr5"), fixed)
    default = load_labelled_images(release, release / "votes.parquet", get_schema("decals_dr5"), PREPROCESSING)
    opened = Release.open(release)
    expected = {id_str: preprocess(cut.data, fixed, opened.bands)
                for id_str, cut in release_cutouts(opened, data.ids, sizing=CutoutSizing(size_px=40, r50_factor=None))}
    assert all(cut.data.shape[1:] == (40, 40) for _, cut in release_cutouts(opened, data.ids[:3], sizing=fixed.cutout))
    np.testing.assert_array_equal(data.images, np.stack([expected[i] for i in data.ids]))
    common = sorted(set(data.ids) & set(default.ids))
    assert len(common) > 40
    fixed_images = data.images[[data.ids.index(i) for i in common]]
    assert not np.allclose(fixed_images, default.images[[default.ids.index(i) for i in common]], atol=1e-3)


def test_local_pretraining_loss_falls_and_keeps_the_best_checkpoint(release: Path, tmp_path: Path):
    model_config = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
    training = TrainingConfig(lr=3e-3, epochs=5, batch_size=16, patience=5, seed=0,
                              augmentation=AugmentationConfig(crop_scale=(0.9, 1.0)))
    out = pretrain(release, release / "votes.parquet", tmp_path / "ckpt", model_config, training, PREPROCESSING)

    meta = read_checkpoint_json(out)
    history = meta["metrics"]["history"]
    assert 1 <= len(history) <= 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    val_losses = [h["val_loss"] for h in history]
    assert meta["metrics"]["best_val_loss"] == min(val_losses)
    assert meta["metrics"]["best_epoch"] == int(np.argmin(val_losses))
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] <= 60 and meta["metrics"]["world_size"] == 1
    assert meta["kind"] == "pretrained" and not list(tmp_path.glob(".state-*"))

    model = load_checkpoint(out)
    data = load_labelled_images(release, release / "votes.parquet", model.schema, PREPROCESSING)
    val = data.subset(validation_mask(data.ids, training.val_fraction, training.seed))
    loss = evaluate(model, DataLoader(GalaxyDataset(val), batch_size=16), schema_loss(model.schema))
    assert loss == pytest.approx(meta["metrics"]["best_val_loss"], rel=1e-5)


def test_pretraining_rejects_mismatched_input_before_any_work(release: Path, tmp_path: Path):
    model_config = ModelConfig(architecture="test_resnet", input_size=64)
    with pytest.raises(ValueError, match="preprocessing gives"):
        pretrain(release, release / "votes.parquet", tmp_path / "ckpt", model_config, TrainingConfig(), PREPROCESSING)
    assert not (tmp_path / "ckpt").exists()


def test_training_stops_early_and_keeps_the_best_not_the_last(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet"))
    n_answers = model.schema.n_answers
    rng = np.random.default_rng(0)
    data = LabelledImages([str(i) for i in range(16)], rng.random((16, 3, 32, 32), dtype=np.float32),
                          rng.integers(0, 10, (16, n_answers)), 0, 0)
    task = TrainingTask(model, data, schema_loss(model.schema), None, {})
    scripted = iter([3.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    states = []

    def fake_loss_sum(model, loader, loss_fn, device=None):
        states.append(copy.deepcopy(model.state_dict()))
        return next(scripted), 1

    monkeypatch.setattr(loop, "loss_sum", fake_loss_sum)
    config = TrainingConfig(epochs=6, patience=2, batch_size=4, val_fraction=0.5, augmentation=None)
    session = loop.LocalSession(tmp_path / "ckpt", torch.device("cpu"))
    summary = loop.train_task(task, config, PREPROCESSING, session)
    assert [h["val_loss"] for h in summary["history"]] == [3.0, 1.0, 2.0, 4.0]
    meta = read_checkpoint_json(tmp_path / "ckpt")
    assert meta["metrics"]["best_epoch"] == 1 and meta["metrics"]["best_val_loss"] == 1.0
    loaded = load_checkpoint(tmp_path / "ckpt")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, states[1][name], rtol=0, atol=0)
