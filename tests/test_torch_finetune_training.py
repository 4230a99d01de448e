from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.models import (
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
    evaluate,
    finetune,
    load_checkpoint,
    predict,
    read_checkpoint_json,
)
from zoobot_pipeline.models.images import load_images
from zoobot_pipeline.models.labels import LabelsError
from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
from zoobot_pipeline.models.torch.finetune import FinetuneModel
from zoobot_pipeline.models.torch.model import build_model

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
TRAINING = TrainingConfig(lr=1e-2, epochs=6, batch_size=16, patience=6, augmentation=None)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0)


@pytest.fixture(scope="module")
def labels(release: Path) -> Path:
    truth = pq.read_table(release / "truth.parquet")
    kind = truth.column("kind").to_pylist()
    table = pa.table({"id_str": truth.column("id_str"),
                      "smooth": ["yes" if k == "smooth" else "no" for k in kind],
                      "r50_arcsec": truth.column("r50_arcsec"), "visibility": truth.column("visibility")})
    pq.write_table(table, release.parent / "labels.parquet")
    return release.parent / "labels.parquet"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet"))
    return save_checkpoint(model, tmp_path_factory.mktemp("base") / "pretrained", PREPROCESSING)


def _history(checkpoint: Path) -> list[dict]:
    return read_checkpoint_json(checkpoint)["metrics"]["history"]


def _loss_falls(checkpoint: Path) -> None:
    history = _history(checkpoint)
    assert len(history) == TRAINING.epochs
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_classification_keeps_the_encoder_frozen_and_round_trips(release, labels, pretrained, tmp_path):
    config = FinetuneConfig(task="classification", label_columns=("smooth",))
    out = finetune(pretrained, release, labels, tmp_path / "clf", config, TRAINING)
    _loss_falls(out)
    meta = read_checkpoint_json(out)
    assert meta["kind"] == "finetuned" and meta["class_names"] == ["no", "yes"]
    assert meta["model"]["architecture"] == "test_resnet" and meta["finetune"]["task"] == "classification"
    assert PreprocessingConfig.model_validate(meta["preprocessing"]) == PREPROCESSING

    model = load_checkpoint(out)
    assert isinstance(model, FinetuneModel) and model.class_names == ("no", "yes")
    base = load_checkpoint(pretrained)
    for name, tensor in base.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[name], tensor, rtol=0, atol=0)

    ids = [f"syn_{i:06d}" for i in range(1, 11)]
    data = load_images(release, ids, np.zeros(10), PREPROCESSING)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "copy", PREPROCESSING))
    x = torch.from_numpy(data.images)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, again(x))
    table = predict(out, release, ids)
    assert table.column_names == ["id_str", "predicted", "p_no", "p_yes"]
    assert table.column("id_str").to_pylist() == data.ids
    np.testing.assert_allclose(table.column("p_yes").to_numpy(), torch.softmax(logits, 1)[:, 1].numpy(), rtol=1e-6)
    scores = evaluate(out, release, labels)
    assert scores["n"] > 40 and 0 <= scores["accuracy"] <= 1 and np.isfinite(scores["loss"])


def test_unfreezing_the_top_block_changes_only_it(release, labels, pretrained, tmp_path):
    config = FinetuneConfig(task="classification", label_columns=("smooth",), n_blocks=1)
    model = load_checkpoint(finetune(pretrained, release, labels, tmp_path / "clf", config,
                                     TRAINING.model_copy(update={"epochs": 2})))
    base = load_checkpoint(pretrained).encoder
    assert not torch.equal(model.encoder.layer4[0].conv1.weight, base.layer4[0].conv1.weight)
    for name, tensor in base.layer3.state_dict().items():
        torch.testing.assert_close(model.encoder.layer3.state_dict()[name], tensor, rtol=0, atol=0)


def test_regression_on_two_columns(release, labels, pretrained, tmp_path):
    config = FinetuneConfig(task="regression", label_columns=("r50_arcsec", "visibility"), n_blocks=1)
    out = finetune(pretrained, release, labels, tmp_path / "reg", config, TRAINING)
    _loss_falls(out)
    table = predict(out, release)
    assert table.column_names == ["id_str", "r50_arcsec", "visibility"]
    assert set(evaluate(out, release, labels)) == {"n", "loss", "rmse"}


def test_dirichlet_head_on_another_tree(pretrained, tmp_path):
    gz2 = simulate_release(tmp_path / "gz2", 60, 1, tile_size=512, seed=0, schema="gz2", labelled_fraction=1.0)
    config = FinetuneConfig(task="dirichlet", schema_name="gz2", n_blocks=1)
    out = finetune(pretrained, gz2, gz2 / "votes.parquet", tmp_path / "tree", config, TRAINING)
    _loss_falls(out)
    assert read_checkpoint_json(out)["schema"]["name"] == "gz2"
    table = predict(out, gz2, ["syn_000001", "syn_000002"])
    assert "smooth-or-featured-gz2_smooth_fraction" in table.column_names
    with pytest.raises(ValueError, match="not in the release"):
        predict(out, gz2, ["syn_000001", "no-such-galaxy"])


def test_from_scratch_trains_every_block(release, labels, tmp_path):
    config = FinetuneConfig(task="classification", label_columns=("smooth",))
    model_config = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
    out = finetune(None, release, labels, tmp_path / "scratch", config, TRAINING.model_copy(update={"epochs": 2}),
                   model_config=model_config, preprocessing=PREPROCESSING)
    model = load_checkpoint(out)
    assert model.n_blocks == 5 and all(p.requires_grad for p in model.encoder.parameters())
    assert read_checkpoint_json(out)["finetune"]["n_blocks"] == "all"


def test_bad_requests_fail_before_any_work(release, labels, pretrained, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(LabelsError, match=r"missing label columns \['colour'\]"):
        finetune(pretrained, release, labels, out, FinetuneConfig(task="regression", label_columns=("colour",)))
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("id_str,smooth\nnot_here,yes\nnor_here,no\n")
    with pytest.raises(LabelsError, match="none of the 2 labelled ids"):
        finetune(pretrained, release, elsewhere, out,
                 FinetuneConfig(task="classification", label_columns=("smooth",)))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            finetune(pretrained, release, labels, out,
                     FinetuneConfig(task="classification", label_columns=("smooth",)), gpus_per_worker=1)
    assert not out.exists()


def test_tree_predictions_carry_concentrations_consistent_with_fractions(pretrained, release):
    table = predict(pretrained, release, ["syn_000001", "syn_000002"])
    assert table["id_str"].to_pylist() == ["syn_000001", "syn_000002"]
    root = [f"smooth-or-featured-dr5_{answer}" for answer in ("smooth", "featured-or-disk", "artifact")]
    concentrations = np.stack([table[f"{c}_concentration"].to_numpy() for c in root], axis=1)
    assert np.all((concentrations > 1) & (concentrations < 101))
    np.testing.assert_allclose(table["smooth-or-featured-dr5_smooth_fraction"].to_numpy(),
                               concentrations[:, 0] / concentrations.sum(axis=1))
