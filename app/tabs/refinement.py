"""The Refinement tab: the chosen detections' boxes stage by stage (encoder b0, pre-head,
every decoder layer), IoU to the final box and edge movement. Endpoint ``/trace``."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

import analysis
from analysis import figures
from app import tables, texts
from app.checks import check_stage, first_int
from app.errors import user_errors
from app.models import LoadedModel
from app.paths import MAX_STAGES
from app.state import AppState, Selection
from app.summaries import detection_label
from app.tabs import compare
from app.tabs.common import Controls, bind, on_open, selection

DEFAULT_SELECTION = 5
"""How many detections are followed when none is chosen (the highest-scoring ones)."""


@user_errors
@selection
def trace(
    state: AppState,
    sel: Selection,
    detections: Sequence[str] | str | None,
    stage: int | float,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> tuple[Image.Image, go.Figure, pd.DataFrame]:
    """The chosen detections at one stage (previous stage ghosted), the IoU-to-final and
    edge-movement chart, and the per-stage table."""
    sel.require_detections()
    picked = picked_detections(sel, detections)
    stage_i = check_stage(stage, len(analysis.refinement_stages(sel.result.trace)))
    names = sel.model.class_names
    ref = analysis.refinement(
        sel.result.trace,
        sel.queries[picked],
        sel.result.image_size,
        sel.detections.labels[picked],
    )
    overlay = analysis.refinement_overlay(sel.result.image, ref, stage_i, class_names=names)
    fig = figures.refinement_figure(ref, 0, names)
    fig.update_layout(
        title=f"Layer-by-layer box refinement<br>showing stage: {ref.stages[stage_i]}"
    )
    figures.responsive(fig)  # the longer title wrapped too
    return overlay, fig, tables.refinement(ref, picked, names)


def picked_detections(sel: Selection, detections: Sequence[str] | str | None) -> list[int]:
    """The indices a picker value names; none: the top :data:`DEFAULT_SELECTION`."""
    values = [detections] if isinstance(detections, (str, int)) else list(detections or [])
    picked = [i for i in (first_int(v, "detection") for v in values) if i is not None]
    if not picked:
        return list(range(min(DEFAULT_SELECTION, len(sel.detections))))
    for i in picked:
        sel.check_detection(i)
    return list(dict.fromkeys(picked))


def pickers(sel: Selection) -> tuple[dict, dict]:
    """After a new result: the detection picker's choices (none chosen) and the
    stage slider's range (the model's stages)."""
    labels = [detection_label(i, sel.detections) for i in range(len(sel.detections))]
    last = len(analysis.refinement_stages(sel.result.trace)) - 1
    return (
        gr.update(choices=labels, value=[]),
        gr.update(maximum=last, value=last),
    )


def build(state: AppState, controls: Controls) -> None:
    default: LoadedModel = state.store.get(None)
    last = default.num_layers + 1
    with gr.Tab("Refinement", id="refinement") as tab:
        gr.Markdown(texts.REFINEMENT, elem_classes="dfine-note")
        with gr.Row():
            picks = gr.Dropdown(
                choices=[],
                value=[],
                multiselect=True,
                allow_custom_value=True,
                label=f"Detections to follow (none chosen: the top {DEFAULT_SELECTION})",
                scale=3,
                elem_id="refinement-detections",
            )
            stage = gr.Slider(
                0,
                MAX_STAGES - 1,  # any official model; narrowed to the model's after Detect
                value=last,
                step=1,
                label=f"Stage: 0 = encoder b0, 1 = pre-head, 2… = decoder layer 1… ({last} = "
                "the default model's final layer)",
                scale=3,
                elem_id="stage",
            )
            button = gr.Button("Show refinement", variant="primary", scale=1)
        with gr.Row():
            overlay = gr.Image(
                label="Chosen stage (dashed: the one before)",
                height=480,
                elem_id="refinement-overlay",
            )
            plot = gr.Plot(label="Refinement chart", elem_id="refinement-plot")
        with gr.Accordion("Per-stage table (pixels; + = outward)", open=False):
            table = gr.Dataframe(
                tables.empty(tables.REFINEMENT_COLUMNS), label="Refinement table", interactive=False
            )
        compare.refinement_row(state, controls)
    inputs = [*controls.shared(), picks, stage]
    outputs = [overlay, plot, table]
    fn = bind(state, trace)
    gr.on(
        [button.click, stage.release, picks.input],
        fn,
        inputs=inputs,
        outputs=outputs,
        api_name="trace",
    )
    tab.select(on_open(fn, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    controls.after_result(pickers, [picks, stage])
