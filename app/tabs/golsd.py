"""The GO-LSD tab: the final layer as teacher of the earlier ones (DDF loss) for one image,
with the annotations of the synthetic examples or the model's own detections as targets.
Endpoint ``/golsd``."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

import analysis
from analysis import figures
from app import tables, texts
from app.checks import first_int
from app.errors import UserError, user_errors
from app.examples import synth_examples
from app.ground_truth import GroundTruth
from app.state import AppState, Selection
from app.summaries import compact, golsd_summary, query_choices, query_label, targets_image
from app.tabs import compare
from app.tabs.common import Controls, bind, on_open, quietly, selection

TARGET_MODES = ("auto", "annotations", "pseudo")


@user_errors
@selection
def golsd(
    state: AppState,
    sel: Selection,
    targets: str,
    query: str | int | None,
    edge: str,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> tuple[str, Image.Image, str, go.Figure, go.Figure, go.Figure, pd.DataFrame]:
    """Summary, the targets drawn on the image, the query shown (``"query 12: …"``), teacher
    vs student distributions of its edge, its KL per layer, the loss split and the
    weights of the top queries."""
    if (why := compare.no_distributions(sel, "GO-LSD")) is not None:
        empty = figures.message_figure(why)
        return why, sel.result.image, "", empty, empty, empty, pd.DataFrame({"note": [why]})
    mode = str(targets or "auto")
    if mode not in TARGET_MODES:
        raise UserError(f"Targets must be one of {', '.join(TARGET_MODES)}, got {mode!r}.")
    if edge not in analysis.EDGES:
        raise UserError(f"The edge must be one of {', '.join(analysis.EDGES)}, got {edge!r}.")
    if progress is not None:
        progress(0.7, desc="Matching queries to targets (GO-LSD)")
    report, truth = report_for(state, sel, mode)
    q = first_int(query, "query")
    q = int(report.ranked_queries()[0]) if q is None else q
    if not 0 <= q < report.num_queries:
        raise UserError(f"The query must be between 0 and {report.num_queries - 1}, got {q}.")
    names = truth.names if truth is not None else sel.model.class_names
    return (
        golsd_summary(report, sel, truth),
        targets_image(sel, report, names, q),
        query_label(report, q, names),
        compact(figures.golsd_distribution_figure(report, q, edge)),
        compact(figures.golsd_kl_figure(report, q)),
        compact(figures.golsd_loss_figure(report)),
        tables.golsd(report, names),
    )


@user_errors
@selection
def queries(
    state: AppState,
    sel: Selection,
    targets: str,
    query: str | None,
) -> dict:
    """The query picker's choices: the top contributors to the loss and the query shown."""
    report, truth = report_for(state, sel, str(targets or "auto"))
    names = truth.names if truth is not None else sel.model.class_names
    q = first_int(query, "query")
    q = int(report.ranked_queries()[0]) if q is None else q
    return gr.update(choices=query_choices(report, q, names), value=query)


def report_for(
    state: AppState, sel: Selection, mode: str
) -> tuple[analysis.GOLSDReport, GroundTruth | None]:
    """The GO-LSD report of a selection (kept in the tab's LRU) and its ground truth."""
    truth = state.examples.find(sel.digest) if mode != "pseudo" else None
    if mode == "annotations" and truth is None:
        raise UserError(
            "This image has no annotations: only the synthetic examples do. Pick one of "
            "them, or choose 'pseudo ground truth' to use the model's own detections."
        )
    r = sel.result
    key: tuple[Any, ...] = (sel.digest, r.model_key, r.size, r.letterbox, truth is None)
    key += (sel.threshold, sel.max_detections) if truth is None else ()

    def compute() -> analysis.GOLSDReport:
        return analysis.golsd(
            sel.result.trace,
            _targets(sel, truth),
            sel.model.criterion(),
            image_size=sel.result.image_size,
            pseudo=truth is None,
        )

    return state.memo("golsd").get(key, compute), truth


def _targets(sel: Selection, truth: GroundTruth | None) -> list[dict[str, Any]]:
    if truth is None:
        if len(sel.detections) == 0:
            raise UserError(
                f"No detections above the threshold {sel.threshold:g} to use as pseudo "
                "ground truth; lower the threshold in the Detect tab."
            )
        return analysis.pseudo_targets(sel.detections, min_score=0.0)
    if truth.image_size != sel.result.image_size:
        raise UserError("The annotations are for an image of another size.")
    if len(truth.labels) and truth.labels.max() >= sel.model.num_classes:
        raise UserError(
            f"The annotations use {len(truth.names)} classes but the model has only "
            f"{sel.model.num_classes}; use pseudo ground truth with this model."
        )
    return truth.targets()


def clear_picker(sel: Selection) -> dict:
    """After a new result the old query list no longer applies."""
    return gr.update(choices=[], value=None)


def build(state: AppState, controls: Controls) -> None:
    with gr.Tab("GO-LSD", id="golsd") as tab:
        gr.Markdown(texts.GOLSD, elem_classes="dfine-note")
        with gr.Row():
            targets = gr.Radio(texts.TARGET_MODES, value="auto", label="Ground truth", scale=3)
            edge = gr.Radio(["left", "top", "right", "bottom"], value="left", label="Edge", scale=2)
        with gr.Row():
            query = gr.Dropdown(
                choices=[],
                value="",
                allow_custom_value=True,
                label="Query (empty: the largest contributor to the loss)",
                elem_id="golsd-query",
                scale=4,
            )
            button = gr.Button("Show GO-LSD", variant="primary", scale=1)
        examples = gr.Examples(
            synth_examples(),
            inputs=[controls.image],
            label="Annotated synthetic examples (sets the Detect tab's image)",
            cache_examples=False,
        )
        controls.replaced(examples.load_input_event.then, detect=False)
        note = gr.Markdown(label="GO-LSD summary", elem_id="golsd-note")
        with gr.Row():
            image = gr.Image(label="Targets (white: the query's final box)", height=420)
            dist = gr.Plot(label="Teacher vs students")
        with gr.Row():
            kl = gr.Plot(label="KL per student layer")
            loss = gr.Plot(label="DDF loss split")
        table = gr.Dataframe(
            tables.empty(tables.GOLSD_COLUMNS), label="DDF weights", interactive=False
        )
    inputs = [*controls.shared(), targets, query, edge]
    outputs = [note, image, query, dist, kl, loss, table]
    fill = {
        "fn": quietly(bind(state, queries), 1),
        "inputs": [*controls.shared(), targets, query],
        "outputs": query,
        "api_visibility": "private",
    }
    fn = bind(state, golsd)
    gr.on(
        [button.click, query.input, edge.input, targets.input],
        fn,
        inputs=inputs,
        outputs=outputs,
        api_name="golsd",
    ).success(**fill)
    tab.select(on_open(fn, 7), inputs=inputs, outputs=outputs, api_visibility="private").success(
        **fill
    )
    controls.after_result(clear_picker, [query])
