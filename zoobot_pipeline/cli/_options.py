"""What the command groups share: the consoles, choice types built from the library's own lists, option types, the
training options of ``pretrain`` and ``finetune``, and the one handler of user errors."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import pydantic
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from zoobot_pipeline.data.render import IMAGE_FORMATS
from zoobot_pipeline.errors import UploadError, ZoobotPipelineError

console = Console()
error_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (ZoobotPipelineError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)
"""Errors that mean the input was wrong: one line on stderr and exit 2, never a traceback."""
USER_ERROR_EXIT = 2
UPLOAD_FAILED_EXIT = 1


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """An enum of ``values`` for an option, so that ``--help`` lists them and click refuses anything else."""
    return StrEnum(name, {value: value for value in values})  # type: ignore[return-value]


def one_of(values: Iterable[str]) -> str:
    """``"a, b or c"``: the choices of an option, for its help text."""
    *rest, last = values
    return f"{', '.join(rest)} or {last}" if rest else last


ImageFormat = choices("ImageFormat", IMAGE_FORMATS)
FormatOption = Annotated[ImageFormat, typer.Option("--format", help=f"{one_of(IMAGE_FORMATS)}.")]
RayAddress = Annotated[str | None, typer.Option(help="Join a running Ray cluster (e.g. ray://head:10001 or auto).")]


def print_error(message: str) -> None:
    """``error: <message>`` on one line of stderr."""
    error_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False)


def error_message(err: BaseException) -> str:
    """One line for a user error: pydantic errors name each field, OS errors their file."""
    if isinstance(err, pydantic.ValidationError):
        problems = []
        for problem in err.errors(include_url=False):
            text = problem["msg"].removeprefix("Value error, ")
            if problem["loc"]:
                text = f"{'.'.join(map(str, problem['loc']))}: {text} (got {problem['input']!r})"
            problems.append(text)
        return f"invalid {err.title}: {'; '.join(problems)}"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


class UserErrorsGroup(TyperGroup):
    """The command group whose commands report a user error as one line (:func:`print_error`) and exit 2, and a
    failed upload the same way with exit 1, instead of a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UploadError as err:
            print_error(str(err))
            raise typer.Exit(UPLOAD_FAILED_EXIT) from None
        except USER_ERRORS as err:
            print_error(error_message(err))
            raise typer.Exit(USER_ERROR_EXIT) from None


Epochs = Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation loss may end sooner).")]
BatchSize = Annotated[int, typer.Option(help="Galaxies per batch (per worker).")]
LearningRate = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
Patience = Annotated[int, typer.Option(help="Epochs without validation improvement before stopping.")]
Seed = Annotated[int, typer.Option(help="Random seed (split, initialisation, augmentation).")]
Workers = Annotated[int, typer.Option(help="Ray Train workers; 1 without --ray-address trains in this process.")]
GpusPerWorker = Annotated[float, typer.Option(help="GPUs per worker (0: CPU training).")]
CpusPerWorker = Annotated[float, typer.Option(help="CPUs reserved per Ray worker.")]
MaxFailures = Annotated[int, typer.Option(help="Worker failures Ray Train recovers from (resuming a checkpoint).")]
ResumeFrom = Annotated[Path | None, typer.Option(help="A Ray training-state checkpoint of an earlier run.")]
Quiet = Annotated[bool, typer.Option("--quiet/--progress", help="Hide or show per-epoch progress.")]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """The options ``pretrain`` and ``finetune`` share, in their ``--help`` order: the training loop and where it
    runs. ``epochs``, ``batch_size`` and ``patience`` have no default here: each command gives its own."""

    epochs: Epochs
    batch_size: BatchSize
    lr: LearningRate = 1e-3
    patience: Patience
    seed: Seed = 0
    workers: Workers = 1
    gpus_per_worker: GpusPerWorker = 0.0
    cpus_per_worker: CpusPerWorker = 1.0
    ray_address: RayAddress = None
    max_failures: MaxFailures = 2
    resume_from: ResumeFrom = None
    quiet: Quiet = False

    def keywords(self) -> dict[str, Any]:
        """Keyword arguments of :func:`zoobot_pipeline.models.pretrain` and :func:`~zoobot_pipeline.models.finetune`:
        the training config and where training runs."""
        from zoobot_pipeline.models import TrainingConfig

        config = TrainingConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                                seed=self.seed)
        return {"training_config": config, "workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "cpus_per_worker": self.cpus_per_worker, "ray_address": self.ray_address,
                "max_failures": self.max_failures, "resume_from": self.resume_from, "quiet": self.quiet}


def training_options(*, epochs: int, batch_size: int, patience: int) -> Callable[[F], F]:
    """Give a command the options of :class:`TrainingOptions` (with these defaults), after its own; the command
    takes them as one parameter, ``training: TrainingOptions``."""
    defaults = {"epochs": epochs, "batch_size": batch_size, "patience": patience}
    hints = get_type_hints(TrainingOptions, include_extras=True)
    shared = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[field.name],
                                default=defaults.get(field.name, field.default))
              for field in dataclasses.fields(TrainingOptions)]

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_training_options(*args: Any, **kwargs: Any) -> Any:
            training = TrainingOptions(**{parameter.name: kwargs.pop(parameter.name) for parameter in shared})
            return command(*args, training=training, **kwargs)

        signature = inspect.signature(command, eval_str=True)
        own = [parameter for name, parameter in signature.parameters.items() if name != "training"]
        with_training_options.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
        with_training_options.__annotations__ = {parameter.name: parameter.annotation for parameter in (*own, *shared)}
        return with_training_options  # type: ignore[return-value]

    return decorate
