"""The Model tab: load the default model, a model-zoo checkpoint or an uploaded one, see
what it is, and select it for every tab. Endpoint ``/model``."""

from __future__ import annotations

import gradio as gr

from app import texts
from app.errors import user_errors
from app.models import CHECKPOINT_SUFFIXES
from app.state import AppState
from app.summaries import model_markdown
from app.tabs.common import Controls, bind
from dfine.guard import precision_costs


@user_errors
def model_info(
    state: AppState,
    choice: str | None,
    checkpoint: str | None = None,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> tuple[str, str]:
    """Load a bundled/zoo model or an uploaded checkpoint: its description and its key
    (the ``model`` value of the other endpoints)."""
    if checkpoint:
        if progress is not None:
            progress(0.1, desc="Checking the uploaded checkpoint")
        loaded = state.store.add_upload(checkpoint)
    else:
        entry = state.store.entry(choice)
        if progress is not None and not state.store.is_loaded(entry.key):
            progress(0.05, desc=f"Loading {entry.label}")
        loaded = state.store.get(entry.key)
    return model_markdown(loaded), loaded.entry.key


def use_model(state: AppState, key: str) -> dict:
    """Select model ``key`` in the Detect tab (its list now includes uploads); the picker's
    change event (:func:`app.tabs.detect.switch_model`) does the rest, as for a pick."""
    return gr.update(choices=state.store.choices(), value=state.store.entry(key).key)


@user_errors
def precision_cost(
    state: AppState,
    key: str,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
) -> str:
    """Measure what bf16 costs for model ``key`` on this machine (OpenVINO, the example
    images): median latency and speed-up vs f32, and the drift of the detections."""

    loaded = state.store.get(key)
    if progress is not None:
        progress(0.1, desc="Exporting and compiling f32 and bf16 (OpenVINO)")
    rows = [c.row() for c in precision_costs(loaded.entry.source, ("f32", "bf16"))]
    return "\n".join(
        [
            "| precision | median ms | vs f32 | measured cost |",
            "|---|---|---|---|",
            *rows,
            "",
            "bf16 runs the backbone and encoder in bf16 and the decoder (FDR) in f32. For AP "
            "on your data and INT8: `dfine export W --format openvino --precision int8 "
            "--calibration DIR --val DATA`.",
        ]
    )


def build(state: AppState, controls: Controls) -> None:
    default = state.store.get(None)
    with gr.Tab("Model", id="model"):
        gr.Markdown(texts.MODEL, elem_classes="dfine-note")
        with gr.Row():
            choice = gr.Dropdown(
                choices=[c for c in state.store.choices() if not c[1].startswith("upload-")],
                value=default.entry.key,
                label="Default model or a model-zoo checkpoint",
                allow_custom_value=True,
                scale=2,
            )
            upload = gr.File(
                label="…or upload a checkpoint (.pth / .safetensors; takes precedence)",
                file_types=list(CHECKPOINT_SUFFIXES),
                scale=2,
                elem_id="model-upload",
            )
        button = gr.Button("Load and select this model", variant="primary", elem_id="model-load")
        info = gr.Markdown(model_markdown(default), label="Model info", elem_id="model-info")
        key = gr.Textbox(
            default.entry.key,
            label="Model key (the `model` value for the API)",
            interactive=False,
            max_lines=1,
        )
        with gr.Accordion("Reduced precision: measured cost on this machine", open=False):
            cost_button = gr.Button("Measure f32 vs bf16 (OpenVINO)")
            cost = gr.Markdown(elem_id="precision-cost")
    cost_button.click(
        bind(state, precision_cost), inputs=key, outputs=cost, api_name="precision_cost"
    )
    button.click(
        bind(state, model_info), inputs=[choice, upload], outputs=[info, key], api_name="model"
    ).success(
        bind(state, use_model),
        inputs=key,
        outputs=controls.model,
        api_visibility="private",
    )
