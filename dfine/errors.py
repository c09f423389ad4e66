"""The one user-error type.

Every error a user can cause (a wrong argument, a file that is not an image, a checkpoint of
another architecture, a package that is not installed, a download that failed) derives from
:class:`DFineError`. Its message is one line — what failed, why, what to do — and the CLI
(``error: …``, exit status 2), the app (a toast and one server-log line) and a Python caller
see the same text. Anything else that escapes is a bug and keeps its traceback.

The subclasses also derive from the built-in type a Python caller would expect (``ValueError``,
``FileNotFoundError``, ``ImportError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import ClassVar


class DFineError(Exception):
    """A problem with what the user asked for or gave; ``str(e)`` is the one line to show.

    ``exit_code`` is the CLI's exit status for it (2; a stopped training run: 3)."""

    exit_code: ClassVar[int] = 2

    def __str__(self) -> str:
        return _one_line(super().__str__())


class InvalidArgumentError(DFineError, ValueError):
    """An argument or setting that cannot be used (a bad size, threshold, name, option)."""


class InputFileError(DFineError, FileNotFoundError):
    """A path the user named does not exist or cannot be read."""


class MissingDependencyError(DFineError, ImportError):
    """An optional package (or program) a feature needs is not installed.

    Args:
        feature: what needs it, e.g. ``"INT8 export"``.
        package: the pip package (or program) that provides it.
        install: the command that installs it (default ``pip install <package>``).
    """

    def __init__(self, feature: str, package: str, install: str | None = None) -> None:
        self.feature, self.package = feature, package
        self.install = install or f"pip install {package}"
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed: {self.install}"
        )
        self.name = package  # ImportError's attribute


class PrecisionGuardError(DFineError, ValueError):
    """A reduced-precision graph (an OpenVINO bf16/int8 export, a TensorRT fp16 engine) lost
    more accuracy than allowed."""


def missing(feature: str, package: str, install: str | None = None) -> MissingDependencyError:
    """The error to raise ``from`` an ``ImportError`` of an optional package."""
    return MissingDependencyError(feature, package, install)


def _one_line(message: str) -> str:
    """``message`` on one line; for an error re-raised from a ``DataLoader`` worker, whose
    message holds the worker's traceback, only the original error's message."""
    if "Original Traceback (most recent call last):" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]  # "pkg.Error: message"
    return " ".join(message.split())


def error_text(exc: BaseException) -> str:
    """The one line shown for ``exc`` (``error: …`` in the CLI, the app's toast): ``str(exc)``
    on one line (see :func:`_one_line`), or the type's name when that is empty."""
    return _one_line(str(exc)) or type(exc).__name__
