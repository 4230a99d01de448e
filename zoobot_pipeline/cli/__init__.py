"""The ``zoobot-pipeline`` command line. Each sub-command is a thin call into the library.

One module per command group (:mod:`.data`, :mod:`.train`, :mod:`.imports`, :mod:`.score`, :mod:`.queue`);
:mod:`._options` holds what they share, including the one handler that turns every error into one line,
``error: <message>``: bad input (and a path the user can fix) exits 2, a failed outside service or a full disk 1, and
an unexpected exception 1 with its full traceback written to a file the line names.
"""

from __future__ import annotations

import atexit
import gc
from typing import Annotated

import typer

from zoobot_pipeline._version import __version__
from zoobot_pipeline.cli import data, imports, queue, score, train
from zoobot_pipeline.cli._options import UserErrorsGroup, console
from zoobot_pipeline.cli.score import TILES_FAILED_EXIT

__all__ = ["TILES_FAILED_EXIT", "app", "run"]

app = typer.Typer(help="Galaxy Zoo morphology at survey scale: simulate, train, score, rank.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=UserErrorsGroup)
for group in (data.app, train.app, imports.app, score.app, queue.app):
    app.add_typer(group)


def _version(value: bool) -> None:
    if value:
        console.print(f"zoobot-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Galaxy Zoo morphology at survey scale."""


def run() -> None:
    """The ``zoobot-pipeline`` executable: :data:`app`, with a cheaper interpreter exit.

    Registered before the command runs, so called after every exit handler the command registers (Ray's shutdown
    among them): :func:`gc.freeze` spares the interpreter's final collections a walk over every object the imports
    made (numba's registries, astropy's units, pandas: ~0.3 s per command). Those objects are freed with the process;
    what a command writes is closed before it returns (outputs are renamed into place whole).
    """
    atexit.register(gc.freeze)
    app(prog_name="zoobot-pipeline")
