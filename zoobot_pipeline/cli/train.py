"""Training commands: ``pretrain``, ``finetune``, ``evaluate`` (a checkpoint on labelled galaxies) and ``export`` (a
checkpoint to a model package)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zoobot_pipeline.cli._options import (
    PRECISION_VARIANTS,
    PREPROCESSING_PRESETS,
    TASKS,
    TrainingOptions,
    choices,
    console,
    training_options,
)
from zoobot_pipeline.errors import UnknownNameError, ZoobotPipelineError

if TYPE_CHECKING:
    from zoobot_pipeline.data.preprocessing import PreprocessingConfig

app = typer.Typer()

EVALUATION_JSON = "evaluation.json"
RELIABILITY_PNG = "reliability.png"

FinetuneTask = choices("FinetuneTask", TASKS)
Precision = choices("Precision", PRECISION_VARIANTS[1:])
FRAMEWORKS = ("torch", "tensorflow")
Framework = choices("Framework", FRAMEWORKS)
Overwrite = Annotated[bool, typer.Option(
    help="Replace an existing --out that is not this command's earlier output (only the files this command writes "
         "are replaced).")]


def _preprocessing(name: str, input_size: int) -> PreprocessingConfig:
    """``--preprocessing``: a preset at ``input_size``, or a PreprocessingConfig JSON file."""
    from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preset

    if name.endswith(".json"):
        return PreprocessingConfig.model_validate_json(Path(name).read_text())
    try:
        return preset(name, input_size)
    except UnknownNameError as err:
        raise UnknownNameError(f"--preprocessing: {err} or a PreprocessingConfig JSON file") from None


def _n_blocks(text: str) -> int | str:
    """``--n-blocks``: a number of blocks, or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise ZoobotPipelineError(f"--n-blocks {text!r}: expected a number of blocks or 'all'") from None


@app.command()
@training_options(epochs=50, batch_size=64, patience=8)
def pretrain(
    release: Annotated[Path, typer.Option(help="Release directory with the images.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (the best epoch).")],
    votes: Annotated[Path | None, typer.Option(help="Votes catalogue (default: RELEASE/votes.parquet).")] = None,
    schema: Annotated[str, typer.Option(help="Decision tree of the votes (built-in name or YAML).")] = "decals_dr5",
    architecture: Annotated[str, typer.Option(
        help="torch: any timm architecture name; tensorflow: efficientnet_b0, convnext_tiny or test_resnet.")]
    = "efficientnet_b0",
    input_size: Annotated[int, typer.Option(help="Model input size in pixels.")] = 224,
    preprocessing: Annotated[str, typer.Option(
        help=f"{', '.join(PREPROCESSING_PRESETS)}, or a PreprocessingConfig JSON.")] = "gz_decals",
    framework: Annotated[Framework, typer.Option(help="Training framework (backend).")] = Framework.torch,
    overwrite: Overwrite = False,
    *,
    training: TrainingOptions,
) -> None:
    """Pretrain a Zoobot-style model on volunteer vote counts (Dirichlet-Multinomial loss), locally or on Ray Train."""
    from zoobot_pipeline import models

    config = _preprocessing(preprocessing, input_size)
    model_config = models.ModelConfig.from_preprocessing(config, architecture=architecture, schema_name=schema)
    path = models.pretrain(release, votes or release / "votes.parquet", out, model_config, preprocessing=config,
                           framework=framework.value, overwrite=overwrite, **training.keywords())
    console.print(f"best checkpoint: {path}")


@app.command()
@training_options(epochs=30, batch_size=32, patience=5)
def finetune(
    release: Annotated[Path, typer.Option(help="Release directory with the images.")],
    labels: Annotated[Path, typer.Option(help="CSV or Parquet with id_str and the label columns.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (the best epoch).")],
    task: Annotated[FinetuneTask, typer.Option(help="classification, regression or dirichlet (a new tree).")],
    checkpoint: Annotated[Path | None, typer.Option(help="Pretrained checkpoint (omit with --from-scratch).")] = None,
    label_column: Annotated[list[str] | None, typer.Option(help="Label column (repeatable).")] = None,
    schema: Annotated[str | None, typer.Option(help="For --task dirichlet: the new tree (name or YAML).")] = None,
    n_blocks: Annotated[str, typer.Option(help="Encoder blocks to unfreeze from the top (0 = frozen, or 'all').")]
    = "0",
    lr_decay: Annotated[float, typer.Option(help="Layer-wise LR decay per block from the top.")] = 0.75,
    from_scratch: Annotated[bool, typer.Option(help="Train the same head on a random encoder (baseline).")] = False,
    architecture: Annotated[str, typer.Option(help="With --from-scratch: the architecture (as for pretrain).")]
    = "efficientnet_b0",
    input_size: Annotated[int, typer.Option(help="With --from-scratch: input size in pixels.")] = 224,
    framework: Annotated[Framework | None, typer.Option(
        help="Training framework: the checkpoint's (a different one is an error); torch with --from-scratch.")]
    = None,
    overwrite: Overwrite = False,
    *,
    training: TrainingOptions,
) -> None:
    """Finetune a pretrained model on a few labels: a classifier, a regressor, or a new decision tree."""
    from zoobot_pipeline import models
    from zoobot_pipeline.data.preprocessing import preset

    if (checkpoint is None) != from_scratch:
        raise ZoobotPipelineError("give --checkpoint, or --from-scratch for the random-encoder baseline (not both)")
    config = models.FinetuneConfig(task=task.value, label_columns=tuple(label_column or ()), schema_name=schema,
                                   n_blocks=_n_blocks(n_blocks), lr_decay=lr_decay)
    model_config = None
    preprocessing = None
    if from_scratch:
        preprocessing = preset("gz_decals", input_size)
        model_config = models.ModelConfig.from_preprocessing(preprocessing, architecture=architecture)
    path = models.finetune(checkpoint, release, labels, out, config, model_config=model_config,
                           preprocessing=preprocessing, framework=None if framework is None else framework.value,
                           overwrite=overwrite,
                           **training.keywords())
    console.print(f"best checkpoint: {path}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint directory (pretrained or finetuned).")],
    release: Annotated[Path, typer.Option(help="Release directory with the images.")],
    labels: Annotated[Path, typer.Option(
        help="A pretrained checkpoint: votes catalogue of its decision tree; a finetuned one: its labels file.")],
    out: Annotated[Path | None, typer.Option(
        help=f"Directory to write {EVALUATION_JSON} (every metric) and, for vote predictions, {RELIABILITY_PNG}.")]
    = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Galaxies per forward pass.")] = 64,
    overwrite: Overwrite = False,
) -> None:
    """Evaluate a checkpoint on labelled galaxies: per-question NLL, vote-fraction error and calibration for vote
    predictions; loss and accuracy or RMSE for a finetuned classifier or regressor."""
    from zoobot_pipeline import models
    from zoobot_pipeline.io import atomic_directory, prepare_output_dir, write_json_atomic

    if out is not None:
        prepare_output_dir(out, marker=EVALUATION_JSON, what="model evaluation", overwrite=overwrite,
                           inputs=[checkpoint, release, labels])
    metrics = models.evaluate(checkpoint, release, labels, batch_size=batch_size)
    _print_evaluation(metrics, checkpoint)
    if out is None:
        return
    with atomic_directory(out, own=(EVALUATION_JSON, RELIABILITY_PNG), marker=EVALUATION_JSON) as tmp:
        if "calibration" in metrics:
            from zoobot_pipeline.figures import reliability_diagram

            reliability_diagram(metrics["calibration"], tmp / RELIABILITY_PNG,
                                title=f"{checkpoint.name} on {labels.name}")
        write_json_atomic({"checkpoint": str(checkpoint), "release": str(release), "labels": str(labels), **metrics},
                          tmp / EVALUATION_JSON)
    console.print(f"evaluation written to {out}")


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _print_evaluation(metrics: dict[str, Any], checkpoint: Path) -> None:
    """The summary, then per question and per calibration bin (for vote predictions) as tables."""
    from rich.table import Table

    summary = Table("metric", "value", title=f"evaluation of {checkpoint}")
    for key, value in metrics.items():
        if isinstance(value, int | float):
            summary.add_row(key, f"{value:.0f}" if key == "n" else _number(value))
    if "calibration" in metrics:
        summary.add_row("calibration_error", _number(metrics["calibration"]["calibration_error"]))
    console.print(summary)
    if "questions" not in metrics:
        return
    questions = Table("question", "galaxies asked", "mean NLL", "fraction MAE", title="per question")
    for name, row in metrics["questions"].items():
        questions.add_row(name, str(row["n_asked"]), _number(row["nll"]), _number(row["fraction_mae"]))
    console.print(questions)
    calibration = metrics["calibration"]
    bins = Table("predicted fraction", "answers", "mean predicted", "mean observed",
                 title="calibration (reliability of predicted vote fractions)")
    edges = calibration["edges"]
    for i, count in enumerate(calibration["count"]):
        bins.add_row(f"{edges[i]:.1f}-{edges[i + 1]:.1f}", str(count), _number(calibration["predicted"][i], 3),
                     _number(calibration["observed"][i], 3))
    console.print(bins)


@app.command("export")
def export_model(
    checkpoint: Annotated[Path, typer.Option("--from", help="Checkpoint directory (pretrained or finetuned).")],
    out: Annotated[Path, typer.Option(help="Model package directory to write.")],
    mc_samples: Annotated[int, typer.Option(help="Default MC-dropout samples per galaxy when scoring.")] = 5,
    variant: Annotated[list[Precision] | None, typer.Option(
        help="Also write a reduced-precision variant (repeatable): int8 (CPU, needs --calibration-release) or fp16.")]
    = None,
    calibration_release: Annotated[Path | None, typer.Option(
        help="Release whose galaxies calibrate int8 and check the variants' accuracy against fp32.")] = None,
    n_volunteers: Annotated[int, typer.Option(help="Volunteers per galaxy assumed for vote-space uncertainty.")] = 40,
    overwrite: Overwrite = False,
) -> None:
    """Export a checkpoint to an ONNX model package, checked against the framework's own output."""
    from rich.table import Table

    from zoobot_pipeline.export import ModelPackage, export_package

    path = export_package(checkpoint, out, mc_samples=mc_samples, variants=[v.value for v in variant or ()],
                          calibration_release=calibration_release, n_volunteers=n_volunteers, overwrite=overwrite)
    package = ModelPackage.open(path)
    table = Table("variant", "file", "sha256", "check", title=f"model package {path}")
    for name, entry in package.meta["variants"].items():
        if "parity" in entry:
            check = f"max relative difference from {package.meta['framework']['name']}: " \
                    f"{entry['parity']['max_rel_diff']:.2g}"
        else:
            accuracy = entry["accuracy"]
            check = f"{accuracy['quantity']} vs fp32: mean |diff| {accuracy['mean_abs_diff']:.2g}, " \
                    f"max {accuracy['max_abs_diff']:.2g} ({accuracy['n_galaxies']} galaxies)"
        table.add_row(name, entry["file"], entry["sha256"][:16], check)
    console.print(table)
