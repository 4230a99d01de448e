from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.io import file_sha256
from zoobot_pipeline.models import ModelConfig, TrainingConfig, get_backend, read_checkpoint_json
from zoobot_pipeline.models import load_checkpoint as load_any_checkpoint
from zoobot_pipeline.models.torch.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.schemas import get_schema

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)


def _model(architecture: str = "test_efficientnet", **kwargs):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_preprocessing(PREPROCESSING, architecture=architecture, **kwargs))


@pytest.mark.parametrize("architecture", ["test_efficientnet", "test_convnext", "test_resnet"])
def test_forward_gives_concentrations_in_range(architecture):
    model = _model(architecture).eval()
    with torch.no_grad():
        out = model(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, get_schema("decals_dr5").n_answers)
    assert torch.all(out > 1) and torch.all(out < 101)


@pytest.mark.parametrize("architecture", ["efficientnet_b0", "convnext_nano", "resnet18"])
def test_named_architectures_build(architecture):
    model = _model(architecture).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, model.schema.n_answers)


def test_mc_samples_differ_and_eval_forward_is_deterministic():
    model = _model().eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        samples = model.mc_forward(x, mc_samples=8)
        features = model.encoder(x)
    assert samples.shape == (3, 8, model.schema.n_answers)
    assert not torch.allclose(samples[:, 0], samples[:, 1])
    assert torch.all(samples > 1) and torch.all(samples < 101)
    assert torch.equal(model.head(features), model(x))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, monkeypatch):
    model = _model().eval()
    x = torch.rand(2, 3, 32, 32)
    directory = save_checkpoint(model, tmp_path / "ckpt", PREPROCESSING, TrainingConfig(), {"best_val_loss": 1.5})

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = load_checkpoint(directory)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint.json", WEIGHTS_FILE]
    assert not list(tmp_path.glob(".tmp-*"))
    meta = read_checkpoint_json(directory)
    assert meta["label_cols"] == model.schema.label_cols
    assert PreprocessingConfig.model_validate(meta["preprocessing"]) == PREPROCESSING
    assert meta["framework"]["name"] == "torch" and meta["metrics"]["best_val_loss"] == 1.5
    assert isinstance(load_any_checkpoint(directory), type(model))
    assert get_backend("torch").name == "torch"


def test_checkpoint_overwrite_is_whole_and_tampering_is_detected(tmp_path: Path):
    first, second = _model(), _model(dropout_rate=0.3)
    save_checkpoint(first, tmp_path / "ckpt", PREPROCESSING)
    save_checkpoint(second, tmp_path / "ckpt", PREPROCESSING)
    assert load_checkpoint(tmp_path / "ckpt").config.dropout_rate == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with open(tmp_path / "ckpt" / WEIGHTS_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(tmp_path / "ckpt")


def test_framework_free_modules_do_not_import_torch():
    code = "import sys, zoobot_pipeline.models, zoobot_pipeline.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoint_with_the_old_part_names_loads_into_encoder_and_head(tmp_path: Path):
    model = _model().eval()
    directory = save_checkpoint(model, tmp_path / "ckpt", PREPROCESSING, TrainingConfig())
    weights = load_file(str(directory / WEIGHTS_FILE))
    old_prefix = {"encoder": "backbone", "head": "dirichlet_head"}
    old_names = {f"{old_prefix[part]}.{rest}": tensor
                 for (part, rest), tensor in ((name.split(".", 1), tensor) for name, tensor in weights.items())}
    assert all(name.startswith(("backbone.", "dirichlet_head.")) for name in old_names)
    save_file(old_names, str(directory / WEIGHTS_FILE))
    meta = read_checkpoint_json(directory)
    meta["weights"]["sha256"] = file_sha256(directory / WEIGHTS_FILE)
    (directory / "checkpoint.json").write_text(json.dumps(meta))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(directory)(x), model(x))
