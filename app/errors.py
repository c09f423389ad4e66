"""Every failure reaches the user as one readable ``gr.Error`` — never a stack trace. A
:class:`~dfine.errors.DFineError` (the user's to fix) is its own one line in the toast and one
line in the server log; anything else is a bug: logged with its traceback, and the toast says
an internal error happened."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import gradio as gr

from dfine.checkpoint import CheckpointError
from dfine.errors import DFineError, InvalidArgumentError, error_text
from dfine.io import ImageLoadError
from dfine.zoo import ZooDownloadError

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dfine.app")

# gradio's upload folders and ours: a user does not need to see them
_TEMP_PATH = re.compile(r"(?:/[^\s'\"/]+)*/(?:gradio|dfine-app)[^\s'\"]*/([^\s'\"/]+)")

UserError = InvalidArgumentError
"""What the app raises for a value a user sent that it cannot use: the library's
:class:`~dfine.errors.InvalidArgumentError` (one user-error type for the library and the app)."""


_TITLES: dict[type[DFineError], str] = {
    ImageLoadError: "Cannot read the image",
    CheckpointError: "Cannot use this checkpoint",
}


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
    """The ``gr.Error`` a user sees for ``exc``: a :class:`~dfine.errors.DFineError`'s own
    line (logged as one line); for anything else, a bug, "an internal error happened" (logged
    with its traceback; call this inside the ``except`` block that caught ``exc``)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, ZooDownloadError):
        return _handled(
            f"{error_text(exc)} Or upload the checkpoint file in the Model tab.",
            "Model download failed",
        )
    if isinstance(exc, DFineError):
        return _handled(error_text(exc), _TITLES.get(type(exc), "Cannot do that"))
    if isinstance(exc, MemoryError):
        return _handled(
            "The server ran out of memory; try a smaller image or input size.", "Out of memory"
        )
    log.error("internal error in the app", exc_info=exc)
    return gr.Error(
        f"An internal error happened ({type(exc).__name__}); it is logged on the server with "
        "its traceback. Please report it with the image and settings used.",
        title="Internal error",
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
