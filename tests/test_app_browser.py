"""The app in a real browser: Debian's Chromium driven by Playwright (the PyPI package; no
``playwright install``). On the bundled demo model: upload an image, press Detect, see the boxes and the table, open the
Distributions tab, pick a detection, see a rendered plotly figure. Screenshots are saved in
``test-artifacts/`` (printed at the end of the test)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from dfine.optional import chromium_path

CHROMIUM = chromium_path()  # None: every test here is skipped (tests/conftest.py)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from PIL import Image  # noqa: E402

from app import build_demo  # noqa: E402
from app.paths import SYNTH_ANNOTATIONS, SYNTH_DIR  # noqa: E402
from app.tabs import distributions  # noqa: E402
from dfine.io import load_image  # noqa: E402
from tests.app_util import PLOTLY_TEXT_PROBLEMS, serve  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PHOTO = SYNTH_DIR / "000003.jpg"  # seven shapes
SYNTH = SYNTH_DIR / "000001.jpg"
WAIT_MS = 60_000  # every browser wait is bounded by this
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server():
    """The app as ``python app.py`` serves it: the bundled demo model."""
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as url:
        yield demo, url


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one at a time)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser, server):
    yield from _open(browser, server[1])


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.set_default_timeout(WAIT_MS)
        page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
        page.wait_for_selector("#detect-button", state="visible")
        yield page
    finally:
        page.close()


def _shot(page, name: str, shots: list[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    shots.append(str(path))


def _image_at(page, selector: str) -> np.ndarray:
    """The image an ``<img>`` shows, fetched from the server and decoded."""
    src = page.locator(selector).first.get_attribute("src")
    data = page.request.get(src, timeout=WAIT_MS).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_detect_then_distributions(server, page, record_property):
    shots: list[str] = []
    assert page.locator("#fixture-banner").count() == 0

    start = time.perf_counter()
    page.locator("#input-image input[type=file]").set_input_files(str(PHOTO))
    page.wait_for_selector("#input-image img", state="visible")
    page.click("#detect-button")
    grid = page.locator("#detections-table [role=grid]")
    page.wait_for_function(
        "() => Number(document.querySelector('#detections-table [role=grid]')"
        "?.getAttribute('aria-rowcount')) > 1",
        timeout=WAIT_MS,
    )
    page.wait_for_selector("#annotated img", state="visible")
    summary = page.locator("#detect-summary")
    summary.get_by_text("detections").first.wait_for()
    upload_to_detections = time.perf_counter() - start
    _shot(page, "app_01_detect.png", shots)

    count = int(summary.inner_text().split(" detection")[0].split()[-1])
    assert 2 < count <= 25
    assert int(grid.get_attribute("aria-rowcount")) == count + 1  # header + one per detection
    first_row = page.locator("#detections-table [role=row][aria-rowindex='2']")
    cells = first_row.inner_text().split()
    assert cells[0] == "0" and float(cells[-5]) > 0.5  # index, …, score, x1, y1, x2, y2
    x1, y1, x2, y2 = (float(v) for v in cells[-4:])
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)  # clicked below: the nearest box is this one
    nearest = distributions.nearest_detection(
        server[0].dfine_state, str(PHOTO), 0.5, 320, "default", 25, False, centre
    )
    other = "2: " if nearest.startswith("1: ") else "1: "
    annotated = _image_at(page, "#annotated img").astype(int)
    original = load_image(PHOTO).astype(int)
    assert annotated.shape == original.shape
    assert np.abs(annotated - original).mean() > 0.5  # boxes were drawn

    page.get_by_role("tab", name="Distributions").click()
    picker = page.locator("#distribution-detection input")
    picker.click()
    page.get_by_role("option").filter(has_text=other).first.click()
    title = page.locator("#dist-plot .gtitle")
    title.filter(has_text=f"detection {other[:-2]} ").first.wait_for()
    plot = page.locator("#dist-plot .js-plotly-plot")
    traces = plot.evaluate("el => el.data.length")
    bars = plot.evaluate("el => el.data.filter(t => t.type === 'bar').length")
    assert traces > 0 and bars == 12  # four edges × three decoder layers
    assert page.locator("#dist-plot .js-plotly-plot .barlayer .point").count() > 0
    page.wait_for_selector("#uncertainty-overlay img", state="visible")
    _shot(page, "app_02_distributions.png", shots)

    # clicking a box in the Detect tab opens its distributions
    page.get_by_role("tab", name="Detect").click()
    box = page.locator("#annotated img").bounding_box()
    scale = box["width"] / original.shape[1]
    page.mouse.click(box["x"] + centre[0] * scale, box["y"] + centre[1] * scale)
    page.get_by_role("tab", name="Distributions", selected=True).wait_for()
    page.wait_for_function(
        f"() => document.querySelector('#distribution-detection input').value === '{nearest}'",
        timeout=WAIT_MS,
    )
    index = nearest.split(":")[0]
    title.filter(has_text=f"detection {index} ").first.wait_for()
    _shot(page, "app_03_clicked_box.png", shots)

    record_property("screenshots", ", ".join(shots))
    record_property("upload_to_detections_s", round(upload_to_detections, 2))
    print(f"\nbrowser: upload + Detect → table shown in {upload_to_detections:.2f} s")
    print("screenshots:\n" + "\n".join(shots))


def test_demo_model_detects_and_refines(page, record_property):
    """The default model on an annotated synthetic example: the table names exactly the
    ground-truth shapes, and the Refinement tab draws the boxes and the IoU chart."""
    shots: list[str] = []
    truth = json.loads(SYNTH_ANNOTATIONS.read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    image_id = next(i["id"] for i in truth["images"] if i["file_name"] == SYNTH.name)
    expected = sorted(
        names[a["category_id"]] for a in truth["annotations"] if a["image_id"] == image_id
    )

    page.locator("#input-image input[type=file]").set_input_files(str(SYNTH))
    page.wait_for_selector("#input-image img", state="visible")
    page.click("#detect-button")
    page.wait_for_function(
        "() => Number(document.querySelector('#detections-table [role=grid]')"
        f"?.getAttribute('aria-rowcount')) === {len(expected) + 1}",
        timeout=WAIT_MS,
    )
    rows = page.locator("#detections-table [role=row]").all_inner_texts()[1:]
    found = sorted(" ".join(row.split()[1:-5]) for row in rows)  # "#, class words, score, box"
    assert found == expected
    page.wait_for_selector("#annotated img", state="visible")
    _shot(page, "app_04_demo_detect.png", shots)

    page.get_by_role("tab", name="Refinement").click()
    plot = page.locator("#refinement-plot .js-plotly-plot")
    plot.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#refinement-plot .js-plotly-plot')?.data?.length > 0",
        timeout=WAIT_MS,
    )
    lines = plot.evaluate(
        "el => el._fullData.filter(t => t.type === 'scatter').map(t => Array.from(t.y))"
    )
    assert len(lines) == min(5, len(expected))  # the top 5 detections are followed
    assert all(abs(y[-1] - 1.0) < 1e-6 for y in lines)  # IoU to the final box ends at 1
    page.wait_for_selector("#refinement-overlay img", state="visible")
    _shot(page, "app_05_demo_refinement.png", shots)

    page.get_by_role("tab", name="Distributions").click()
    page.locator("#dist-plot .gtitle").filter(has_text="detection 0 ").first.wait_for()
    bars = page.locator("#dist-plot .js-plotly-plot").evaluate(
        "el => el._fullData.filter(t => t.type === 'bar').map(t => Array.from(t.y))"
    )
    assert len(bars) == 12  # four edges × three decoder layers
    assert all(abs(sum(b) - 1.0) < 1e-3 for b in bars)  # each a probability distribution
    page.wait_for_selector("#uncertainty-overlay img", state="visible")
    _shot(page, "app_06_demo_distributions.png", shots)
    record_property("demo_screenshots", ", ".join(shots))


def _rows(page) -> int:
    """Rows of the Detect table (without the header)."""
    count = page.locator("#detections-table [role=grid]").get_attribute("aria-rowcount")
    return int(count) - 1


def _wait_rows(page, predicate_js: str) -> None:
    page.wait_for_function(
        "() => { const n = Number(document.querySelector('#detections-table [role=grid]')"
        f"?.getAttribute('aria-rowcount')) - 1; return {predicate_js}; }}",
        timeout=WAIT_MS,
    )


def _type(page, selector: str, value: str, commit: str = "Enter") -> None:
    """Type ``value`` into a slider's number box and commit it with Enter or by leaving."""
    box = page.locator(f"{selector} input[type=number]")
    box.fill(value)
    if commit == "Enter":
        box.press("Enter")
    else:
        box.blur()  # leave the box


def test_controls_are_live(server, page, record_property):
    """Threshold typed + Enter / typed + blur re-filters the Detect result without a new
    forward pass; a stage typed + Enter redraws the Refinement figure; an odd reg_max is
    snapped to an even one with no error shown."""
    shots: list[str] = []
    state = server[0].dfine_state
    page.locator("#input-image input[type=file]").set_input_files(str(SYNTH))
    page.wait_for_selector("#input-image img", state="visible")
    page.click("#detect-button")
    _wait_rows(page, "n === 6")
    misses = state.cache.misses

    _type(page, "#threshold", "0.05")  # Enter
    _wait_rows(page, "n > 6")
    low = _rows(page)
    assert (
        f"**{low} detections**" in page.locator("#detect-summary").inner_html()
        or str(low) in page.locator("#detect-summary").inner_text()
    )
    _type(page, "#threshold", "0.9", commit="blur")
    _wait_rows(page, f"n < {low}")
    assert _rows(page) <= 6
    assert state.cache.misses == misses  # re-filtered, never recomputed
    _shot(page, "app_07_live_threshold.png", shots)
    _type(page, "#threshold", "0.5")
    _wait_rows(page, "n === 6")

    page.get_by_role("tab", name="Refinement").click()
    title = page.locator("#refinement-plot .gtitle")
    title.filter(has_text="showing stage: layer 3").first.wait_for()
    _type(page, "#stage", "2")
    title.filter(has_text="showing stage: layer 1").first.wait_for()
    _type(page, "#stage", "0", commit="blur")
    title.filter(has_text="showing stage: encoder (b0)").first.wait_for()
    _shot(page, "app_08_stage_typed.png", shots)

    page.get_by_role("tab", name="W(n)").click()
    summary = page.locator("#weighting-summary")
    summary.get_by_text("reg_max = 32").first.wait_for()
    _type(page, "#reg-max", "7")
    page.wait_for_function(
        "() => document.querySelector('#reg-max input[type=number]').value === '8'",
        timeout=WAIT_MS,
    )
    summary.get_by_text("reg_max = 8,").first.wait_for()
    assert page.locator(".toast-body").count() == 0  # no error toast
    assert page.get_by_text("Error", exact=True).count() == 0  # no error badge on outputs
    _shot(page, "app_09_regmax_snapped.png", shots)
    record_property("live_screenshots", ", ".join(shots))


@pytest.mark.parametrize("width", [1400, 1024])
def test_layout_at_two_widths(server, browser, width, record_property):
    """Every tab after a detection, at 1400 and 1024 px: screenshots in test-artifacts/
    (looked at by hand) and no clipped or overlapping figure text."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    shots: list[str] = []
    try:
        page.set_default_timeout(WAIT_MS)
        page.goto(server[1], wait_until="domcontentloaded", timeout=WAIT_MS)
        page.wait_for_selector("#detect-button", state="visible")
        page.locator("#input-image input[type=file]").set_input_files(str(PHOTO))
        page.wait_for_selector("#input-image img", state="visible")
        page.click("#detect-button")
        _wait_rows(page, "n > 2")
        page.wait_for_selector("#annotated img", state="visible")
        _shot(page, f"layout_{width}_1_detect.png", shots)
        problems = {}
        for i, (tab, plot) in enumerate(
            [
                ("Refinement", "#refinement-plot"),
                ("Distributions", "#dist-plot"),
                ("W(n)", "#weighting-plot"),
                ("GO-LSD", "#golsd-note"),
                ("Model", "#model-info"),
            ],
            start=2,
        ):
            page.get_by_role("tab", name=tab).click()
            if plot.endswith("-plot"):
                page.wait_for_function(
                    f"() => document.querySelector('{plot} .js-plotly-plot')?.data?.length > 0",
                    timeout=WAIT_MS,
                )
            else:
                page.locator(plot).get_by_text(re.compile(r"\w")).first.wait_for()
            page.wait_for_timeout(500)  # let plotly finish its layout
            _shot(page, f"layout_{width}_{i}_{tab.lower().replace('(n)', 'n')}.png", shots)
            for fig in page.evaluate(PLOTLY_TEXT_PROBLEMS):
                if fig["problems"]:
                    problems[f"{tab}/{fig['id']}"] = fig["problems"]
        record_property(f"layout_{width}", ", ".join(shots))
        assert not problems, problems
    finally:
        page.close()


def test_letterbox_box_changes_detect(server, page, tmp_path, record_property):
    """On a tall image, ticking "Keep aspect ratio (letterbox)" detects again: the summary
    says letterboxed and the table's boxes move; unticking brings the stretched result back."""
    shots: list[str] = []
    tall = np.full((560, 320, 3), 114, np.uint8)
    tall[100:420] = load_image(SYNTH)
    path = tmp_path / "tall.png"
    Image.fromarray(tall).save(path)
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#input-image img", state="visible")
    page.click("#detect-button")
    summary = page.locator("#detect-summary")
    summary.get_by_text("network input").first.wait_for()
    assert "letterboxed" not in summary.inner_text()
    stretched = page.locator("#detections-table [role=row]").all_inner_texts()[1:]
    page.locator("#letterbox input[type=checkbox]").check()
    summary.get_by_text("letterboxed").first.wait_for()
    page.wait_for_selector("#annotated img", state="visible")
    boxed = page.locator("#detections-table [role=row]").all_inner_texts()[1:]
    assert boxed and boxed != stretched
    _shot(page, "app_10_letterbox.png", shots)
    page.locator("#letterbox input[type=checkbox]").uncheck()
    page.wait_for_function(
        "() => !document.querySelector('#detect-summary').innerText.includes('letterboxed')",
        timeout=WAIT_MS,
    )
    assert page.locator(".toast-body").count() == 0
    record_property("letterbox_screenshots", ", ".join(shots))
