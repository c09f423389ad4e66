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
from dfine import optional
from dfine.guard import precision_costs

PRECISION_COST_NEEDS = ("onnx", "openvino")
"""The optional packages the precision measurement runs on (an ONNX export, OpenVINO)."""


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
    for module in PRECISION_COST_NEEDS:
        optional.require(module, "Measuring f32 vs bf16")
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


def precision_cost_controls() -> tuple[gr.Button, gr.Markdown]:
    """The "measure f32 vs bf16" button and its output; without OpenVINO (or onnx) the button
    is disabled and one line names the package to install."""
    absent = [optional.PARTS[m] for m in PRECISION_COST_NEEDS if not optional.available(m)]
    with gr.Accordion("Reduced precision: measured cost on this machine", open=False):
        if absent:
            gr.Markdown(
                "Measuring reduced precision needs "
                + " and ".join(f"`{p.package}`" for p in absent)
                + ", not installed here: `pip install "
                + " ".join(p.package for p in absent)
                + "`.",
                elem_id="precision-cost-absent",
            )
        button = gr.Button("Measure f32 vs bf16 (OpenVINO)", interactive=not absent)
        cost = gr.Markdown(elem_id="precision-cost")
    return button, cost


def budget_controls(state: AppState, key: str) -> tuple[dict, dict, str]:
    """The budget sliders for model ``key``: its depth and query count as the maxima, its
    current budget as the values."""
    loaded = state.store.get(key)
    cfg = loaded.model.config.decoder
    k, q = state.store.budget(key) or (cfg.num_layers, cfg.num_queries)
    return (
        gr.update(maximum=cfg.num_layers, value=k),
        gr.update(maximum=cfg.num_queries, value=q),
        f"{k} of {cfg.num_layers} decoder layers, {q} of {cfg.num_queries} queries.",
    )


@user_errors
def set_budget(
    state: AppState, key: str, decoder_layers: float | None, num_queries: float | None
) -> str:
    """``/budget``: run model ``key`` at the first K decoder layers on the top Q proposals in
    every tab from now on (the reference's ``eval_idx``); K = every layer and Q = 300 is the
    reference's own budget."""
    k = None if decoder_layers is None else int(decoder_layers)
    q = None if num_queries is None else int(num_queries)
    budget = state.store.set_budget(key, k, q)
    if budget is None:
        return "Every decoder layer on every query: the reference's own budget."
    return (
        f"**{budget[0]} decoder layer(s) on the top {budget[1]} queries** from now on: detections "
        f"equal the full model's layer {budget[0]} (with every query) and the analysis tabs "
        "show the layers that ran. `dfine predict/val/export/benchmark --decoder-layers K "
        "--num-queries Q` do the same; `dfine val --report` measures the trade."
    )


def build(state: AppState, controls: Controls) -> None:
    default = state.store.get(None)
    with gr.Tab("Model", id="model"):
        gr.Markdown(texts.MODEL, elem_classes="dfine-note")
        with gr.Row():
            choice = gr.Dropdown(
                choices=[c for c in state.store.choices() if not c[1].startswith("upload-")],
                value=default.entry.key,
                label="Default model, a model-zoo checkpoint or a Hugging Face Hub id (owner/name)",
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
        layers = default.num_layers
        with gr.Accordion("Decoder depth and query budget (speed vs accuracy)", open=False):
            with gr.Row():
                depth = gr.Slider(
                    1,
                    layers,
                    value=layers,
                    step=1,
                    elem_id="model-depth",
                    label="Decoder layers K run (the reference's eval_idx + 1)",
                )
                queries = gr.Slider(
                    1,
                    300,
                    value=300,
                    step=1,
                    elem_id="model-queries",
                    label="Queries Q kept from the encoder's proposals",
                )
                apply = gr.Button("Apply to this model", scale=0)
            budget = gr.Markdown(elem_id="model-budget")
        cost_button, cost = precision_cost_controls()
    cost_button.click(
        bind(state, precision_cost), inputs=key, outputs=cost, api_name="precision_cost"
    )
    apply.click(bind(state, set_budget), inputs=[key, depth, queries], outputs=budget,
                api_name="budget")  # fmt: skip
    button.click(
        bind(state, model_info), inputs=[choice, upload], outputs=[info, key], api_name="model"
    ).success(
        bind(state, use_model),
        inputs=key,
        outputs=controls.model,
        api_visibility="private",
    ).success(
        bind(state, budget_controls),
        inputs=key,
        outputs=[depth, queries, budget],
        api_visibility="private",
    )
