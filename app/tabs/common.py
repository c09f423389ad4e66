"""What every tab's ``build`` uses: the shared Detect-tab :class:`Controls`, the decorators
that turn the shared controls' values into a handler's :class:`~app.state.Selection`
(:func:`selection`) or :class:`~app.state.SharedInputs` (:func:`shared_inputs`), and the
wrapper that binds handler functions to the :class:`~app.state.AppState` (:func:`bind`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from analysis import export
from app.errors import UserError, log
from app.state import AppState, Selection, SharedInputs
from dfine.errors import DFineError, MissingDependencyError


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
    detect_outputs: list[Any] = field(default_factory=list)  # annotated, table, JSON, summary
    show_input: dict[bool, Callable[..., Any]] = field(default_factory=dict)
    """Detect's handlers for a new image: ``True``, detect on it; ``False``, show its cached
    result or nothing (set by the Detect tab)."""
    _pending: list[tuple[Callable[..., Any], list[Any]]] = field(default_factory=list)

    def shared(self) -> list[gr.components.Component]:
        """The inputs every image endpoint starts with: the components named by the fields of
        :class:`~app.state.SharedInputs`, in that order."""
        return [getattr(self, name) for name in SHARED]

    def after_result(
        self, fn: Callable[[Selection], Any], outputs: list[gr.components.Component]
    ) -> None:
        """Run ``fn(selection)`` after every new result (Detect pressed, threshold or limit
        changed) to update ``outputs`` (pickers). It reads the cached forward pass only; a
        missing result or a user's error (which the result event itself reported) leaves
        ``outputs`` unchanged; a bug is logged with its traceback (see :func:`quietly`)."""

        def run(state_cached: Callable[[SharedInputs], Selection | None], *shared: Any) -> Any:
            sel = state_cached(SharedInputs(*shared))
            return fn(sel) if sel is not None else skip(len(outputs))

        self._pending.append((quietly(run, len(outputs)), outputs))

    def replaced(self, listener: Callable[..., Any], *, detect: bool) -> Any:
        """The one rule for every action that puts a new image in the Detect tab (an upload,
        an example, a gallery thumbnail, a video frame): Detect's outputs then describe
        that image, never the previous one. ``listener`` is the event to follow (e.g.
        ``image.input`` or ``event.success``); ``detect``: run Detect on the new image (an
        image opened from another tab), else show its cached result or clear the outputs
        (the user presses Detect). The analysis tabs' pickers follow, as after Detect."""
        event = listener(
            self.show_input[detect],
            inputs=[*self.shared(), self.show_truth],
            outputs=self.detect_outputs,
            api_visibility="private",
        )
        self.result_events.append(event)
        return event

    def wire(self, state: AppState) -> None:
        """Attach every :meth:`after_result` callback to every result event (called by
        :func:`app.ui.build_demo` once every tab is built)."""
        for run, outputs in self._pending:
            fn = functools.partial(run, state.cached)
            for event in self.result_events:
                event.success(fn, inputs=self.shared(), outputs=outputs, api_visibility="private")


SHARED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SharedInputs))
"""The shared controls' names, in the order every image endpoint takes their values first."""


def shared_inputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler ``fn(state, inputs: SharedInputs, *rest)`` as the endpoint
    ``(state, image, threshold, size, model, max_detections, *rest)``: the values of the
    shared controls (:data:`SHARED`) come first and are packed into ``inputs``. The endpoint's
    signature (which gradio reads) lists them, then ``fn``'s own parameters."""
    try:  # resolved now, in fn's module (gradio looks for gr.Request and gr.EventData hints)
        resolved = typing.get_type_hints(fn)
    except NameError:
        resolved = {}
    params = [
        p.replace(annotation=resolved.get(p.name, p.annotation))
        for p in inspect.signature(fn).parameters.values()
    ]
    hints = typing.get_type_hints(SharedInputs)
    defaults = {f.name: f.default for f in dataclasses.fields(SharedInputs)}
    # a shared value keeps its field's default where everything after it has one too (e.g.
    # letterbox on /detect, whose own parameters all have defaults), so callers may omit it
    optional = all(p.default is not inspect.Parameter.empty for p in params[2:])
    shared = []
    for name in reversed(SHARED):
        default = defaults[name] if optional else dataclasses.MISSING
        optional = optional and default is not dataclasses.MISSING
        shared.insert(
            0,
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=hints[name],
                default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
            ),
        )
    signature = inspect.Signature([params[0], *shared, *params[2:]])

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        state = values.pop(params[0].name)
        inputs = SharedInputs(*(values.pop(name) for name in SHARED))
        return fn(state, inputs, **values)

    del run.__wrapped__  # gradio and inspect read the endpoint's signature, not fn's
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return run


def selection(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler ``fn(state, sel: Selection, *rest)`` as the endpoint
    ``(state, image, threshold, size, model, max_detections, *rest)``: see
    :func:`shared_inputs`; ``sel`` is :meth:`AppState.select` of the shared values (the
    forward pass run or reused, the threshold applied), which reports progress when ``fn``
    takes a ``progress`` parameter."""
    takes_progress = "progress" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def run(state: AppState, inputs: SharedInputs, *args: Any, **kwargs: Any) -> Any:
        progress = kwargs.get("progress") if takes_progress else None
        return fn(state, state.select(inputs, progress), *args, **kwargs)

    return shared_inputs(run)


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
    """``fn`` for an event that follows another one (a tab opened, a new result): a user's
    error (:class:`~dfine.errors.DFineError`, already reported by the event that showed the
    input) leaves its outputs unchanged without a second toast; anything else is a bug, logged
    with its traceback (and the outputs left unchanged)."""

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except DFineError as e:
            log.info("%s skipped: %s", getattr(fn, "__name__", "handler"), e)
            return skip(outputs)
        except Exception:
            log.exception("internal error in %s", getattr(fn, "__name__", "a handler"))
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
    with gr.Accordion("Download the figure (PNG, SVG or interactive HTML)", open=False), gr.Row():
        fmt = gr.Radio(list(FIGURE_FORMATS), value="png", label="Figure format", scale=1)
        export = gr.Button("Render the figure", scale=1)
        file = gr.File(label="Figure file", scale=2, height=90)
    return fmt, export, file


FIGURE_FORMATS = (*export.FORMATS, "html")


def save_figure(state: AppState, fig: Any, stem: str, fmt: str) -> str:
    """A plotly figure saved as ``<stem>.<fmt>`` (PNG, SVG or HTML) in the outputs folder.
    PNG and SVG need a Chromium (:func:`dfine.optional.chromium_path`); without one the
    figure comes as interactive HTML and a one-line toast says why."""
    fmt = str(fmt or "png").lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise UserError(f"Figures can be saved as {', '.join(FIGURE_FORMATS)}, not {fmt!r}.")
    if fmt in export.FORMATS:
        try:
            return str(export.save_figure(fig, state.outputs.path(f"{stem}.{fmt}")))
        except MissingDependencyError as err:  # no browser: the HTML needs none
            log.warning("figure download as HTML: %s", err)
            gr.Warning(f"{err} Here is the figure as interactive HTML instead.")
    return str(export.save_html(fig, state.outputs.path(f"{stem}.html")))
