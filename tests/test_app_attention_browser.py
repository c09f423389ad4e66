"""The Attention tab in a real browser (Debian's Chromium driven by Playwright): a box clicked
in the Detect tab is the detection the Attention tab opens on; moving the layer slider redraws
the sampling points. At 1400 and 1024 px: screenshots in ``test-artifacts/`` (looked at by
hand) and no clipped or overlapping figure text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DFINE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) to run "
        "the browser test",
        allow_module_level=True,
    )
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from app import build_demo  # noqa: E402
from app.paths import SYNTH_DIR  # noqa: E402
from app.state import SharedInputs  # noqa: E402
from app.summaries import detection_label  # noqa: E402
from tests.app_util import PLOTLY_TEXT_PROBLEMS, serve  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
IMAGE = SYNTH_DIR / "000003.jpg"  # seven shapes
WAIT_MS = 60_000
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PLOTS = ("#attention-points", "#attention-heat", "#attention-origin", "#attention-neighbours")


@pytest.fixture(scope="module")
def server():
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as url:
        yield demo, url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _title(page, plot: str) -> str:
    return page.locator(f"{plot} .gtitle").first.text_content()


def _points_x(page) -> list[float]:
    return page.locator("#attention-points .js-plotly-plot").evaluate(
        "el => el._fullData.filter(t => t.mode === 'markers').flatMap(t => Array.from(t.x))"
    )


@pytest.mark.parametrize("width", [1400, 1024])
def test_click_a_box_then_move_the_layer(server, browser, width, record_property):
    state = server[0].dfine_state
    page = browser.new_page(viewport={"width": width, "height": 1000})
    shots: list[str] = []

    def shot(name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"attention_{width}_{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(str(path))

    try:
        page.set_default_timeout(WAIT_MS)
        page.goto(server[1], wait_until="domcontentloaded", timeout=WAIT_MS)
        page.wait_for_selector("#detect-button", state="visible")
        page.locator("#input-image input[type=file]").set_input_files(str(IMAGE))
        page.wait_for_selector("#input-image img", state="visible")
        page.click("#detect-button")
        page.wait_for_function(
            "() => Number(document.querySelector('#detections-table [role=grid]')"
            "?.getAttribute('aria-rowcount')) > 3",
            timeout=WAIT_MS,
        )
        page.wait_for_selector("#annotated img", state="visible")
        sel = state.select(SharedInputs(str(IMAGE), 0.5, 320, "default", 25, False))
        pick = 2  # not the first: the tab must open on the clicked one
        x1, y1, x2, y2 = (float(v) for v in sel.detections.boxes[pick])
        page.locator("#annotated img").scroll_into_view_if_needed()
        box = page.locator("#annotated img").bounding_box()
        scale = box["width"] / sel.result.image_size[0]
        page.mouse.click(box["x"] + (x1 + x2) / 2 * scale, box["y"] + (y1 + y2) / 2 * scale)
        page.get_by_role("tab", name="Distributions", selected=True).wait_for()

        page.get_by_role("tab", name="Attention").click()
        label = detection_label(pick, sel.detections)
        page.wait_for_function(
            f"() => document.querySelector('#attention-detection input').value === '{label}'",
            timeout=WAIT_MS,
        )
        query = int(sel.queries[pick])
        title = page.locator("#attention-points .gtitle")
        title.filter(has_text=f"query {query} sampled at layer 3 of 3").first.wait_for()
        for plot in PLOTS:
            page.wait_for_function(
                f"() => document.querySelector('{plot} .js-plotly-plot')?.data?.length > 0",
                timeout=WAIT_MS,
            )
        page.wait_for_timeout(500)  # let plotly finish its layout
        last = _points_x(page)
        neighbours = _title(page, "#attention-neighbours")
        assert "at layer 3" in neighbours
        shot("1_layer3")

        box_in = page.locator("#attention-layer input[type=number]")
        box_in.fill("1")
        box_in.press("Enter")
        title.filter(has_text="layer 1 of 3").first.wait_for()
        page.locator("#attention-neighbours .gtitle").filter(has_text="at layer 1").first.wait_for()
        page.wait_for_timeout(500)
        first = _points_x(page)
        assert len(first) == len(last) and sorted(first) != sorted(last)
        shot("2_layer1")
        problems = [p for fig in page.evaluate(PLOTLY_TEXT_PROBLEMS) for p in fig["problems"]]
        assert not problems, "\n".join(problems)
        assert page.locator(".toast-body").count() == 0
        record_property(f"attention_{width}", ", ".join(shots))
        print("screenshots:\n" + "\n".join(shots))
    finally:
        page.close()
