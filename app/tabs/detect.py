"""The Detect tab: image, model, input size, threshold, detection limit and letterbox (the
inputs every image tab shares), and the detections. Endpoint ``/detect``; moving the threshold
or the limit re-filters the current result at once, without a new forward pass; toggling the
letterbox box detects again."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from app import tables, texts
from app.components import raw_image
from app.errors import to_gr_error, user_errors
from app.examples import photo_examples, synth_examples
from app.ground_truth import draw_truth
from app.models import DEFAULT_KEY, LoadedModel
from app.paths import DEFAULT_MAX_DETECTIONS, INPUT_SIZES
from app.state import AppState, Selection, SharedInputs
from app.summaries import detect_summary, model_note
from app.tabs.common import SHARED, Controls, bind, selection, shared_inputs, skip

DetectOutputs = tuple[Image.Image, pd.DataFrame, str, str]


@user_errors
@selection
def detect(
    state: AppState,
    sel: Selection,
    ground_truth: bool = False,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (gradio's idiom)
) -> DetectOutputs:
    """Annotated image (``ground_truth``: with the image's annotations dashed, when it has
    some), detections table (pixels), JSON file, summary with speed."""
    return _outputs(state, sel, ground_truth)


@shared_inputs
def redetect(
    state: AppState,
    inputs: SharedInputs,
    ground_truth: bool = False,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> DetectOutputs | tuple[Any, ...]:
    """:func:`detect` after the letterbox box is toggled; nothing while there is no image."""
    if inputs.image is None or not str(inputs.image).strip():
        return skip(4)
    values = [getattr(inputs, name) for name in SHARED]
    return detect(state, *values, ground_truth, progress)


def cleared() -> tuple[None, pd.DataFrame, None, str]:
    """Detect's outputs with nothing in them (no result describes the image shown)."""
    return None, tables.empty(tables.DETECTION_COLUMNS), None, ""


@shared_inputs
def open_image(
    state: AppState,
    inputs: SharedInputs,
    ground_truth: bool = False,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> DetectOutputs | tuple[Any, ...]:
    """:func:`detect` on an image another tab opened in Detect (a gallery thumbnail, a video
    frame); empty outputs when there is none."""
    if inputs.image is None or not str(inputs.image).strip():
        return cleared()
    values = [getattr(inputs, name) for name in SHARED]
    return detect(state, *values, ground_truth, progress)


@user_errors
@shared_inputs
def new_image(
    state: AppState, inputs: SharedInputs, ground_truth: bool = False
) -> DetectOutputs | tuple[Any, ...]:
    """Detect's outputs for an image the user just put in (upload, paste, webcam, an
    example): the cached result of these inputs when there is one (the bundled examples are
    run at start-up), else empty outputs until Detect is pressed."""
    sel = state.cached(inputs)
    return cleared() if sel is None else _outputs(state, sel, ground_truth)


@user_errors
@shared_inputs
def refilter(
    state: AppState, inputs: SharedInputs, ground_truth: bool = False
) -> DetectOutputs | tuple[Any, ...]:
    """What :func:`detect` shows for new threshold / limit / ground-truth values, from the
    cached forward pass only; nothing changes while there is no result for these inputs yet."""
    sel = state.cached(inputs)
    return skip(4) if sel is None else _outputs(state, sel, ground_truth)


def _outputs(state: AppState, sel: Selection, ground_truth: bool = False) -> DetectOutputs:
    dets = sel.detections
    json_path = state.outputs.path(f"detections_{Path(str(sel.inputs.image)).stem}.json")
    dets.to_json(json_path)
    truth = state.examples.find(sel.digest)
    summary = detect_summary(sel, truth is not None)
    annotated = Image.fromarray(sel.result.image)
    if ground_truth and truth is not None and truth.image_size == sel.result.image_size:
        annotated = draw_truth(annotated, truth)  # under the detections' labels
        n = len(truth.labels)
        summary += (
            f"\n\nDashed white boxes: this image's ground truth ({n} object"
            f"{'s' if n != 1 else ''}, from {truth.file_name}'s annotations)."
        )
    if len(dets):
        annotated = dets.plot(annotated)
    return annotated, tables.detections(dets), str(json_path), summary


SwitchOutputs = tuple[Any, ...]
"""Model picker, last good model, threshold, input size, model note, then Detect's outputs."""


@user_errors
@shared_inputs
def switch_model(
    state: AppState,
    inputs: SharedInputs,
    ground_truth: bool = False,
    good: str | None = None,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> SwitchOutputs:
    """The model picker moved from ``good`` (the last model that loaded) to
    ``inputs.model``: load it (a zoo checkpoint downloads once) and detect again on the image
    shown. The threshold and input size stay as the user set them; each follows the new
    model's own default only while it still is the previous model's default. When the model
    cannot be loaded, a warning says why and the picker goes back to ``good``: nothing else
    changes, the last result stays whole."""
    before = state.store.get(good or DEFAULT_KEY)
    try:
        entry = state.store.entry(inputs.model)  # a name typed into the picker may be unknown
        if entry.key == before.entry.key:
            return (gr.skip(),) * 9
        if progress is not None and not state.store.is_loaded(entry.key):
            progress(0.05, desc=f"Loading {entry.label}")
        loaded = state.store.get(entry.key)
    except Exception as exc:  # shown and logged by to_gr_error; the picker is restored
        error = to_gr_error(exc)
        gr.Warning(error.message, title=error.title)
        return (before.entry.key, before.entry.key, *(gr.skip(),) * 7)
    threshold = _follow(
        float(inputs.threshold), before.entry.default_threshold, loaded.entry.default_threshold
    )
    size = _follow(inputs.size, before.default_size, loaded.default_size)
    head = (loaded.entry.key, loaded.entry.key, threshold, size, model_note(loaded))
    if inputs.image is None or not str(inputs.image).strip():
        return (*head, *(gr.skip(),) * 4)
    sel = state.select(dataclasses.replace(inputs, threshold=threshold, size=size), progress)
    return (*head, *_outputs(state, sel, ground_truth))


def _follow(value: Any, old_default: Any, new_default: Any) -> Any:
    """``value`` after a model switch: the new model's default when ``value`` was the old
    model's (the user left it), else unchanged (the user chose it)."""
    try:
        untouched = math.isclose(float(value), float(old_default))
    except (TypeError, ValueError):
        untouched = False
    return new_default if untouched else value


def build(state: AppState, tabs: gr.Tabs) -> Controls:
    """The Detect tab; returns the controls the other tabs share."""
    default: LoadedModel = state.store.get(None)
    with gr.Tab("Detect", id="detect"):
        gr.Markdown(texts.DETECT, elem_classes="dfine-note")
        with gr.Row():
            with gr.Column(scale=1):
                image = raw_image(
                    sources=["upload", "webcam", "clipboard"],
                    label="Image (upload, webcam or paste)",
                    height=360,
                    elem_id="input-image",
                )
                model = gr.Dropdown(
                    choices=state.store.choices(),
                    value=default.entry.key,
                    label="Model",
                    info="Zoo models are downloaded on first use; upload your own in the Model tab.",
                    allow_custom_value=True,
                    elem_id="model",
                )
                note = gr.Markdown(model_note(default), elem_id="model-note")
                with gr.Row():
                    size = gr.Dropdown(
                        choices=list(INPUT_SIZES),
                        value=default.default_size,
                        label="Input size (px, square)",
                        info="The image is resized to this before the network.",
                        elem_id="input-size",
                    )
                    threshold = gr.Slider(
                        0.0,
                        1.0,
                        value=default.entry.default_threshold,
                        step=0.005,
                        label="Score threshold (0–1)",
                        info="Detections scoring above this are shown."
                        + (" For the fixture use ≈0.02." if default.entry.is_fixture else ""),
                        elem_id="threshold",
                    )
                letterbox = gr.Checkbox(
                    False,
                    label="Keep aspect ratio (letterbox)",
                    info="Fit the image into the input size and pad with grey instead of "
                    "stretching it (boxes are mapped back to the image's pixels). Off: the "
                    "reference's stretch resize.",
                    elem_id="letterbox",
                )
                show_truth = gr.Checkbox(
                    True,
                    label="Draw the ground truth (dashed white) when the image has annotations",
                    info="The synthetic examples and images opened from an evaluation have "
                    "annotations.",
                    elem_id="show-truth",
                )
                max_dets = gr.Slider(
                    1,
                    300,
                    value=DEFAULT_MAX_DETECTIONS,
                    step=1,
                    label="At most this many detections (highest scores first)",
                    elem_id="max-detections",
                )
                button = gr.Button("Detect", variant="primary", elem_id="detect-button")
                galleries = [
                    (photo_examples(), "Photos"),
                    (synth_examples(), "Synthetic shapes (with ground truth; see the GO-LSD tab)"),
                ]
                if default.is_synthetic:  # what the default model knows comes first
                    galleries.reverse()
                examples_loaded = [
                    gr.Examples(examples, inputs=[image], label=label, cache_examples=False)
                    for examples, label in galleries
                ]
            with gr.Column(scale=1):
                annotated = gr.Image(
                    label="Detections", interactive=False, height=420, elem_id="annotated"
                )
                summary = gr.Markdown(label="Summary", elem_id="detect-summary")
                table = gr.Dataframe(
                    tables.empty(tables.DETECTION_COLUMNS),
                    label="Detections table (pixels of the original image)",
                    interactive=False,
                    elem_id="detections-table",
                )
                json_file = gr.File(label="Detections JSON", height=90, elem_id="detections-json")
        good = gr.State(default.entry.key)  # the last model that loaded: a failed switch's way back
    controls = Controls(image, threshold, size, model, max_dets, annotated, tabs)
    controls.letterbox, controls.show_truth = letterbox, show_truth
    outputs = [annotated, table, json_file, summary]
    inputs = [*controls.shared(), show_truth]
    pressed = button.click(bind(state, detect), inputs=inputs, outputs=outputs, api_name="detect")
    moved = gr.on(
        [threshold.release, max_dets.release, show_truth.input],
        bind(state, refilter),
        inputs=inputs,
        outputs=outputs,
        api_visibility="private",
        show_progress="hidden",
    )
    toggled = letterbox.input(
        bind(state, redetect), inputs=inputs, outputs=outputs, api_visibility="private"
    )
    switched = model.change(
        bind(state, switch_model),
        inputs=[*inputs, good],
        outputs=[model, good, threshold, size, note, *outputs],
        api_visibility="private",
    )
    controls.result_events += [pressed, moved, toggled, switched]
    controls.detect_outputs = outputs
    controls.show_input = {True: bind(state, open_image), False: bind(state, new_image)}
    controls.replaced(image.input, detect=False)  # upload, paste, webcam, cleared
    for examples in examples_loaded:
        controls.replaced(examples.load_input_event.then, detect=False)
    controls.model_note = note
    return controls
