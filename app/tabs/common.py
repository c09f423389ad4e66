"""What every tab's ``build`` uses: the shared Detect-tab :class:`Controls` and the wrappers
that bind handler functions to the :class:`~app.state.AppState`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from analysis import export
from app.errors import UserError
from app.state import AppState, Selection


@dataclass
class Controls:
    """The Detect tab's components that the other tabs read, and the events after which the
    current selection (image, model, size, threshold, detection limit, letterbox) has a new
    result."""

    image: gr.Image
    threshold: gr.Slider
    size: gr.Dropdown
    model: gr.Dropdown
    max_detections: gr.Slider
    annotated: gr.Image
    tabs: gr.Tabs
    model_note: gr.Markdown | None = None
    letterbox: gr.Checkbox | None = None
    show_truth: gr.Checkbox | None = None  # Detect only: draw the ground truth
    result_events: list[Any] = field(default_factory=list)
    _pending: list[tuple[Callable[..., Any], list[Any]]] = field(default_factory=list)

    def shared(self) -> list[gr.components.Component]:
        """The inputs every image endpoint starts with, in the handlers' order."""
        return [self.image, self.threshold, self.size, self.model, self.max_detections]

    def inputs(self, *extra: gr.components.Component) -> list[gr.components.Component]:
        """An image endpoint's inputs: :meth:`shared`, the tab's own ``extra`` and last the
        letterbox box (a trailing optional input, so API callers may leave it out: stretch)."""
        return [*self.shared(), *extra, *([self.letterbox] if self.letterbox else [])]

    def after_result(
        self, fn: Callable[[Selection], Any], outputs: list[gr.components.Component]
    ) -> None:
        """Run ``fn(selection)`` after every new result (Detect pressed, threshold or limit
        changed) to update ``outputs`` (pickers). It reads the cached forward pass only; a
        failure or a missing result leaves ``outputs`` unchanged."""

        def run(state_select: Callable[..., Selection | None], *shared: Any) -> Any:
            try:
                sel = state_select(*shared)
                return fn(sel) if sel is not None else skip(len(outputs))
            except Exception:
                return skip(len(outputs))

        self._pending.append((run, outputs))

    def wire(self, state: AppState) -> None:
        """Attach every :meth:`after_result` callback to every result event (called by
        :func:`app.ui.build_demo` once every tab is built)."""
        for run, outputs in self._pending:
            fn = functools.partial(run, state.cached)
            for event in self.result_events:
                event.success(fn, inputs=self.inputs(), outputs=outputs, api_visibility="private")


def bind(state: AppState, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(state, ...)`` as an event handler ``(...)``; PIL images it returns are written
    to WebP files (gradio caches a returned file atomically, while it rewrites the cache file
    of a returned PIL image in place, which breaks a concurrent download of an identical
    result)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        out = fn(state, *args, **kwargs)
        if isinstance(out, tuple):
            return tuple(_to_file(state, v, fn) for v in out)
        return _to_file(state, out, fn)

    # gradio reads the signature (gr.Progress defaults) without the bound state
    sig = functools.partial(fn, state)
    run.__signature__ = inspect.signature(sig)  # type: ignore[attr-defined]
    return run


def _to_file(state: AppState, value: Any, fn: Callable[..., Any]) -> Any:
    if not isinstance(value, Image.Image):
        return value
    path = state.outputs.path(f"dfine_{getattr(fn, '__name__', 'image')}.webp")
    value.save(path, format="WEBP", quality=90)
    return str(path)


def skip(outputs: int) -> Any:
    return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))


def quietly(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """``fn``, but a failure leaves its outputs unchanged instead of showing an error."""

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return skip(outputs)

    return run


def on_open(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """For tab-opening events: run ``fn`` when an image is there, silently skip otherwise."""

    def run(*args: Any) -> Any:
        if not args or args[0] is None:
            return skip(outputs)
        return quietly(fn, outputs)(*args)

    return run


def figure_export_row() -> tuple[gr.Radio, gr.Button, gr.File]:
    """The 'download the figure' accordion of the analysis tabs."""
    with gr.Accordion("Download the figure (PNG or SVG)", open=False), gr.Row():
        fmt = gr.Radio(["png", "svg"], value="png", label="Figure format", scale=1)
        export = gr.Button("Render the figure", scale=1)
        file = gr.File(label="Figure file", scale=2, height=90)
    return fmt, export, file


FIGURE_FORMATS = export.FORMATS


def save_figure(state: AppState, fig: Any, stem: str, fmt: str) -> str:
    """A plotly figure saved as ``<stem>.<fmt>`` (PNG or SVG) in the outputs folder."""
    fmt = str(fmt or "png").lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise UserError(f"Figures can be saved as {' or '.join(FIGURE_FORMATS)}, not {fmt!r}.")
    path = state.outputs.path(f"{stem}.{fmt}")
    export.save_figure(fig, path)
    return str(path)
