from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.models import FinetuneConfig, ModelConfig
from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
from zoobot_pipeline.models.torch.finetune import encoder_blocks, finetune_loss, finetune_param_groups
from zoobot_pipeline.models.torch.job import build_finetune_model
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.schemas import get_schema

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)


def _checkpoint(tmp_path: Path, architecture: str) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture=architecture))
    return save_checkpoint(model, tmp_path / architecture, PREPROCESSING)


@pytest.mark.parametrize(("architecture", "n_blocks"), [("test_efficientnet", 2), ("test_convnext", 3),
                                                         ("test_resnet", 2)])
def test_frozen_parameters_get_no_gradient_and_lrs_decay(tmp_path: Path, architecture, n_blocks):
    config = FinetuneConfig(task="classification", label_columns=("bar",), n_blocks=n_blocks)
    model = build_finetune_model(_checkpoint(tmp_path, architecture), config, class_names=["no", "yes"]).train()
    blocks = encoder_blocks(model.encoder)
    unfrozen = {id(p) for block in blocks[:n_blocks] for p in block.parameters()}
    loss = finetune_loss(model, model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 1, 0]))
    loss.backward()
    for p in model.encoder.parameters():
        assert (p.grad is not None) == (id(p) in unfrozen)
    assert all(p.grad is not None for p in model.head.parameters())
    assert not any(m.training for m in blocks[-1].children())
    assert all(m.training for block in blocks[:n_blocks] for m in block.children())

    groups = finetune_param_groups(model, lr=1e-3, lr_decay=0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3] + [1e-3 * 0.5**i for i in range(n_blocks)])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    torch.optim.AdamW(groups)


def test_frozen_by_default_regression_and_new_tree(tmp_path: Path):
    checkpoint = _checkpoint(tmp_path, "test_resnet")
    regression = build_finetune_model(checkpoint, FinetuneConfig(task="regression", label_columns=("r50",)))
    assert not any(p.requires_grad for p in regression.encoder.parameters())
    x = torch.rand(3, 3, 32, 32)
    assert finetune_loss(regression, regression(x), torch.rand(3)).ndim == 0
    assert len(finetune_param_groups(regression, lr=1e-3)) == 1

    gz2 = get_schema("gz2")
    tree = build_finetune_model(checkpoint, FinetuneConfig(task="dirichlet", schema_name="gz2")).eval()
    with torch.no_grad():
        out = tree(x)
    assert out.shape == (3, gz2.n_answers) and torch.all(out > 1)
    assert torch.isfinite(finetune_loss(tree, out, torch.randint(0, 5, out.shape)))


def test_bad_requests_are_errors(tmp_path: Path):
    checkpoint = _checkpoint(tmp_path, "test_resnet")
    with pytest.raises(ValueError, match="2 class names"):
        build_finetune_model(checkpoint, FinetuneConfig(task="classification", label_columns=("bar",)), ["only"])
    with pytest.raises(ValueError, match="schema_name"):
        FinetuneConfig(task="dirichlet")
    with pytest.raises(ValueError, match="exactly one label column"):
        FinetuneConfig(task="classification", label_columns=("a", "b"))
    with pytest.raises(ValueError, match="n_blocks"):
        build_finetune_model(checkpoint, FinetuneConfig(task="regression", label_columns=("r50",), n_blocks=99))
