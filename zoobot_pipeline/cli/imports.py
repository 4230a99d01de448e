"""Import commands: ``import zoobot`` (a Zoobot Lightning checkpoint or a timm-layout encoder to a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zoobot_pipeline.cli._options import PREPROCESSING_PRESETS, console
from zoobot_pipeline.cli.train import Overwrite, _preprocessing

app = typer.Typer()
import_app = typer.Typer(help="Bring models made elsewhere: Zoobot checkpoints and encoders.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("zoobot")
def zoobot(
    checkpoint: Annotated[Path, typer.Option(
        help="A Zoobot Lightning .ckpt (ZoobotTree, FinetuneableZoobotClassifier/Regressor/Tree) or an encoder "
             "directory in timm's layout (config.json + model.safetensors).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    schema: Annotated[str | None, typer.Option(
        help="Decision tree (built-in name or YAML) when the checkpoint records none; for an encoder, the tree of "
             "its placeholder head (default decals_dr5).")] = None,
    task: Annotated[str | None, typer.Option(
        help="What the checkpoint is, when its hyper-parameters do not say: pretrained (ZoobotTree), "
             "classification, regression or dirichlet (FinetuneableZoobot...).")] = None,
    architecture: Annotated[str | None, typer.Option(
        help="The encoder's timm architecture, for checkpoints that do not record it (finetuned ones).")] = None,
    class_name: Annotated[list[str] | None, typer.Option(
        help="A classifier's class names in output order (repeatable; default 0, 1, ...).")] = None,
    preprocessing: Annotated[str, typer.Option(
        "--preprocessing", "--preset",
        help=f"How survey images become model inputs: {', '.join(PREPROCESSING_PRESETS)}, or a "
             "PreprocessingConfig JSON.")] = "gz_decals",
    input_size: Annotated[int, typer.Option(min=8, help="Model input size in pixels.")] = 224,
    overwrite: Overwrite = False,
) -> None:
    """Import a Zoobot model as a checkpoint that finetune, export and score use like any other. Nothing in the file
    is run: only its tensors and plain containers are read."""
    from rich.table import Table

    from zoobot_pipeline.models import get_backend, read_checkpoint_json
    from zoobot_pipeline.models.zoobot_import import ImportRequest

    request = ImportRequest(source=checkpoint, preprocessing=_preprocessing(preprocessing, input_size),
                            task=task, schema=schema, architecture=architecture,
                            class_names=tuple(class_name) if class_name else None)
    path = get_backend("torch").import_zoobot(request, out, overwrite=overwrite)
    meta = read_checkpoint_json(path)
    table = Table("field", "value", title=f"imported checkpoint {path}")
    table.add_row("from", f"{meta['imported']['zoobot_class']} ({meta['imported']['format']})")
    table.add_row("kind", meta["kind"] + (f" ({meta['finetune']['task']})" if meta["kind"] == "finetuned" else ""))
    table.add_row("architecture", meta["model"]["architecture"])
    table.add_row("outputs", f"{len(meta['label_cols'])}" + (f" (tree {meta['schema']['name']})"
                                                              if meta["schema"] else ""))
    table.add_row("head", meta["imported"]["head"])
    table.add_row("preprocessing", f"{preprocessing} at {input_size} px")
    console.print(table)
