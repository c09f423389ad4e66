"""A second model beside the first on the same image (e.g. a full D-FINE against its
``--ablate golsd`` / ``--ablate fdr`` variants), for the Refinement and Distributions tabs.

Endpoints ``/compare_refinement`` (per-layer IoU curves of both models with the same objects:
the image's annotations when it is one of the annotated examples, else the first model's
detections) and ``/compare_distributions`` (the same edge of the chosen detection, per layer,
in both models). The computation and figures are :mod:`analysis.compare` and
``analysis.figures``; the tabs add the controls with :func:`refinement_row` /
:func:`distributions_row`. Also :func:`no_distributions`, the answer of the tabs that need
distributions for a model trained without them.
"""

from __future__ import annotations

import dataclasses

import gradio as gr
import plotly.graph_objects as go

import analysis
from analysis import figures
from app.checks import first_int
from app.errors import UserError, user_errors
from app.state import AppState, Selection, SharedInputs
from app.tabs.common import Controls, bind, shared_inputs
from dfine.nn.decoder import NoDistributionsError

NONE_CHOICE = ("(no second model)", "")
CHOOSE_TEXT = "Choose a second model above to compare it with the first on this image."


def no_distributions(sel: Selection, what: str) -> str | None:
    """The explanation when ``sel``'s model has no distributions (``--ablate fdr``), else
    ``None``."""
    if sel.result.trace.has_distributions:
        return None
    return str(NoDistributionsError.about(f"{what} of {sel.model.entry.label}"))


def _name(sel: Selection) -> str:
    label = sel.model.entry.label
    return label if len(label) <= 40 else label[:39] + "…"


def _objects(state: AppState, sel: Selection):
    """The objects to compare on: the annotations of an annotated example, else ``sel``'s
    detections. Returns ``(boxes_xyxy [N, 4] px, labels [N], what they are)``."""
    truth = state.examples.find(sel.digest)
    if (
        truth is not None
        and truth.image_size == sel.result.image_size
        and (not len(truth.labels) or int(truth.labels.max()) < sel.model.num_classes)
    ):
        return truth.boxes_xyxy, truth.labels, "ground truth"
    sel.require_detections()
    return sel.detections.boxes, sel.detections.labels, f"detections of {_name(sel)}"


def _pair(
    state: AppState, inputs: SharedInputs, other: str | None, progress: gr.Progress | None
) -> tuple[Selection, Selection]:
    first = state.select(inputs, progress)
    second = state.select(dataclasses.replace(inputs, model=other), progress)
    if first.model.entry.key == second.model.entry.key:
        raise UserError("The second model is the first one; choose another model to compare.")
    return first, second


@user_errors
@shared_inputs
def compare_refinement(
    state: AppState,
    inputs: SharedInputs,
    other: str | None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> go.Figure:
    """Per-layer IoU of both models' matched queries with the same objects."""
    if not other:
        return figures.message_figure(CHOOSE_TEXT)
    first, second = _pair(state, inputs, other, progress)
    objects, labels, reference = _objects(state, first)
    cmp = analysis.compare_refinement(
        [first.result.trace, second.result.trace],
        [_name(first), _name(second)],
        objects,
        labels,
        first.result.image_size,
        reference,
    )
    return figures.refinement_comparison_figure(cmp)


@user_errors
@shared_inputs
def compare_distributions(
    state: AppState,
    inputs: SharedInputs,
    detection: str | int | None,
    other: str | None,
    edge: str,
    progress: gr.Progress = gr.Progress(),  # noqa: B008
) -> go.Figure:
    """The chosen edge of the chosen detection (of the first model) per layer in both models."""
    if not other:
        return figures.message_figure(CHOOSE_TEXT)
    if edge not in analysis.EDGES:
        raise UserError(f"The edge must be one of {', '.join(analysis.EDGES)}, got {edge!r}.")
    first, second = _pair(state, inputs, other, progress)
    first.require_detections()
    index = first_int(detection, "detection")
    index = 0 if index is None else first.check_detection(index)
    cmp = analysis.compare_edge(
        [first.result.trace, second.result.trace],
        [_name(first), _name(second)],
        first.detections.boxes[index],
        int(first.detections.labels[index]),
        first.result.image_size,
        edge,
        reference=f"detection #{index} of {_name(first)}",
    )
    return figures.edge_comparison_figure(cmp)


def _model_picker(state: AppState, elem_id: str) -> gr.Dropdown:
    return gr.Dropdown(
        choices=[NONE_CHOICE, *state.store.choices()],
        value="",
        allow_custom_value=True,
        label="Second model (any loaded, zoo or uploaded model; e.g. an --ablate variant)",
        scale=3,
        elem_id=elem_id,
    )


def _refresh(state: AppState):
    def update(_: Selection) -> dict:  # uploads appear after a new result
        return gr.update(choices=[NONE_CHOICE, *state.store.choices()])

    return update


def refinement_row(state: AppState, controls: Controls) -> None:
    """The Refinement tab's "compare with a second model" controls and plot."""
    with gr.Accordion("Compare with a second model", open=False):
        with gr.Row():
            other = _model_picker(state, "compare-refinement-model")
            button = gr.Button("Compare", scale=1)
        plot = gr.Plot(label="Per-layer IoU of both models", elem_id="compare-refinement-plot")
    gr.on(
        [button.click, other.input],
        bind(state, compare_refinement),
        inputs=[*controls.shared(), other],
        outputs=plot,
        api_name="compare_refinement",
    )
    controls.after_result(_refresh(state), [other])


def distributions_row(state: AppState, controls: Controls, detection: gr.Dropdown) -> None:
    """The Distributions tab's "compare with a second model" controls and plot."""
    with gr.Accordion("Compare with a second model", open=False):
        with gr.Row():
            other = _model_picker(state, "compare-distributions-model")
            edge = gr.Radio(list(analysis.EDGES), value="left", label="Edge", scale=2)
            button = gr.Button("Compare", scale=1)
        plot = gr.Plot(label="The same edge in both models", elem_id="compare-dist-plot")
    gr.on(
        [button.click, other.input, edge.input],
        bind(state, compare_distributions),
        inputs=[*controls.shared(), detection, other, edge],
        outputs=plot,
        api_name="compare_distributions",
    )
    controls.after_result(_refresh(state), [other])
