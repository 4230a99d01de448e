"""Training options of the torch backend: mixed precision, gradient clipping, the plateau schedule, torch.compile,
and their command-line options."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from zoobot_pipeline.cli import app
from zoobot_pipeline.cli._options import TRAINING_PRECISIONS, TRAINING_SCHEDULES
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.errors import UnavailableError
from zoobot_pipeline.export import ModelPackage, export_package
from zoobot_pipeline.models import ModelConfig, TrainingConfig, pretrain, read_checkpoint_json
from zoobot_pipeline.models.config import PRECISIONS, SCHEDULES
from zoobot_pipeline.models.images import LabelledImages
from zoobot_pipeline.models.torch import loop
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint
from zoobot_pipeline.models.torch.job import TrainingTask
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.models.torch.state import TrainingProgress, load_training_state, save_training_state
from zoobot_pipeline.models.torch.train import (
    check_precision,
    make_optimizer,
    make_scheduler,
    schema_loss,
    step_epoch_schedule,
    train_one_epoch,
)

torch.set_num_threads(2)
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
runner = CliRunner()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return simulate_release(tmp_path_factory.mktemp("sim"), 60, 1, tile_size=512, seed=0, labelled_fraction=1.0)


def _batches(n: int, n_answers: int, batch: int, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=generator)
    votes = torch.randint(0, 10, (n, n_answers), generator=generator).float()
    return DataLoader(TensorDataset(images, votes), batch_size=batch)


# --- precision -------------------------------------------------------------------------------------------------------


def test_bf16_pretraining_learns_records_precision_and_exports_in_fp32(release: Path, tmp_path: Path):
    training = TrainingConfig(lr=3e-3, epochs=4, batch_size=16, patience=4, seed=0, augmentation=None,
                              precision="bf16", device="cpu")
    out = pretrain(release, release / "votes.parquet", tmp_path / "ckpt", MODEL, training, PREPROCESSING)

    meta = read_checkpoint_json(out)
    assert meta["training"]["precision"] == "bf16"
    history = meta["metrics"]["history"]
    assert len(history) >= 2 and history[-1]["train_loss"] < history[0]["train_loss"]
    model = load_checkpoint(out)
    assert {tensor.dtype for tensor in model.state_dict().values() if tensor.is_floating_point()} == {torch.float32}
    package = export_package(out, tmp_path / "pkg", mc_samples=2)
    parity = ModelPackage.open(package).meta["variants"]["fp32"]["parity"]
    assert parity["max_rel_diff"] < 1e-4


def test_bf16_forward_keeps_concentrations_and_loss_in_float32():
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.encoder(images)
        concentrations = model(images)
    assert features.dtype == torch.bfloat16  # the encoder runs in bf16 ...
    assert concentrations.dtype == torch.float32  # ... the head, and so the loss, in float32


def test_fp16_without_cuda_is_refused_with_the_option_named(release: Path, tmp_path: Path):
    with pytest.raises(UnavailableError, match="--precision fp16 needs a CUDA device.*bf16"):
        check_precision("fp16", torch.device("cpu"))
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: fp16 is allowed")
    result = runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(tmp_path / "ckpt"),
                                 "--architecture", "test_resnet", "--input-size", "32", "--epochs", "1",
                                 "--precision", "fp16"])
    assert result.exit_code == 2, result.output
    assert "error: --precision fp16 needs a CUDA device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ckpt").exists()


# --- gradient clipping -----------------------------------------------------------------------------------------------


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fraction", [0.1, 10.0])
def test_grad_clip_bounds_the_gradient_norm(fraction: float):
    torch.manual_seed(0)
    model = build_model(MODEL.model_copy(update={"dropout_rate": 0.0})).to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    loader = _batches(8, model.schema.n_answers, 8)
    images, votes = next(iter(loader))
    # the gradients of the same batch, computed independently, without clipping
    reference.train()
    schema_loss(reference.schema)(reference(images.contiguous(memory_format=torch.channels_last)), votes).backward()
    unclipped = _gradients(reference)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in unclipped.values()])).item()
    clip = fraction * norm

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, loader, optimizer, None, schema_loss(model.schema), torch.device("cpu"), grad_clip=clip)
    clipped = _gradients(model)
    clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in clipped.values()]))
    assert clipped.keys() == unclipped.keys()
    scale = min(1.0, clip / norm)
    assert clipped_norm.item() == pytest.approx(min(norm, clip), rel=1e-4)
    for name, gradient in clipped.items():
        torch.testing.assert_close(gradient, unclipped[name] * scale, rtol=1e-4, atol=1e-7)


def test_grad_clip_must_be_positive_on_the_command_line(tmp_path: Path):
    result = runner.invoke(app, ["pretrain", "--release", str(tmp_path), "--out", str(tmp_path / "ckpt"),
                                 "--grad-clip", "0"])
    assert result.exit_code == 2 and "--grad-clip" in result.output and "Traceback" not in result.output


# --- the plateau schedule --------------------------------------------------------------------------------------------


def test_plateau_lowers_the_lr_after_stalled_epochs_only():
    model = build_model(MODEL)
    config = TrainingConfig(lr=1e-3, schedule="plateau", plateau_patience=1, plateau_factor=0.5)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = []
    for val_loss in [3.0, 2.0, 2.5, 2.5, 1.0, 1.5, 1.5]:
        step_epoch_schedule(scheduler, val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # improving epochs keep the LR; the second epoch without improvement halves it (patience 1)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4])


def test_plateau_is_not_stepped_per_batch_and_its_state_resumes(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(MODEL)
    config = TrainingConfig(lr=1e-3, schedule="plateau", plateau_patience=0)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=2)
    train_one_epoch(model, _batches(8, model.schema.n_answers, 4), optimizer, scheduler, schema_loss(model.schema))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    step_epoch_schedule(scheduler, 2.0)
    step_epoch_schedule(scheduler, 3.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)

    save_training_state(tmp_path / "state", model, optimizer, scheduler, TrainingProgress(epoch=1), PREPROCESSING,
                        config, {})
    fresh = build_model(MODEL)
    fresh_optimizer = make_optimizer(fresh, config)
    fresh_scheduler = make_scheduler(fresh_optimizer, config, steps_per_epoch=2)
    progress = load_training_state(tmp_path / "state", fresh, fresh_optimizer, fresh_scheduler)
    assert progress.epoch == 1
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    step_epoch_schedule(fresh_scheduler, 2.5)  # no better than the restored best (2.0): halved again
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_training_loop_lowers_the_lr_when_validation_stalls(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(MODEL)
    rng = np.random.default_rng(0)
    data = LabelledImages([str(i) for i in range(16)], rng.random((16, 3, 32, 32), dtype=np.float32),
                          rng.integers(0, 10, (16, model.schema.n_answers)), 0, 0)
    task = TrainingTask(model, data, schema_loss(model.schema), None, {})
    scripted = iter([3.0, 2.0, 2.0, 2.0, 2.0, 1.0])
    monkeypatch.setattr(loop, "loss_sum", lambda *args, **kwargs: (next(scripted), 1))
    config = TrainingConfig(lr=1e-3, epochs=6, patience=5, batch_size=4, val_fraction=0.5, augmentation=None,
                            schedule="plateau", plateau_patience=1)
    summary = loop.train_task(task, config, PREPROCESSING, loop.LocalSession(tmp_path / "ckpt", torch.device("cpu")))
    assert [h["lr"] for h in summary["history"]] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4])
    assert summary["best_epoch"] == 5


# --- torch.compile ---------------------------------------------------------------------------------------------------


def _compile_with_backend(monkeypatch, backend) -> None:
    """Make ``nn.Module.compile`` use ``backend`` (inductor's C++ build takes a minute a model on 2 cores)."""
    original = torch.nn.Module.compile

    def compile_with(self, *args, **kwargs):
        return original(self, *args, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with)


def test_compiled_training_writes_a_plain_checkpoint(release: Path, tmp_path: Path, monkeypatch):
    _compile_with_backend(monkeypatch, "eager")
    training = TrainingConfig(lr=3e-3, epochs=1, batch_size=16, augmentation=None, compile=True, device="cpu")
    out = pretrain(release, release / "votes.parquet", tmp_path / "ckpt", MODEL, training, PREPROCESSING)
    assert read_checkpoint_json(out)["training"]["compile"] is True
    loaded = load_checkpoint(out)  # would fail on "_orig_mod." names
    assert not any("_orig_mod" in name for name in loaded.state_dict())


def test_compile_failing_on_first_call_is_one_line(release: Path, tmp_path: Path, monkeypatch):
    def no_compiler(graph, inputs):
        raise RuntimeError("no C++ compiler found")

    _compile_with_backend(monkeypatch, no_compiler)
    training = TrainingConfig(epochs=1, batch_size=16, augmentation=None, compile=True, device="cpu")
    with pytest.raises(UnavailableError, match=r"--compile: torch.compile failed.*no C\+\+ compiler.*without"):
        pretrain(release, release / "votes.parquet", tmp_path / "ckpt", MODEL, training, PREPROCESSING)
    assert not (tmp_path / "ckpt").exists()


def test_compile_unsupported_is_a_one_line_cli_error(release: Path, tmp_path: Path, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    result = runner.invoke(app, ["pretrain", "--release", str(release), "--out", str(tmp_path / "ckpt"),
                                 "--architecture", "test_resnet", "--input-size", "32", "--epochs", "1",
                                 "--compile"])
    assert result.exit_code == 2, result.output
    assert "error: --compile: torch.compile is not supported" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ckpt").exists()


# --- the command line ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_help_lists_the_training_options(command: str):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--precision", "--grad-clip", "--compile", "--no-compile", "--schedule", "plateau",
                   "--keep-run-dir", "--no-keep-run-dir", "bf16", "fp16"):
        assert option in result.output, option


def test_cli_choices_are_the_configs():
    assert TRAINING_PRECISIONS == PRECISIONS and TRAINING_SCHEDULES == SCHEDULES


def test_cli_options_reach_the_training_config(monkeypatch, tmp_path: Path):
    from zoobot_pipeline import models

    seen = {}

    def fake_pretrain(*args, **kwargs):
        seen.update(kwargs)
        return tmp_path

    monkeypatch.setattr(models, "pretrain", fake_pretrain)
    result = runner.invoke(app, ["pretrain", "--release", str(tmp_path), "--out", str(tmp_path / "ckpt"),
                                 "--precision", "bf16", "--grad-clip", "1.5", "--compile", "--schedule", "plateau",
                                 "--keep-run-dir"])
    assert result.exit_code == 0, result.output
    config = seen["training_config"]
    assert (config.precision, config.grad_clip, config.compile, config.schedule) == ("bf16", 1.5, True, "plateau")
    assert seen["keep_run_dir"] is True
