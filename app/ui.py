"""The gr.Blocks layout: it only assembles the tabs of :mod:`app.tabs`.

The pattern (a new tab follows it):

- ``app/tabs/<name>.py`` holds the tab's layout *and* its handlers. Handlers are plain
  functions ``fn(state, *values) -> outputs`` of the shared :class:`app.state.AppState` (one
  model store, one result cache, the annotated examples, the output folder) and the values of
  the tab's components; decorate them with :func:`app.errors.user_errors`. Tests call them
  directly.
- An image endpoint's handler is ``@selection def fn(state, sel, *own values)``: the
  decorator (:mod:`app.tabs.common`) makes it take the shared controls' values first and
  turns them into the :class:`app.state.Selection` (``@shared_inputs`` gives the raw
  :class:`app.state.SharedInputs` instead). The shared controls are listed once, as the
  fields of ``SharedInputs``.
- ``build(state, controls)`` creates the ``gr.Tab`` and wires its events with
  ``app.tabs.common.bind(state, fn)``. ``controls`` (:class:`app.tabs.common.Controls`) are
  the Detect tab's inputs every image tab reads (``controls.shared()`` = image, threshold,
  input size, model, detection limit, letterbox); ``controls.after_result(fn, outputs)`` updates a
  tab's pickers whenever the current result changes (Detect pressed, threshold or limit
  moved) from the cached forward pass.
- The tab's main action gets ``api_name="<endpoint>"``; helper events are
  ``api_visibility="private"``.
- Add one line below in :func:`build_demo`.

Endpoints: ``/detect``, ``/trace``, ``/distributions``, ``/weighting``, ``/golsd``, ``/model``,
``/evaluate``, the two-model comparisons ``/compare_refinement``, ``/compare_distributions``,
``/evaluate_compare``, ``/attention`` (and ``/distributions_figure``, ``/weighting_figure``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import texts
from app.models import ModelStore
from app.paths import ASSETS, FIXTURE_BANNER
from app.state import AppState
from app.tabs import (
    attention,
    detect,
    distributions,
    evaluate,
    golsd,
    model,
    refinement,
    video,
    weighting,
)

CSS = """
.dfine-banner { background: #fff4d6; border: 1px solid #f0c36d; border-radius: 8px;
  padding: 10px 14px; color: #5c4400; }
.dfine-note { color: #555; font-size: 0.92em; }
/* a table wider than its panel scrolls sideways with a scrollbar one can see and grab,
   never a silently cut column */
.gradio-dataframe .virtual-table-viewport { scrollbar-width: auto; scrollbar-color: #8a94a0 #eceff3; }
/* a phone: every row's items one under the other, each the page's width: stretched and on
   one flex line (a wrapping column sizes its line, and an "unequal-height" row its items, to
   the content's width, which pushed the Detect tab's inputs past the screen's edge) */
@media (max-width: 640px) {
  .row { flex-direction: column; flex-wrap: nowrap !important; align-items: stretch !important; }
  .row > * { min-width: 0 !important; }
}
/* a phone: a figure keeps the width its panels and titles need and its panel scrolls sideways,
   as a wide table does (plotly cannot reflow a grid of subplots) */
@media (max-width: 640px) {
  .block:has(.js-plotly-plot) { overflow-x: auto !important; }
  .js-plotly-plot { min-width: 800px; }
}
"""

JS = """
() => {
  // Enter in a slider's number box commits the value like leaving the box does (blur fires
  // the slider's release event), so typing + Enter, blur and dragging all behave alike.
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.key === "Enter" && t instanceof HTMLInputElement && t.type === "number") t.blur();
  });
  // plotly resizes a figure on the window's resize event, but skips figures in hidden tabs:
  // a window resized while a tab was hidden left its figures at the old width. Whenever a
  // tab panel changes size (it is shown, or the window changes), the figures now in view
  // are told to fit it.
  let pending = null;
  const fit = new ResizeObserver(() => {
    clearTimeout(pending);
    pending = setTimeout(() => window.dispatchEvent(new Event("resize")), 50);
  });
  const watch = () => {
    for (const panel of document.querySelectorAll(".tabitem:not([data-dfine-fit])")) {
      panel.dataset.dfineFit = "1";
      fit.observe(panel);
    }
  };
  watch();
  new MutationObserver(watch).observe(document.body, { childList: true, subtree: true });
}
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
        "js": JS,
        "max_file_size": "400mb",
        "allowed_paths": [str(ASSETS)],
    }


def build_demo(model_path: str | None = None) -> gr.Blocks:
    """The app. ``model_path``: the default model's checkpoint (default: the bundled demo model
    ``assets/dfine_n_synth.safetensors``, or the parity fixture while it is not bundled)."""
    state = AppState(ModelStore(model_path))
    default = state.store.get(None)  # load it now: the first request should be fast
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
            controls = detect.build(state, tabs)
            video.build(state, controls)
            refinement.build(state, controls)
            distributions.build(state, controls)
            attention.build(state, controls)
            weighting.build(state, controls)
            golsd.build(state, controls)
            model.build(state, controls)
            evaluate.build(state, controls)
        controls.wire(state)
    demo.dfine_state = state  # for tests and embedding
    return demo


__all__ = ["build_demo", "launch_options"]
