"""Data commands: ``simulate`` a release, ``schema list|show|validate``, ``release check``, ``render``, and
``kernels compile`` (the numba kernels that process the data, compiled into the installed package)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from zoobot_pipeline.cli._options import FormatOption, console, print_error
from zoobot_pipeline.errors import ZoobotPipelineError

app = typer.Typer()
schema_app = typer.Typer(help="Galaxy Zoo decision trees.", no_args_is_help=True)
release_app = typer.Typer(help="Survey data releases.", no_args_is_help=True)
kernels_app = typer.Typer(help="The package's numba kernels.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(release_app, name="release")
app.add_typer(kernels_app, name="kernels")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Directory to write the release into.")],
    galaxies: Annotated[int, typer.Option(help="Number of catalogue entries (galaxies, a few stars and artifacts).")]
    = 2000,
    tiles: Annotated[int, typer.Option(help="Number of FITS tiles.")] = 4,
    schema: Annotated[str, typer.Option(help="Decision tree the simulated volunteers answer.")] = "decals_dr5",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same release.")] = 0,
    labelled_fraction: Annotated[float, typer.Option(help="Fraction of sources with volunteer votes.")] = 0.5,
    volunteers: Annotated[int, typer.Option(help="Mean number of volunteers per galaxy at the root question.")] = 40,
    tile_size: Annotated[int | None, typer.Option(help="Tile side in pixels (default: from source density).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes rendering tiles (default: one per CPU core).")]
    = None,
) -> None:
    """Write a synthetic survey release with known morphology and simulated volunteer votes."""
    from zoobot_pipeline.data.synthetic.simulate import simulate_release

    path = simulate_release(out, galaxies, tiles, schema=schema, seed=seed, labelled_fraction=labelled_fraction,
                            n_volunteers=volunteers, progress=True, tile_size=tile_size,
                            workers=workers or os.cpu_count() or 1)
    console.print(f"wrote release to {path}")


@schema_app.command("list")
def schema_list() -> None:
    """List the built-in decision trees."""
    from rich.table import Table

    from zoobot_pipeline.schemas import available_schemas, get_schema

    table = Table("name", "questions", "answers", "description")
    for name in available_schemas():
        schema = get_schema(name)
        table.add_row(name, str(len(schema.questions)), str(schema.n_answers), schema.description)
    console.print(table)


@schema_app.command("show")
def schema_show(name: Annotated[str, typer.Argument(help="Built-in name or path of a YAML tree.")]) -> None:
    """Show a tree: questions, answers, label columns and what each question is asked after."""
    from rich.table import Table

    from zoobot_pipeline.schemas import get_schema

    schema = get_schema(name)
    table = Table("question", "answers", "columns", "asked after", title=f"{schema.name}: {schema.description}")
    for q in schema.questions:
        parent = q.asked_after.label_col if q.asked_after else "(always asked)"
        table.add_row(q.name, ", ".join(a.name for a in q.answers), f"{q.start}-{q.stop - 1}", parent)
    console.print(table)


@schema_app.command("validate")
def schema_validate(path: Annotated[Path, typer.Argument(help="YAML file defining a decision tree.")]) -> None:
    """Check a YAML decision tree; errors name the question at fault."""
    from zoobot_pipeline.schemas import load_schema

    schema = load_schema(path)
    console.print(f"{path}: valid tree {schema.name!r} with {len(schema.questions)} questions, "
                  f"{schema.n_answers} answers")


@release_app.command("check")
def release_check(
    path: Annotated[Path, typer.Argument(help="Release directory.")],
    schema: Annotated[str | None, typer.Option(help="Tree for votes.parquet (default: release.json's).")] = None,
) -> None:
    """Read a whole release (every tile, band, WCS and source; votes against the tree) and report what it found."""
    from dataclasses import asdict

    from zoobot_pipeline.data.check import check_release

    check = check_release(path, schema)
    console.print_json(json.dumps(asdict(check)))
    if check.tree_violations:
        print_error(f"{check.tree_violations} galaxies have more votes on a question than on the answer it is asked "
                    "after")
        raise typer.Exit(1)


@app.command()
def render(
    release: Annotated[Path, typer.Argument(help="Release directory.")],
    out: Annotated[Path, typer.Option(help="Directory for the images.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="Source id_str to render (repeatable).")] = None,
    limit: Annotated[int, typer.Option(help="Without --id: render the first N sources.")] = 20,
    size: Annotated[int, typer.Option(help="Image side in pixels (Galaxy Zoo uses 424).")] = 424,
    image_format: FormatOption = "png",
) -> None:
    """Render colour cutouts of sources as Galaxy Zoo shows them (at most 1 MiB each), one file per source in --out,
    named after its id_str (made file-safe, with a hash, where the id is not a plain file name)."""
    from zoobot_pipeline.data.cutouts import release_cutouts
    from zoobot_pipeline.data.release import Release
    from zoobot_pipeline.data.render import check_image_size, render_image
    from zoobot_pipeline.io import safe_file_name

    check_image_size(size, "--size")
    if limit < 1:
        raise ZoobotPipelineError(f"--limit {limit}: must be at least 1 (the number of sources to render)")
    if out.exists() and not out.is_dir():
        raise ZoobotPipelineError(f"--out {out}: exists and is not a directory; choose a directory for the images")
    opened = Release.open(release)
    known = opened.sources["id_str"].to_pylist()
    wanted = list(dict.fromkeys(ids)) if ids else known[:limit]
    unknown = set(wanted) - set(known)
    if unknown:
        raise ZoobotPipelineError(f"{release}: no sources with id_str {sorted(unknown)[:5]}")
    written = 0
    for id_str, cut in release_cutouts(opened, wanted):
        name = safe_file_name(id_str, f".{image_format.value}")
        render_image(cut.data, out / name, opened.bands, size, fmt=image_format.value)
        written += 1
    console.print(f"wrote {written} images to {out}")


@kernels_app.command("compile")
def kernels_compile() -> None:
    """Compile the numba kernels into the installed package, for this machine's CPU, where every later process
    loads them instead of compiling (5-10 s): run it where the package is installed, as the user who installed it
    (make install and the container build do)."""
    from zoobot_pipeline import _vote_space  # noqa: F401 - its kernels
    from zoobot_pipeline._numba_cache import compile_kernels
    from zoobot_pipeline.data import image_kernels  # noqa: F401 - its kernels

    for name, how, folder in compile_kernels():
        console.print(f"{name}: {how} in {folder}", soft_wrap=True, highlight=False)
