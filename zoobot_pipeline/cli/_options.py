"""What the command groups share: the consoles, choice types built from the library's own lists, option types, the
training options of ``pretrain`` and ``finetune``, and the one handler of errors (:class:`UserErrorsGroup`).

Every error ends as one line on stderr, never a traceback: bad input (:data:`USER_ERRORS`, and OS errors that the
user can fix: a path that cannot be written or read, a file where a directory is needed) exits 2; a failed outside
service (:class:`~zoobot_pipeline.errors.ServiceError`, e.g. an upload) and a full disk exit 1; anything else is an
internal error: exit 1, with the full traceback written to a file under :func:`traceback_dir` that the line names.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from zoobot_pipeline._version import __version__
from zoobot_pipeline.errors import ServiceError, ZoobotPipelineError

console = Console()
error_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (ZoobotPipelineError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError)
"""Errors that mean the input was wrong: one line on stderr and exit 2, never a traceback."""
USER_ERROR_EXIT = 2
UPLOAD_FAILED_EXIT = 1
"""Exit code of a failed outside service (an upload): a rerun may succeed."""
FAILED_EXIT = 1
"""Exit code of an environment failure (a full disk) or an internal error."""
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
MAX_MESSAGE = 500
"""Longest message of an internal error shown on its line (the traceback file has all of it)."""
_CLICK_EXCEPTIONS = (typer.Exit, typer.Abort,
                     *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))
"""What click (typer's own copy, in recent typer) handles itself: exits, aborts and usage errors."""
_CLICK_CONTEXT = [c for c in typer.Context.__mro__ if c.__name__ == "Context"][-1]
"""click's context class (typer's commands run in it, not in its subclass ``typer.Context``)."""


# The library's lists that option types and help texts need, spelled out so that a command module needs none of the
# library's dependencies to start (numpy, pydantic, pyarrow, Pillow, scipy: 0.7 s of a 0.9 s `--version`); each
# command imports what it runs. tests/test_cli.py keeps them equal to the library's.
IMAGE_FORMATS = ("png", "jpeg")
"""``data.render.IMAGE_FORMATS``."""
PRECISION_VARIANTS = ("fp32", "int8", "fp16")
"""``runtime.package.PRECISION_VARIANTS``: fp32, then the reduced precisions (``REDUCED_PRECISIONS``)."""
TASKS = ("dirichlet", "classification", "regression")
"""``runtime.package.TASKS`` (``models.FINETUNE_TASKS``)."""
PREPROCESSING_PRESETS = ("gz_decals", "euclid", "from_images")
"""``data.preprocessing.available_presets()`` in a fresh process."""
ACQUISITIONS = ("mutual_information", "entropy", "random", "class_mutual_information", "predictive_std")
"""``active.acquisition.available_acquisitions()`` in a fresh process (the built-ins)."""


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


def _command_context(err: BaseException) -> Any:
    """The context of the command that raised ``err`` (the innermost click context on its traceback), if any."""
    found = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, _CLICK_CONTEXT):
            found = candidate
    return found


def _option_names(err: BaseException) -> dict[str, str]:
    """Parameter name -> how the user wrote it (``input_size`` -> ``--input-size``) for the failing command."""
    ctx = _command_context(err)
    if ctx is None:
        return {}
    return {param.name: param.opts[0] for param in ctx.command.params if param.name and param.opts}


def error_message(err: BaseException) -> str:
    """One line for a user error: pydantic errors name each field (and the option it came from, where a field is
    named as an option of the command), OS errors their file and what to do."""
    import pydantic  # loaded by the commands that validate options, not at start-up

    if isinstance(err, pydantic.ValidationError):
        options = _option_names(err)
        problems = []
        for problem in err.errors(include_url=False):
            text = problem["msg"].removeprefix("Value error, ")
            if problem["loc"]:
                field = ".".join(map(str, problem["loc"]))
                option = options.get(str(problem["loc"][0])) if len(problem["loc"]) == 1 else None
                text = f"{field}{f' ({option})' if option else ''}: {text} (got {problem['input']!r})"
            problems.append(text)
        return f"invalid {err.title}: {'; '.join(problems)}"
    if isinstance(err, OSError):
        return os_error_message(err)[0]
    return str(err)


def _shown_path(err: OSError) -> str | None:
    """The path an OS error is about: the destination of a rename, and the folder of a temporary file."""
    name = err.filename2 if err.filename2 is not None else err.filename
    if name is None:
        return None
    path = Path(os.fsdecode(name))
    return str(path.parent) if path.name.startswith((".tmp-", ".old-")) else str(path)


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) that is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def os_error_message(err: OSError) -> tuple[str, int]:
    """One line for an OS error, naming the path and what to do, and the exit code: 2 when the user can fix it by
    choosing another path; 1 for a full disk, and for any other OS error (the environment failed)."""
    path = _shown_path(err)
    reason = err.strerror or str(err)
    if path is None:  # pyarrow's errors carry the path in the text only
        if err.errno in NO_SPACE:
            ctx = _command_context(err)
            out = ctx.params.get("out") if ctx is not None else None
            where = f" while writing {out}" if out is not None else ""
            return (f"no space left on device{where} ({reason}); free some space or choose another location, then "
                    "rerun"), FAILED_EXIT
        return reason, USER_ERROR_EXIT if isinstance(err, USER_ERRORS) else FAILED_EXIT
    if err.errno in NO_SPACE:
        return (f"{path}: no space left on device; free some space or choose another location, then rerun",
                FAILED_EXIT)
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return (f"{path}: {reason}; check its permissions (and its folder's) or choose a location you can write to",
                USER_ERROR_EXIT)
    if isinstance(err, NotADirectoryError | FileExistsError):
        above = _file_above(Path(path))
        if above is not None:
            what = "is a file" if above == Path(path) else f"{above} is a file"
            return (f"{path}: {what}, where a directory is needed; choose another path (or move the file)",
                    USER_ERROR_EXIT)
        return f"{path}: {reason}; choose another path", USER_ERROR_EXIT
    if isinstance(err, IsADirectoryError):
        return f"{path}: is a directory, where a file is needed; give a file's path", USER_ERROR_EXIT
    if err.errno == errno.ENAMETOOLONG:
        return f"{path}: file name too long; choose a shorter path", USER_ERROR_EXIT
    if isinstance(err, FileNotFoundError):
        return f"{path}: {reason}", USER_ERROR_EXIT
    return f"{path}: {reason}", FAILED_EXIT


def traceback_dir() -> Path:
    """Where internal errors' tracebacks are written: ``$XDG_STATE_HOME/zoobot-pipeline`` (default
    ``~/.local/state/zoobot-pipeline``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "zoobot-pipeline"


def write_traceback(err: BaseException, command: str) -> Path | None:
    """Write ``err``'s full traceback to a new file under :func:`traceback_dir` (else the system temporary folder);
    returns its path, or None if neither can be written."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    text = (f"zoobot-pipeline {__version__}: internal error in {command!r} at {stamp}Z (UTC)\n\n"
            + "".join(traceback.format_exception(err)))
    for folder in (traceback_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"traceback-{stamp}-{os.getpid()}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def internal_error(err: BaseException, message: str | None = None) -> None:
    """Report an unexpected error as one line naming the file with its full traceback."""
    ctx = _command_context(err)
    command = ctx.command_path if ctx is not None else "zoobot-pipeline"
    path = write_traceback(err, command)
    text = message or " ".join(f"{type(err).__name__}: {err}".split())
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}..."
    where = f"full traceback in {path}" if path is not None else "the traceback could not be written to a file"
    print_error(f"internal error: {text}; {where}")
    if path is None:
        error_console.print(escape("".join(traceback.format_exception(err))), highlight=False)


class UserErrorsGroup(TyperGroup):
    """The command group that turns every error into one line on stderr (see the module docstring for the exit
    codes) instead of a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _CLICK_EXCEPTIONS:
            raise
        except ServiceError as err:
            print_error(str(err))
            raise typer.Exit(UPLOAD_FAILED_EXIT) from None
        except BrokenPipeError:
            # whoever read the output stopped (``| head``): nothing to report; further writes go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(FAILED_EXIT) from None
        except OSError as err:
            message, code = os_error_message(err)
            if code == USER_ERROR_EXIT or err.errno in NO_SPACE:
                print_error(message)
            else:
                internal_error(err, message)
            raise typer.Exit(code) from None
        except USER_ERRORS as err:
            print_error(error_message(err))
            raise typer.Exit(USER_ERROR_EXIT) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence: one line, traceback to a file
            internal_error(err)
            raise typer.Exit(FAILED_EXIT) from None


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
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")
"""``TrainingConfig.precision``'s choices (``models.config.PRECISIONS``; spelled out so that the command line does not
import the models package, a test keeps them equal)."""
TRAINING_SCHEDULES = ("cosine", "onecycle", "constant", "plateau")
"""``TrainingConfig.schedule``'s choices (``models.config.SCHEDULES``)."""
TrainingPrecision = choices("TrainingPrecision", TRAINING_PRECISIONS)
Schedule = choices("Schedule", TRAINING_SCHEDULES)
PrecisionOption = Annotated[TrainingPrecision, typer.Option(
    "--precision", help="Forward passes in fp32, or under bf16 (CPU or CUDA) or fp16 (CUDA only, with gradient "
                        "scaling) autocast; weights, loss and checkpoints stay float32.")]
GradClip = Annotated[float | None, typer.Option(
    metavar="NORM", help="Clip the L2 norm of all gradients to NORM each step (default: no clipping).")]
Compile = Annotated[bool, typer.Option(
    "--compile/--no-compile", help="torch.compile the encoder (slow first epoch; needs a C++ compiler on CPU).")]
ScheduleOption = Annotated[Schedule, typer.Option(
    "--schedule", help="LR schedule: cosine, onecycle and constant plan for all --epochs (stepped per batch); plateau "
                       "halves the LR after 2 epochs without validation improvement: the choice for runs that early "
                       "stopping may end sooner.")]
KeepRunDir = Annotated[bool, typer.Option(
    "--keep-run-dir/--no-keep-run-dir", help="With Ray: keep the run directory (training state, for --resume-from) "
                                             "after a successful run; it is always kept after a failure.")]


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
    keep_run_dir: KeepRunDir = False
    schedule: ScheduleOption = "cosine"  # type: ignore[assignment]
    precision: PrecisionOption = "fp32"  # type: ignore[assignment]
    grad_clip: GradClip = None
    compile: Compile = False
    quiet: Quiet = False

    def keywords(self) -> dict[str, Any]:
        """Keyword arguments of :func:`zoobot_pipeline.models.pretrain` and :func:`~zoobot_pipeline.models.finetune`:
        the training config and where training runs."""
        from zoobot_pipeline.models import TrainingConfig

        config = TrainingConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                                seed=self.seed, schedule=str(self.schedule), precision=str(self.precision),
                                grad_clip=self.grad_clip, compile=self.compile)
        return {"training_config": config, "workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "cpus_per_worker": self.cpus_per_worker, "ray_address": self.ray_address,
                "max_failures": self.max_failures, "resume_from": self.resume_from,
                "keep_run_dir": self.keep_run_dir, "quiet": self.quiet}


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
