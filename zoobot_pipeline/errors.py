"""The errors of zoobot-pipeline, in one place.

:class:`ZoobotPipelineError` is the one base of every "bad input" error: a file, row, column, option or name that the
library cannot use. Its message names the culprit; the command line prints it on one line and exits 2. It subclasses
``ValueError``, so code that predates it keeps working. :class:`UnknownNameError` is an unknown name (a decision tree,
question, backend, acquisition function, preprocessing preset, device or precision variant); it is also a
``KeyError`` for lookups, but prints its message as written. :class:`UnavailableError` is a request this machine or
cluster cannot serve (also a ``RuntimeError``). :class:`ServiceError` is the other kind: an outside service failed, and
a rerun may succeed.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CheckpointImportError", "ExportError", "LabelsError", "PackageError", "ReleaseError", "SchemaError",
    "ScoringError", "ServiceError", "UnavailableError", "UnknownNameError", "UploadError", "VotesError",
    "ZoobotPipelineError", "check_name",
]


class ZoobotPipelineError(ValueError):
    """Bad input: the message names the file, row, column or option at fault and what is wrong with it."""


class UnknownNameError(ZoobotPipelineError, KeyError):
    """A name that is not among the known ones (the message lists them)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SchemaError(ZoobotPipelineError):
    """A decision tree is malformed; the message names the question or answer at fault."""


class ReleaseError(ZoobotPipelineError):
    """A data release is malformed; the message names the file and the problem."""


class VotesError(ZoobotPipelineError):
    """A votes catalogue does not fit its decision tree; the message names the file, column or rows."""


class LabelsError(ZoobotPipelineError):
    """A labels file cannot be used for the requested finetuning."""


class PackageError(ZoobotPipelineError):
    """A model package is missing, corrupt or does not fit the data; the message names the file and the problem."""


class ExportError(ZoobotPipelineError):
    """The exported graph does not reproduce the framework's outputs, or a variant cannot be made."""


class CheckpointImportError(ZoobotPipelineError):
    """A Zoobot checkpoint or encoder cannot be imported: refused as unsafe (a pickle that needs more than tensors
    and plain containers), or it does not fit the options; the message names the file and the problem."""


class ScoringError(ZoobotPipelineError):
    """Scoring cannot start: bad options, or an output directory that holds something else."""


class UnavailableError(ZoobotPipelineError, RuntimeError):
    """This machine or cluster lacks what the request needs: a GPU, an onnxruntime provider, enough CPUs."""


class ServiceError(RuntimeError):
    """An outside service failed (network, server); nothing the user gave was wrong, and a rerun may succeed."""


class UploadError(ServiceError):
    """Zooniverse refused or failed an upload; the message says what the server answered."""


def check_name(name: str, known: Iterable[str], what: str) -> str:
    """``name`` if it is one of ``known``, else :class:`UnknownNameError` listing them (``what``: e.g. "device")."""
    choices = list(known)
    if name not in choices:
        raise UnknownNameError(f"unknown {what} {name!r}; use one of {', '.join(choices)}")
    return name
