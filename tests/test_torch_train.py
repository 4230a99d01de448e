from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("galsim")

from torch.utils.data import DataLoader  # noqa: E402

from zoobot_pipeline.data.preprocessing import PreprocessingConfig  # noqa: E402
from zoobot_pipeline.data.simulate import simulate_release  # noqa: E402
from zoobot_pipeline.models import AugmentationConfig, ModelConfig, TrainingConfig, read_checkpoint_json  # noqa: E402
from zoobot_pipeline.models.torch import train  # noqa: E402
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint  # noqa: E402
from zoobot_pipeline.models.torch.data import (  # noqa: E402
    GalaxyDataset,
    LabelledImages,
    load_labelled_images,
    validation_mask,
)
from zoobot_pipeline.models.torch.model import build_model  # noqa: E402
from zoobot_pipeline.models.torch.train import evaluate, pretrain_local  # noqa: E402
from zoobot_pipeline.schemas import get_schema  # noqa: E402

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


def test_labelled_images_follow_votes(release: Path):
    data = load_labelled_images(release, release / "votes.parquet", get_schema("decals_dr5"), PREPROCESSING)
    assert data.images.shape == (len(data.ids), 3, 32, 32) and data.images.dtype == np.float32
    assert data.votes.shape == (len(data.ids), get_schema("decals_dr5").n_answers)
    assert len(data.ids) + data.n_rejected + data.n_missing == 60
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0


def test_pretrain_local_loss_falls_and_keeps_the_best_checkpoint(release: Path, tmp_path: Path):
    model_config = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
    training = TrainingConfig(lr=3e-3, epochs=5, batch_size=16, patience=5, seed=0,
                              augmentation=AugmentationConfig(crop_scale=(0.9, 1.0)))
    out = pretrain_local(release, release / "votes.parquet", tmp_path / "ckpt", model_config, training, PREPROCESSING)

    meta = read_checkpoint_json(out)
    history = meta["metrics"]["history"]
    assert 1 <= len(history) <= 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    val_losses = [h["val_loss"] for h in history]
    assert meta["metrics"]["best_val_loss"] == min(val_losses)
    assert meta["metrics"]["best_epoch"] == int(np.argmin(val_losses))
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] <= 60

    model = load_checkpoint(out)
    data = load_labelled_images(release, release / "votes.parquet", model.schema, PREPROCESSING)
    val = data.subset(validation_mask(data.ids, training.val_fraction, training.seed))
    loss = evaluate(model, DataLoader(GalaxyDataset(val), batch_size=16), model.schema)
    assert loss == pytest.approx(meta["metrics"]["best_val_loss"], rel=1e-5)


def test_pretrain_local_rejects_mismatched_input(release: Path, tmp_path: Path):
    model_config = ModelConfig(architecture="test_resnet", input_size=64)
    with pytest.raises(ValueError, match="preprocessing gives"):
        pretrain_local(release, release / "votes.parquet", tmp_path / "ckpt", model_config, TrainingConfig(),
                       PREPROCESSING)


def test_fit_stops_early_and_keeps_the_best_not_the_last(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet"))
    n_answers = model.schema.n_answers
    rng = np.random.default_rng(0)
    data = LabelledImages([str(i) for i in range(8)], rng.random((8, 3, 32, 32), dtype=np.float32),
                          rng.integers(0, 10, (8, n_answers)), 0, 0)
    loader = DataLoader(GalaxyDataset(data), batch_size=4)
    scripted = iter([3.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    states = []

    def fake_evaluate(model, loader, schema, device=None):
        states.append(copy.deepcopy(model.state_dict()))
        return next(scripted)

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    history = train.fit(model, loader, loader, TrainingConfig(epochs=6, patience=2, augmentation=None),
                        tmp_path / "ckpt", PREPROCESSING)
    assert [h["val_loss"] for h in history] == [3.0, 1.0, 2.0, 4.0]
    meta = read_checkpoint_json(tmp_path / "ckpt")
    assert meta["metrics"]["best_epoch"] == 1 and meta["metrics"]["best_val_loss"] == 1.0
    loaded = load_checkpoint(tmp_path / "ckpt")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, states[1][name], rtol=0, atol=0)
