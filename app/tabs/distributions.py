"""The Distributions tab: one detection's four edge distributions at every decoder layer,
the ±kσ uncertainty overlay and the edge statistics. Endpoints ``/distributions`` and
``/distributions_figure`` (PNG/SVG); clicking a box in the Detect tab opens it here."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

import analysis
from analysis import figures
from app import tables, texts
from app.checks import SIGMA_RANGE, check_sigma, first_int
from app.errors import UserError, user_errors
from app.state import AppState, Selection, SharedInputs
from app.summaries import detection_label, distribution_title
from app.tabs import compare
from app.tabs.common import (
    Controls,
    bind,
    figure_export_row,
    on_open,
    quietly,
    save_figure,
    selection,
    shared_inputs,
)


@user_errors
@selection
def distributions(
    state: AppState,
    sel: Selection,
    detection: str | int | None,
    sigma_scale: float,
    overlay_all: bool = True,
    x_range: str = "mass",
    axis: str = "px",
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> tuple[go.Figure, Image.Image, pd.DataFrame]:
    """The four edges × layers figure (x: pixels or bin index; range: the probability mass
    or the full W(n) range), the ±kσ overlay, the stats."""
    if (why := compare.no_distributions(sel, "The Distributions tab")) is not None:
        return figures.message_figure(why), sel.result.image, pd.DataFrame({"note": [why]})
    index, dist = edge_distributions(sel, detection)
    scale = check_sigma(sigma_scale)
    x_range, axis = _check_view(x_range, axis)
    fig = figures.distribution_figure(
        dist, title=distribution_title(sel, index), x_range=x_range, axis=axis
    )
    shown = np.arange(len(sel.detections)) if overlay_all else np.array([index])
    overlay = analysis.uncertainty_overlay(
        sel.result.image,
        sel.detections[shown],
        sel.result.trace,
        sel.queries[shown],
        scale=scale,
    )
    return fig, overlay, tables.edge_stats(dist)


@user_errors
@selection
def export_figure(
    state: AppState,
    sel: Selection,
    detection: str | int | None,
    fmt: str,
    x_range: str = "mass",
    axis: str = "px",
) -> str:
    """The distributions figure shown, as a PNG, SVG or HTML file (the same plotly figure)."""
    index, dist = edge_distributions(sel, detection)
    x_range, axis = _check_view(x_range, axis)
    fig = figures.distribution_figure(
        dist, title=distribution_title(sel, index), x_range=x_range, axis=axis
    )
    return save_figure(state, fig, f"edge_distributions_detection{index}", fmt)


X_RANGES = (("probability mass (≥ 99.9 % + margin)", "mass"), ("full W(n) range", "full"))
AXES = (("pixels", "px"), ("bin index n", "bin"))


def _check_view(x_range: str | None, axis: str | None) -> tuple[str, str]:
    x_range, axis = x_range or "mass", axis or "px"
    if x_range not in dict(map(reversed, X_RANGES)):
        raise UserError(f"The x range must be 'mass' or 'full', got {x_range!r}.")
    if axis not in dict(map(reversed, AXES)):
        raise UserError(f"The x axis must be 'px' or 'bin', got {axis!r}.")
    return x_range, axis


def edge_distributions(
    sel: Selection, detection: str | int | None
) -> tuple[int, analysis.EdgeDistributions]:
    """The chosen detection (default: the first) and its four edge distributions."""
    sel.require_detections()
    index = first_int(detection, "detection")
    index = 0 if index is None else sel.check_detection(index)
    dist = analysis.edge_distributions(
        sel.result.trace, int(sel.queries[index]), sel.result.image_size
    )
    return index, dist


@user_errors
@selection
def nearest_detection(
    state: AppState,
    sel: Selection,
    point: Sequence[float],
) -> str:
    """The picker label of the detection at image pixel ``point`` (x, y): the smallest box
    containing it, else the box whose edge is nearest."""
    sel.require_detections()
    return detection_label(nearest_box(sel.detections.boxes, point), sel.detections)


def nearest_box(boxes: np.ndarray, point: Sequence[float]) -> int:
    """Index of the smallest box of ``boxes`` (N, 4 xyxy) containing ``point``, else of the
    box nearest to it."""
    x, y = (float(v) for v in point[:2])
    x1, y1, x2, y2 = boxes.T
    inside = (x1 <= x) & (x <= x2) & (y1 <= y) & (y <= y2)
    if inside.any():
        area = np.where(inside, (x2 - x1) * (y2 - y1), np.inf)
        return int(np.argmin(area))
    dx = np.maximum(np.maximum(x1 - x, 0), x - x2)
    dy = np.maximum(np.maximum(y1 - y, 0), y - y2)
    return int(np.argmin(np.hypot(dx, dy)))


def picker(sel: Selection) -> dict:
    """After a new result: the detection picker's choices, the first chosen."""
    labels = [detection_label(i, sel.detections) for i in range(len(sel.detections))]
    return gr.update(choices=labels, value=labels[0] if labels else None)


def select_box(state: AppState, inputs: SharedInputs, evt: gr.SelectData) -> tuple[str, gr.Tabs]:
    """A click at ``evt.index`` (x, y) on the annotated image or the overlay: the picker label
    of the detection there, and this tab opened."""
    label = nearest_detection(state, *dataclasses.astuple(inputs), evt.index)
    return label, gr.Tabs(selected="distributions")


def build(state: AppState, controls: Controls) -> None:
    with gr.Tab("Distributions", id="distributions") as tab:
        gr.Markdown(texts.DISTRIBUTIONS, elem_classes="dfine-note")
        with gr.Row():
            pick = gr.Dropdown(
                choices=[],
                value="",
                allow_custom_value=True,
                label="Detection (index: class score)",
                scale=3,
                elem_id="distribution-detection",
            )
            sigma = gr.Slider(
                *SIGMA_RANGE,
                value=1.0,
                step=0.1,
                label="Band width in the overlay (× σ)",
                scale=2,
                elem_id="sigma-scale",
            )
            overlay_all = gr.Checkbox(value=True, label="Overlay: all detections", scale=1)
            button = gr.Button("Show distributions", variant="primary", scale=1)
        with gr.Row():
            x_range = gr.Radio(
                list(X_RANGES), value="mass", label="x range", scale=2, elem_id="dist-range"
            )
            axis = gr.Radio(list(AXES), value="px", label="x axis", scale=1, elem_id="dist-axis")
        plot = gr.Plot(label="Edge distributions", elem_id="dist-plot")
        with gr.Row():
            overlay = gr.Image(
                label="Uncertainty: ±kσ band per edge (click a box)",
                height=480,
                elem_id="uncertainty-overlay",
            )
            stats = gr.Dataframe(
                tables.empty(tables.EDGE_STATS_COLUMNS), label="Edge statistics", interactive=False
            )
        fmt, export, file = figure_export_row()
        compare.distributions_row(state, controls, pick)
    inputs = [*controls.shared(), pick, sigma, overlay_all, x_range, axis]
    outputs = [plot, overlay, stats]
    fn = bind(state, distributions)
    gr.on(
        [button.click, pick.input, sigma.release, overlay_all.input, x_range.input, axis.input],
        fn,
        inputs=inputs,
        outputs=outputs,
        api_name="distributions",
    )
    tab.select(on_open(fn, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    export.click(
        bind(state, export_figure),
        inputs=[*controls.shared(), pick, fmt, x_range, axis],
        outputs=file,
        api_name="distributions_figure",
    )

    on_click = quietly(bind(state, shared_inputs(select_box)), 2)
    for source in (controls.annotated, overlay):
        source.select(
            on_click,
            inputs=controls.shared(),
            outputs=[pick, controls.tabs],
            api_visibility="private",
        ).success(fn, inputs=inputs, outputs=outputs, api_visibility="private")
    controls.after_result(picker, [pick])
