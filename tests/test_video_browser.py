"""The Video tab in a real browser (Debian's Chromium via Playwright): upload a generated
clip, run it, the annotated video plays, the frame slider changes the shown detections, and
"open this frame in the analysis tabs" fills the Refinement tab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DFINE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from dfine.data.synth_video import write_synth_video  # noqa: E402
from tests.app_util import serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "dfine_n_synth.safetensors"
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 120_000
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def url(module_monkeypatch):
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app import build_demo

    module_monkeypatch.setenv("DFINE_VIDEO_MAX_FRAMES", "5")  # the tab reads it when built
    demo = build_demo(str(DEMO))
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as address:
        yield address


def _table_text(page) -> str:
    return page.locator("#video-frame-table").inner_text()


def test_video_tab_plays_slides_and_opens_in_analysis(url, tmp_path):
    clip, _ = write_synth_video(tmp_path / "moving.webm", 8)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Video").click()
            assert "5 processed frames" in page.locator("#video-caps").inner_text()
            page.locator("#video-input input[type=file]").set_input_files(str(clip))
            page.wait_for_selector("#video-input video", state="attached")
            page.click("#video-button")
            # (the progress bar also says "frames/s": wait for the summary's own words)
            page.locator("#video-summary").get_by_text("processed of").first.wait_for()
            assert "5 frames" in page.locator("#video-summary").inner_text()

            # the annotated video plays in Chromium
            page.wait_for_selector("#video-output video", state="attached")
            page.wait_for_function(
                "() => { const v = document.querySelector('#video-output video');"
                " return v && v.readyState >= 2 && v.duration > 0; }",
                timeout=WAIT_MS,
            )
            duration = page.evaluate("document.querySelector('#video-output video').duration")
            assert duration == pytest.approx(5 / 25, abs=0.08)

            # the frame slider changes the detections shown
            caption = page.locator("#video-frame-caption")
            caption.get_by_text("Frame 0 ").wait_for()
            first = _table_text(page)
            number = page.locator("#video-frame input[type=number]")
            number.fill("4")
            number.press("Enter")
            caption.get_by_text("Frame 4 ").wait_for()
            page.wait_for_function(
                f"() => document.querySelector('#video-frame-table').innerText !== {first!r}",
                timeout=WAIT_MS,
            )
            assert _table_text(page) != first
            page.wait_for_selector("#video-frame-image img", state="visible")

            # the track view: σ of the four edges, score and box size over time
            page.locator("#video-track-summary").get_by_text("Track #").first.wait_for()
            plot = page.locator("#video-track-plot .js-plotly-plot").first
            plot.wait_for()
            names = plot.evaluate("el => el.data.map(t => t.name)")
            assert names[:5] == ["σ left", "σ top", "σ right", "σ bottom", "score"]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "video_01_tab.png"), full_page=True)

            # open that frame in the analysis tabs: Refinement is shown and filled
            page.click("#video-open-frame")
            page.get_by_role("tab", name="Refinement", selected=True).wait_for()
            page.wait_for_selector("#refinement-overlay img", state="visible")
            page.locator("#refinement-plot .js-plotly-plot").first.wait_for()
            src = page.locator("#input-image img").first.get_attribute("src")
            assert "frame4" in src  # the Detect tab now holds that frame
            page.screenshot(path=str(ARTIFACTS / "video_02_refinement.png"), full_page=True)
        finally:
            browser.close()
