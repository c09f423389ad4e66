"""The Evaluate tab in a real browser (Debian's Chromium via Playwright): evaluate the bundled
synthetic split, see the per-stage figure and the error gallery, click a thumbnail and land
in Detect with that image and its detections."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfine.optional import chromium_path

CHROMIUM = chromium_path()  # None: every test here is skipped (tests/conftest.py)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from app import build_demo  # noqa: E402
from tests.app_util import serve  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 60_000
EVAL_WAIT_MS = 600_000  # the evaluation itself (cached when the API test ran first)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module", autouse=True)
def eval_home(tmp_path_factory):
    """The same DFINE_HOME as tests/test_app_evaluate.py: the bundled split's cached report."""
    home = tmp_path_factory.getbasetemp() / "dfine_home_evaluate"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFINE_HOME", str(home))
        yield home


def test_evaluate_tab_then_open_gallery_item_in_detect():
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.get_by_role("tab", name="Evaluate").click()
            page.click("#evaluate-button")
            thumb = page.locator("#evaluate-gallery img").first
            thumb.wait_for(state="visible", timeout=EVAL_WAIT_MS)
            page.locator("#evaluate-summary").get_by_text("images").first.wait_for()
            assert "AP" in page.locator("#evaluate-summary").inner_text()
            plot = page.locator("#evaluate-plot-0 .js-plotly-plot")
            plot.wait_for()
            assert plot.evaluate("el => el.data.length") >= 6  # AP/AP50/AP75 × two scorings
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app_evaluate.png"), full_page=True)
            thumb.click()
            page.get_by_role("tab", name="Detect", selected=True).wait_for()
            page.wait_for_selector("#input-image img", state="visible")
            page.wait_for_selector("#annotated img", state="visible")
            page.screenshot(path=str(ARTIFACTS / "app_evaluate_open.png"), full_page=True)
        finally:
            browser.close()
    assert len(demo.dfine_state.examples) > 4  # the clicked image's ground truth is now known
