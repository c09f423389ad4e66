"""Every failure reaches the user as one readable ``gr.Error`` — never a stack trace. A
handled error is one line in the toast and one line in the server log; an unexpected one is
logged with its traceback."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import gradio as gr

from dfine.checkpoint import CheckpointError
from dfine.io import ImageLoadError
from dfine.zoo import ZooDownloadError

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dfine.app")

# gradio's upload folders and ours: a user does not need to see them
_TEMP_PATH = re.compile(r"(?:/[^\s'\"/]+)*/(?:gradio|dfine-app)[^\s'\"]*/([^\s'\"/]+)")


class UserError(ValueError):
    """A problem with what the user asked for; its message is shown as it is."""


def tidy(message: str) -> str:
    """The message without server temp folders (``/tmp/gradio/ab12…/photo.jpg`` → ``photo.jpg``)."""
    return _TEMP_PATH.sub(r"\1", message)


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces made single spaces."""
    return " ".join(str(message).split())


def _handled(message: str, title: str) -> gr.Error:
    """A toast for a handled error: one line, logged as one line, no traceback."""
    text = one_line(tidy(message))
    log.warning("%s: %s", title, text)
    return gr.Error(text, title=title, print_exception=False)


def to_gr_error(exc: BaseException) -> gr.Error:
    """The ``gr.Error`` a user sees for ``exc`` (handled errors are logged as one line;
    unexpected ones with their traceback)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ImageLoadError):
        return _handled(str(exc), "Cannot read the image")
    if isinstance(exc, CheckpointError):
        return _handled(str(exc), "Cannot use this checkpoint")
    if isinstance(exc, ZooDownloadError):
        return _handled(
            f"{exc} Or upload the checkpoint file in the Model tab.", "Model download failed"
        )
    if isinstance(exc, (UserError, ValueError, FileNotFoundError)):
        return _handled(str(exc), "Cannot do that")
    if isinstance(exc, MemoryError):
        return _handled(
            "The server ran out of memory; try a smaller image or input size.", "Out of memory"
        )
    log.exception("unexpected error in the app")
    return gr.Error(
        f"Unexpected error ({type(exc).__name__}: {one_line(tidy(str(exc)))}). Please try "
        "again; if it persists, report it with the image and settings used.",
        title="Something went wrong",
        print_exception=False,  # logged above, with its traceback
    )


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a handler so that anything it raises becomes a readable ``gr.Error``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_gr_error(exc) from None

    return wrapper
