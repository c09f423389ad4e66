"""The Attention tab: where the decoder looked for one detection. Per decoder layer its
deformable-attention sampling points over the image (colour: feature level, size: weight) and
the attention mass per feature cell; where its query came from in the encoder's top-k
selection; and the queries it attended to in self-attention. Endpoint ``/attention``; a click
on a box (in the Detect tab or in this tab's image) picks the detection."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gradio as gr
import plotly.graph_objects as go
from PIL import Image

from analysis import attention_figures as figures
from analysis import attention_view as view
from app import texts
from app.checks import first_int, number
from app.errors import UserError, user_errors
from app.state import AppState, Selection, SharedInputs
from app.summaries import detection_label
from app.tabs import distributions
from app.tabs.common import Controls, bind, on_open, quietly, selection, shared_inputs

MAX_LAYERS = 6
"""Decoder layers of the largest official model (the slider is narrowed after Detect)."""
MAX_HEADS = 8
NEIGHBOURS = 5
"""How many self-attention neighbours are drawn."""


@user_errors
@selection
def attention(
    state: AppState,
    sel: Selection,
    detection: str | int | None,
    layer: int | float,
    heads: Sequence[str | int] | None = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure, Image.Image]:
    """For the chosen detection (default: the first) at decoder layer ``layer`` (1 = the
    first) and attention ``heads`` (1-based; ``None``: all): the sampling points, the
    per-level heat maps, the query's origin in the encoder selection, the self-attention
    neighbours; and the detections image to click on."""
    sel.require_detections()
    index = first_int(detection, "detection")
    index = 0 if index is None else sel.check_detection(index)
    trace, size, image = sel.result.trace, sel.result.image_size, sel.result.image
    if not trace.has_attention:
        raise UserError("This result has no attention recorded; press Detect again.")
    lay = check_layer(layer, trace.num_layers)
    query = int(sel.queries[index])
    att = view.attention_view(trace, query, size)
    picked = check_heads(heads, att.num_heads)
    names = sel.model.class_names
    points = figures.attention_points_figure(att, image, lay, picked)
    heat = figures.attention_heat_figure(att, image, lay, picked)
    origin = figures.query_origin_figure(view.query_origin(trace, query, size), image)
    nb = view.self_attention_neighbours(trace, query, size, NEIGHBOURS)
    neighbours = figures.self_attention_figure(nb, image, lay, names)
    return points, heat, origin, neighbours, sel.detections.plot()


def check_layer(layer: int | float | None, num_layers: int) -> int:
    """A 1-based layer number as a 0-based index, or a ``UserError`` naming the range."""
    value = number(layer, "decoder layer")
    if value != int(value) or not 1 <= value <= num_layers:
        raise UserError(
            f"The decoder layer must be a whole number from 1 to {num_layers}, got {value:g}."
        )
    return int(value) - 1


def check_heads(heads: Sequence[str | int] | None, num_heads: int) -> list[int] | None:
    """1-based head numbers (``"3"`` or ``3``) as 0-based indices; ``None`` (not given): all."""
    if heads is None:
        return None
    if not heads:
        raise UserError("Tick at least one attention head.")
    picked = [first_int(h, "attention head") for h in heads]
    bad = [h for h in picked if h is None or not 1 <= h <= num_heads]
    if bad:
        raise UserError(f"The attention heads are numbered 1 to {num_heads}, got {list(heads)}.")
    return [h - 1 for h in picked]


def controls_for(sel: Selection) -> tuple[dict, dict, dict]:
    """After a new result: the detection picker (first chosen), the layer slider's range (the
    model's layers, the last chosen) and the head choices (every head ticked)."""
    labels = [detection_label(i, sel.detections) for i in range(len(sel.detections))]
    trace = sel.result.trace
    heads = trace.sampling_locations.shape[3] if trace.has_attention else MAX_HEADS
    choices = [str(h + 1) for h in range(heads)]
    return (
        gr.update(choices=labels, value=labels[0] if labels else None),
        gr.update(maximum=trace.num_layers, value=trace.num_layers),
        gr.update(choices=choices, value=choices),
    )


def select_box(state: AppState, inputs: SharedInputs, evt: gr.SelectData) -> str:
    """A click at ``evt.index`` (x, y) on an image of the detections: the picker label of the
    detection there."""
    return distributions.nearest_detection(state, *dataclasses.astuple(inputs), evt.index)


def build(state: AppState, controls: Controls) -> None:
    with gr.Tab("Attention", id="attention") as tab:
        gr.Markdown(texts.ATTENTION, elem_classes="dfine-note")
        with gr.Row():
            pick = gr.Dropdown(
                choices=[], value="", allow_custom_value=True,
                label="Detection (index: class score)", scale=3, elem_id="attention-detection",
            )  # fmt: skip
            layer = gr.Slider(
                1, MAX_LAYERS, value=state.store.get(None).num_layers, step=1,
                label="Decoder layer", scale=2, elem_id="attention-layer",
            )  # fmt: skip
            button = gr.Button("Show attention", variant="primary", scale=1)
        heads = gr.CheckboxGroup(
            [str(h + 1) for h in range(MAX_HEADS)],
            value=[str(h + 1) for h in range(MAX_HEADS)],
            label="Attention heads shown (sampling points and heat maps)",
            elem_id="attention-heads",
        )
        with gr.Row():
            points = gr.Plot(label="Sampling points", elem_id="attention-points", scale=3)
            picker_image = gr.Image(
                label="Click a box to pick it",
                height=420, scale=2, elem_id="attention-pick-image",
            )  # fmt: skip
        heat = gr.Plot(label="Attention mass per feature cell", elem_id="attention-heat")
        origin = gr.Plot(label="Where the query came from", elem_id="attention-origin")
        neighbours = gr.Plot(label="Self-attention neighbours", elem_id="attention-neighbours")
    inputs = [*controls.shared(), pick, layer, heads]
    outputs = [points, heat, origin, neighbours, picker_image]
    fn = bind(state, attention)
    # one queue for every redraw, first come first served: a redraw for a box just clicked
    # always lands after one the tab's opening asked for with the previous pick
    queue = {"concurrency_id": "attention", "concurrency_limit": 1}
    gr.on(
        [button.click, pick.input, layer.release, heads.input],
        fn,
        inputs=inputs,
        outputs=outputs,
        api_name="attention",
        **queue,
    )
    tab.select(on_open(fn, 5), inputs=inputs, outputs=outputs, api_visibility="private", **queue)
    on_click = quietly(bind(state, shared_inputs(select_box)), 1)
    # a box clicked here, or in the Detect tab (which opens Distributions), is the one shown
    for source in (picker_image, controls.annotated):
        source.select(
            on_click, inputs=controls.shared(), outputs=[pick], api_visibility="private"
        ).success(fn, inputs=inputs, outputs=outputs, api_visibility="private", **queue)
    controls.after_result(controls_for, [pick, layer, heads])


__all__ = ["attention", "build"]
