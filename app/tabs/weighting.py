"""The W(n) tab: the weighting function for any (reg_max, up, reg_scale), evenly spaced bins
for comparison, and the selected model's own W(n). Endpoints ``/weighting`` and
``/weighting_figure``."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

import analysis
from analysis import figures
from app import tables, texts
from app.checks import number
from app.errors import UserError, user_errors
from app.state import AppState
from app.summaries import weighting_summary
from app.tabs.common import Controls, bind, figure_export_row, on_open, save_figure
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import NoDistributionsError

REG_MAX_RANGE = (4, 128)


@user_errors
def weighting(
    state: AppState, reg_max: int, up: float, reg_scale: float, model: str | None
) -> tuple[go.Figure, pd.DataFrame, str]:
    """W(n) for the parameters, the evenly spaced bins, and the model's own W(n)."""
    curve = _curve(reg_max, up, reg_scale)
    loaded = state.store.get(model)
    if not loaded.model.config.decoder.distributions:  # --ablate fdr: no W(n) of its own
        why = NoDistributionsError.about(f"Its own W(n) ({loaded.entry.label})")
        return figures.weighting_figure(curve), tables.weighting(curve), str(why)
    own = analysis.model_weighting(loaded.model)
    fig = figures.weighting_figure(curve, model=own)
    return fig, tables.weighting(curve), weighting_summary(curve, own, loaded)


@user_errors
def export_figure(
    state: AppState, reg_max: int, up: float, reg_scale: float, model: str | None, fmt: str
) -> str:
    """The W(n) figure shown, as a PNG, SVG or HTML file (the same plotly figure)."""
    curve = _curve(reg_max, up, reg_scale)
    own = analysis.model_weighting(state.store.get(model).model)
    fig = figures.weighting_figure(curve, model=own)
    return save_figure(state, fig, f"weighting_regmax{curve.reg_max}", fmt)


def even_reg_max(reg_max: float | None) -> int:
    """The slider's value made valid: the nearest even whole number in range, odd ones
    rounded up (the number box of a slider accepts any typed value)."""
    try:
        value = float(reg_max)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = 32.0
    lo, hi = REG_MAX_RANGE
    if value != value:  # NaN
        value = 32.0
    return int(min(max(2 * math.floor(value / 2 + 0.5), lo), hi))  # odd: round up


def _curve(reg_max: int, up: float, reg_scale: float) -> analysis.WeightingCurve:
    try:  # reg_max is checked once, by dfine.nn.fdr.check_reg_max
        return analysis.weighting_curve(
            number(reg_max, "reg_max"), number(up, "up"), number(reg_scale, "reg_scale")
        )
    except InvalidArgumentError as e:
        raise UserError(f"{e}.") from e


def build(state: AppState, controls: Controls) -> None:
    default = state.store.get(None)
    decoder = default.model.decoder
    start = (default.model.config.decoder.reg_max, float(decoder.up), float(decoder.reg_scale))
    fig0, table0, summary0 = weighting(state, *start, None)  # shown before any click
    with gr.Tab("W(n)", id="weighting") as tab:
        gr.Markdown(texts.WEIGHTING, elem_classes="dfine-note")
        with gr.Row():
            reg_max = gr.Slider(
                *REG_MAX_RANGE,
                value=start[0],
                step=2,
                label="reg_max (bins − 1, even)",
                elem_id="reg-max",
            )
            up = gr.Slider(0.05, 5.0, value=float(decoder.up), step=0.05, label="up (range factor)")
            reg_scale = gr.Slider(
                0.5, 32.0, value=float(decoder.reg_scale), step=0.5, label="reg_scale (curvature)"
            )
            button = gr.Button("Plot W(n)", variant="primary")
        plot = gr.Plot(fig0, label="W(n) chart", elem_id="weighting-plot")
        summary = gr.Markdown(summary0, label="W(n) summary", elem_id="weighting-summary")
        with gr.Accordion("W(n) table", open=False):
            table = gr.Dataframe(table0, label="W(n) table", interactive=False)
        fmt, export, file = figure_export_row()
    inputs = [reg_max, up, reg_scale, controls.model]
    outputs = [plot, table, summary]
    fn = bind(state, weighting)
    gr.on(
        [button.click, up.release, reg_scale.release],
        fn,
        inputs=inputs,
        outputs=outputs,
        api_name="weighting",
    )
    # a typed odd value is snapped to the nearest even one first, then plotted
    reg_max.release(even_reg_max, inputs=reg_max, outputs=reg_max, api_visibility="private").then(
        fn, inputs=inputs, outputs=outputs, api_visibility="private"
    )
    tab.select(on_open(fn, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    export.click(
        bind(state, export_figure), inputs=[*inputs, fmt], outputs=file, api_name="weighting_figure"
    )
