"""The gr.Blocks layout: six tabs over :class:`app.handlers.Handlers`.

Every tab's main action is a named API endpoint (``/detect``, ``/trace``, ``/distributions``,
``/weighting``, ``/golsd``, ``/model``); the helper events (filling pickers, clicking a box,
opening a tab) are private.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from app import texts
from app.checks import SIGMA_RANGE
from app.components import raw_image
from app.examples import photo_examples, synth_examples
from app.handlers import Handlers
from app.models import LoadedModel, ModelStore
from app.paths import DEFAULT_MAX_DETECTIONS, FIXTURE_BANNER, INPUT_SIZES, MAX_STAGES, REPO
from app.summaries import model_markdown
from app.tabs import evaluate as evaluate_tab

CSS = """
.dfine-banner { background: #fff4d6; border: 1px solid #f0c36d; border-radius: 8px;
  padding: 10px 14px; color: #5c4400; }
.dfine-note { color: #555; font-size: 0.92em; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: theme (system fonts only, so nothing is fetched
    from the internet), CSS, upload limit, and the asset folder the examples live in."""
    theme = gr.themes.Soft(
        primary_hue="blue",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    return {
        "theme": theme,
        "css": CSS,
        "max_file_size": "400mb",
        "allowed_paths": [str(REPO / "assets")],
    }


def build_demo(model_path: str | None = None) -> gr.Blocks:
    """The app. ``model_path``: the default model's checkpoint (default: the bundled demo model
    ``assets/dfine_n_synth.safetensors``, or the parity fixture while it is not bundled)."""
    handlers = Handlers(ModelStore(model_path))
    default = handlers.store.get(None)  # load it now: the first request should be fast
    with gr.Blocks(title=texts.TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(texts.INTRO)
        if default.entry.is_fixture:
            gr.Markdown(
                f"⚠️ **{FIXTURE_BANNER}.** Its scores are all about 0.05, so the threshold "
                "starts at 0.02; the app works end to end but shows nothing meaningful until "
                "the demo weights are added.",
                elem_classes="dfine-banner",
                elem_id="fixture-banner",
            )
        with gr.Tabs() as tabs:
            ui = _detect_tab(handlers, default)
            _refinement_tab(handlers, ui, default)
            _distributions_tab(handlers, ui, tabs)
            _weighting_tab(handlers, ui, default)
            _golsd_tab(handlers, ui)
            _model_tab(handlers, ui)
            evaluate_tab.build(handlers, ui, tabs, _image_files(handlers, handlers.detect))
        _wire_pickers(handlers, ui)
    demo.dfine_handlers = handlers  # for tests and embedding
    return demo


class Inputs(dict):
    """The components other tabs read (attribute access for readability)."""

    __getattr__ = dict.__getitem__

    def shared(self) -> list[gr.components.Component]:
        """The Detect tab's inputs that every image endpoint starts with."""
        return [self.image, self.threshold, self.size, self.model, self.max_detections]


def _detect_tab(h: Handlers, default: LoadedModel) -> Inputs:
    size = default.default_size
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
                    choices=h.store.choices(),
                    value=default.entry.key,
                    label="Model",
                    info="Zoo models are downloaded on first use; upload your own in the Model tab.",
                    allow_custom_value=True,
                    elem_id="model",
                )
                with gr.Row():
                    size_dd = gr.Dropdown(
                        choices=list(INPUT_SIZES),
                        value=size,
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
                max_dets = gr.Slider(
                    1,
                    300,
                    value=DEFAULT_MAX_DETECTIONS,
                    step=1,
                    label="At most this many detections (highest scores first)",
                    elem_id="max-detections",
                )
                button = gr.Button("Detect", variant="primary", elem_id="detect-button")
                gr.Examples(photo_examples(), inputs=[image], label="Photos", cache_examples=False)
                gr.Examples(
                    synth_examples(),
                    inputs=[image],
                    label="Synthetic shapes (with ground truth; see the GO-LSD tab)",
                    cache_examples=False,
                )
            with gr.Column(scale=1):
                annotated = gr.Image(
                    label="Detections",
                    interactive=False,
                    height=420,
                    elem_id="annotated",
                )
                summary = gr.Markdown(label="Summary", elem_id="detect-summary")
                table = gr.Dataframe(
                    label="Detections table (pixels of the original image)",
                    interactive=False,
                    elem_id="detections-table",
                )
                json_file = gr.File(label="Detections JSON", height=90, elem_id="detections-json")
    ui = Inputs(
        image=image,
        model=model,
        size=size_dd,
        threshold=threshold,
        max_detections=max_dets,
        annotated=annotated,
    )
    ui["detect_event"] = button.click(
        _image_files(h, h.detect),
        inputs=ui.shared(),
        outputs=[annotated, table, json_file, summary],
        api_name="detect",
    )
    model.input(h.model_defaults, inputs=model, outputs=threshold, api_visibility="private")
    return ui


def _refinement_tab(h: Handlers, ui: Inputs, default: LoadedModel) -> None:
    last = default.num_layers + 1
    with gr.Tab("Refinement", id="refinement") as tab:
        gr.Markdown(texts.REFINEMENT, elem_classes="dfine-note")
        with gr.Row():
            picks = gr.Dropdown(
                choices=[],
                multiselect=True,
                allow_custom_value=True,
                label="Detections to follow (empty: the top 5)",
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
                label="Boxes at the chosen stage (dashed: previous stage)",
                height=480,
                elem_id="refinement-overlay",
            )
            plot = gr.Plot(label="Refinement chart", elem_id="refinement-plot")
        with gr.Accordion("Per-stage table (pixels; + = outward)", open=False):
            table = gr.Dataframe(label="Refinement table", interactive=False)
    inputs = [*ui.shared(), picks, stage]
    outputs = [overlay, plot, table]
    trace = _image_files(h, h.trace)
    gr.on(
        [button.click, stage.release, picks.input],
        trace,
        inputs=inputs,
        outputs=outputs,
        api_name="trace",
    )
    tab.select(_quiet(trace, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    ui.update(refine_picks=picks, stage=stage)


def _distributions_tab(h: Handlers, ui: Inputs, tabs: gr.Tabs) -> None:
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
        plot = gr.Plot(label="Edge distributions", elem_id="dist-plot")
        with gr.Row():
            overlay = gr.Image(
                label="Uncertainty overlay (every edge a ±kσ band; click a box to pick it)",
                height=480,
                elem_id="uncertainty-overlay",
            )
            stats = gr.Dataframe(label="Edge statistics", interactive=False)
        with gr.Accordion("Download the figure (PNG or SVG)", open=False), gr.Row():
            fmt = gr.Radio(["png", "svg"], value="png", label="Figure format", scale=1)
            export = gr.Button("Render the figure", scale=1)
            file = gr.File(label="Figure file", scale=2, height=90)
    inputs = [*ui.shared(), pick, sigma, overlay_all]
    outputs = [plot, overlay, stats]
    distributions = _image_files(h, h.distributions)
    gr.on(
        [button.click, pick.input, sigma.release, overlay_all.input],
        distributions,
        inputs=inputs,
        outputs=outputs,
        api_name="distributions",
    )
    tab.select(_quiet(distributions, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    export.click(
        h.export_distributions,
        inputs=[*ui.shared(), pick, fmt],
        outputs=file,
        api_name="distributions_figure",
    )

    def on_click(*args: Any) -> tuple[str, Any]:
        *shared, evt = args
        return h.nearest_detection(*shared, evt.index), gr.Tabs(selected="distributions")

    def select_box(
        image: str | None,
        threshold: float,
        size: int,
        model: str,
        max_dets: int,
        evt: gr.SelectData,
    ) -> tuple[str, Any]:
        return _quietly(on_click, 2)(image, threshold, size, model, max_dets, evt)

    for source in (ui.annotated, overlay):
        source.select(
            select_box, inputs=ui.shared(), outputs=[pick, tabs], api_visibility="private"
        ).success(distributions, inputs=inputs, outputs=outputs, api_visibility="private")
    ui.update(dist_pick=pick)


def _weighting_tab(h: Handlers, ui: Inputs, default: LoadedModel) -> None:
    decoder = default.model.decoder
    with gr.Tab("W(n)", id="weighting") as tab:
        gr.Markdown(texts.WEIGHTING, elem_classes="dfine-note")
        with gr.Row():
            reg_max = gr.Slider(
                4, 128, value=default.model.config.decoder.reg_max, step=2,
                label="reg_max (bins − 1, even)",
            )  # fmt: skip
            up = gr.Slider(0.05, 5.0, value=float(decoder.up), step=0.05, label="up (range factor)")
            reg_scale = gr.Slider(
                0.5, 32.0, value=float(decoder.reg_scale), step=0.5, label="reg_scale (curvature)"
            )
            button = gr.Button("Plot W(n)", variant="primary")
        plot = gr.Plot(label="W(n) chart", elem_id="weighting-plot")
        summary = gr.Markdown(label="W(n) summary")
        with gr.Accordion("W(n) table", open=False):
            table = gr.Dataframe(label="W(n) table", interactive=False)
        with gr.Accordion("Download the figure (PNG or SVG)", open=False), gr.Row():
            fmt = gr.Radio(["png", "svg"], value="png", label="Figure format", scale=1)
            export = gr.Button("Render the figure", scale=1)
            file = gr.File(label="Figure file", scale=2, height=90)
    inputs = [reg_max, up, reg_scale, ui.model]
    outputs = [plot, table, summary]
    gr.on(
        [button.click, reg_max.release, up.release, reg_scale.release],
        h.weighting,
        inputs=inputs,
        outputs=outputs,
        api_name="weighting",
    )
    tab.select(_quiet(h.weighting, 3), inputs=inputs, outputs=outputs, api_visibility="private")
    export.click(
        h.export_weighting, inputs=[*inputs, fmt], outputs=file, api_name="weighting_figure"
    )


def _golsd_tab(h: Handlers, ui: Inputs) -> None:
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
        gr.Examples(
            synth_examples(),
            inputs=[ui.image],
            label="Annotated synthetic examples (sets the Detect tab's image)",
            cache_examples=False,
        )
        note = gr.Markdown(label="GO-LSD summary", elem_id="golsd-note")
        with gr.Row():
            image = gr.Image(label="Targets (white: the query's final box)", height=420)
            dist = gr.Plot(label="Teacher vs students")
        with gr.Row():
            kl = gr.Plot(label="KL per student layer")
            loss = gr.Plot(label="DDF loss split")
        table = gr.Dataframe(label="DDF weights", interactive=False)
    inputs = [*ui.shared(), targets, query, edge]
    outputs = [note, image, query, dist, kl, loss, table]
    fill = {
        "fn": _quietly(h.golsd_queries, 1),
        "inputs": [*ui.shared(), targets, query],
        "outputs": query,
        "api_visibility": "private",
    }
    golsd = _image_files(h, h.golsd)
    gr.on(
        [button.click, query.input, edge.input, targets.input],
        golsd,
        inputs=inputs,
        outputs=outputs,
        api_name="golsd",
    ).success(**fill)
    tab.select(_quiet(golsd, 7), inputs=inputs, outputs=outputs, api_visibility="private").success(
        **fill
    )
    ui.update(golsd_query=query)


def _model_tab(h: Handlers, ui: Inputs) -> None:
    default = h.store.get(None)
    with gr.Tab("Model", id="model"):
        gr.Markdown(texts.MODEL, elem_classes="dfine-note")
        with gr.Row():
            choice = gr.Dropdown(
                choices=[c for c in h.store.choices() if not c[1].startswith("upload-")],
                value=default.entry.key,
                label="Default model or a model-zoo checkpoint",
                allow_custom_value=True,
                scale=2,
            )
            upload = gr.File(
                label="…or upload a checkpoint (.pth / .safetensors; takes precedence)",
                file_types=[".pth", ".pt", ".safetensors"],
                scale=2,
            )
        button = gr.Button("Load and select this model", variant="primary")
        info = gr.Markdown(model_markdown(default), label="Model info", elem_id="model-info")
        key = gr.Textbox(
            default.entry.key,
            label="Model key (the `model` value for the API)",
            interactive=False,
            max_lines=1,
        )
    button.click(
        h.model_info, inputs=[choice, upload], outputs=[info, key], api_name="model"
    ).success(h.use_model, inputs=key, outputs=[ui.model, ui.threshold], api_visibility="private")


def _wire_pickers(h: Handlers, ui: Inputs) -> None:
    """After each detection, fill the analysis tabs' pickers from the cached result."""
    ui.detect_event.success(
        _quietly(h.pickers, 4),
        inputs=ui.shared(),
        outputs=[ui.refine_picks, ui.stage, ui.dist_pick, ui.golsd_query],
        api_visibility="private",
    )


def _image_files(h: Handlers, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its PIL images written to files (WebP). gradio caches a returned file
    atomically, while it rewrites the cache file of a returned PIL image in place, which
    breaks a concurrent download of an identical result."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        return tuple(_to_file(h, v, fn) for v in out) if isinstance(out, tuple) else out

    return run


def _to_file(h: Handlers, value: Any, fn: Callable[..., Any]) -> Any:
    if not isinstance(value, Image.Image):
        return value
    path = h.outputs.path(f"dfine_{getattr(fn, '__name__', 'image')}.webp")
    value.save(path, format="WEBP", quality=90)
    return str(path)


def _quietly(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """``fn``, but a failure leaves its outputs unchanged instead of showing an error."""

    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return _skip(outputs)

    return run


def _skip(outputs: int) -> Any:
    return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))


def _quiet(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """For tab-opening events: run ``fn`` when an image is there, silently skip otherwise."""

    def run(*args: Any) -> Any:
        if not args or args[0] is None:
            return _skip(outputs)
        return _quietly(fn, outputs)(*args)

    return run


__all__ = ["build_demo", "launch_options"]
