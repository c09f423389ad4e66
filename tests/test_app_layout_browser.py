"""Every tab of the app in a real browser (Debian's Chromium via Playwright) at 1400, 1024 and
412 px: no figure or table overflows its panel, and the Detect tab always describes the image
it shows — after a click on an Evaluate gallery thumbnail and after a video's "open this frame
in the analysis tabs" its summary names the new image (issue 25). One app, one page; the
screenshots are written to ``test-artifacts/layout_<width>_<tab>.png``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DFINE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from app import build_demo  # noqa: E402
from app.paths import SYNTH_DIR  # noqa: E402
from dfine.data.synth_video import write_synth_video  # noqa: E402
from tests.app_util import serve  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 120_000
EVAL_WAIT_MS = 600_000  # the bundled split's evaluation (cached when test_app_evaluate ran)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

# (tab, a selector that has content once the tab shows its result)
TABS = [
    ("Detect", "#detections-table [role=row][aria-rowindex='2']"),
    ("Video", "#video-frame-table [role=row][aria-rowindex='2']"),
    ("Refinement", "#refinement-plot .js-plotly-plot .main-svg"),
    ("Distributions", "#dist-plot .js-plotly-plot .main-svg"),
    ("Attention", "#attention-points .js-plotly-plot .main-svg"),
    ("W(n)", "#weighting-plot .js-plotly-plot .main-svg"),
    ("GO-LSD", "#golsd-note h3"),
    ("Model", "#model-info li"),
    ("Evaluate", "#evaluate-plot-7 .js-plotly-plot .main-svg"),
]

PHONE_TABS = [  # without a video or an evaluation run in this page
    *(t for t in TABS if t[0] not in ("Video", "Evaluate")),
    ("Video", "#video-button"),
    ("Evaluate", "#evaluate-zip"),
]

# What overflows on the shown page: the page itself scrolling sideways; a panel, column or row
# past the tab's right edge (a clipped page does not scroll, it cuts); a plotly figure wider than its panel, or any of its titles, legends, tick labels or notes past the figure's edge,
# or two of its titles / legends on top of each other; a table that sticks out of its panel
# or whose columns are cut without a way to scroll to them; the zip box's upload prompt cut.
LAYOUT = r"""
(texts) => {
  const out = [];
  const vw = document.documentElement.clientWidth;
  const shown = el => el.offsetParent !== null && el.getBoundingClientRect().width > 0;
  const within = (r, p) => r.left >= p.left - 1 && r.right <= p.right + 1
    && r.top >= p.top - 1 && r.bottom <= p.bottom + 1;
  const name = el => el.id || el.closest('[id]')?.id || '?';
  if (document.documentElement.scrollWidth > vw + 1)
    out.push(`page: ${document.documentElement.scrollWidth} px wide in a ${vw} px window`);
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!shown(plot)) continue;
    const panel = plot.closest('.block').getBoundingClientRect();
    const svg = plot.querySelector('svg.main-svg').getBoundingClientRect();
    const page = plot.closest('.tabitem').getBoundingClientRect();
    if (panel.right > page.right + 1)
      out.push(`${name(plot)}: panel ends ${Math.round(panel.right - page.right)} px past the tab`);
    const scrolls = ['auto', 'scroll'].includes(getComputedStyle(plot.closest('.block')).overflowX);
    if (!scrolls && (svg.right > panel.right + 1 || svg.left < panel.left - 1))
      out.push(`${name(plot)}: figure ${Math.round(svg.width)} px in a ${Math.round(panel.width)} px panel`);
    if (!texts) continue;
    const items = Array.from(plot.querySelectorAll(
      '.gtitle, .g-xtitle text, .g-ytitle text, [class^=g-x][class$=title] text, '
      + '[class^=g-y][class$=title] text, .legend, .annotation-text, .xtick text, .ytick text'
    )).map(t => ({el: t, r: t.getBoundingClientRect()})).filter(t => t.r.width > 0);
    for (const t of items)
      if (!within(t.r, svg)) out.push(`${name(plot)}: cut: ${t.el.textContent.slice(0, 50)}`);
    const big = items.filter(t => t.el.matches('.gtitle, .legend')
      || /^g-x\d*title$/.test(t.el.parentElement?.getAttribute('class') || ''));
    for (let i = 0; i < big.length; i++) for (let j = i + 1; j < big.length; j++) {
      const a = big[i].r, b = big[j].r;
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 2 && h > 2) out.push(`${name(plot)}: overlap: ${big[i].el.textContent.slice(0, 30)}`
        + ` | ${big[j].el.textContent.slice(0, 30)}`);
    }
  }
  // any panel, column or row past its tab's right edge, unless a sideways-scrolling box holds it
  const scrolling = el => {
    for (let a = el.parentElement; a && !a.classList.contains('tabitem'); a = a.parentElement)
      if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return true;
    return false;
  };
  for (const el of document.querySelectorAll('.tabitem .block, .tabitem .column, .tabitem .row')) {
    if (!shown(el)) continue;
    const over = el.getBoundingClientRect().right - el.closest('.tabitem').getBoundingClientRect().right;
    if (over > 1 && !scrolling(el))
      out.push(`${name(el)}: ${el.classList[0]} ends ${Math.round(over)} px past the tab`);
  }
  for (const table of document.querySelectorAll('.gradio-dataframe')) {
    if (!shown(table)) continue;
    const r = table.getBoundingClientRect(), parent = table.parentElement.getBoundingClientRect();
    const page = table.closest('.tabitem').getBoundingClientRect();
    if (r.right > parent.right + 1 || r.right > page.right + 1)
      out.push(`${name(table)}: table sticks out of its panel`);
    const port = table.querySelector('.virtual-table-viewport');
    const style = port && getComputedStyle(port);
    if (port && port.scrollWidth > port.clientWidth + 1
        && !['auto', 'scroll'].includes(style.overflowX))
      out.push(`${name(table)}: columns cut (${port.scrollWidth} > ${port.clientWidth})`);
  }
  const zip = document.querySelector('#evaluate-zip');
  if (zip && shown(zip)) {
    const box = zip.getBoundingClientRect();
    const walk = document.createTreeWalker(zip, NodeFilter.SHOW_TEXT);
    let prompt = null;
    while (walk.nextNode()) if (/Click to Upload/.test(walk.currentNode.textContent)) {
      prompt = document.createRange();
      prompt.selectNodeContents(walk.currentNode);
    }
    const icon = zip.querySelector('svg');
    for (const [what, el] of [['"Click to Upload"', prompt], ['upload icon', icon]])
      if (!el || !within(el.getBoundingClientRect(), box)) out.push(`evaluate-zip: ${what} cut`);
  }
  return out;
}
"""


@pytest.fixture(scope="module", autouse=True)
def eval_home(tmp_path_factory):
    """The same DFINE_HOME as tests/test_app_evaluate.py: the bundled split's cached report."""
    home = tmp_path_factory.getbasetemp() / "dfine_home_evaluate"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFINE_HOME", str(home))
        yield home


def _tab(page, name: str) -> None:
    """Open tab ``name`` (from the "More tabs" menu when the strip has no room for it)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button").get_by_text(name, exact=True).click()


def _detected(page, name: str) -> str:
    """Wait until Detect's summary names ``name``; the summary."""
    page.wait_for_function(
        "n => document.querySelector('#detect-summary')?.innerText.includes(n)",
        arg=name,
        timeout=WAIT_MS,
    )
    return page.locator("#detect-summary").inner_text()


def _shown_image(page) -> str:
    """The file name of the image in Detect's input."""
    return page.locator("#input-image img").first.get_attribute("src").rsplit("/", 1)[-1]


def _results(page, tmp_path: Path) -> None:
    """A detection, a processed video and an evaluation, so that every tab has content."""
    first = tmp_path / "first_image.jpg"  # a name no gallery or video image has
    shutil.copy(SYNTH_DIR / "000003.jpg", first)
    page.locator("#input-image input[type=file]").set_input_files(str(first))
    page.wait_for_selector("#input-image img", state="visible")
    page.click("#detect-button")
    _detected(page, "first_image.jpg")

    _tab(page, "Video")
    clip, _ = write_synth_video(tmp_path / "moving.webm", 3)
    page.locator("#video-input input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#video-input video", state="attached")
    page.click("#video-button")
    page.locator("#video-frame-caption").get_by_text("Frame 0 ").wait_for()

    _tab(page, "Evaluate")
    page.click("#evaluate-button")
    page.locator("#evaluate-gallery img").first.wait_for(state="visible", timeout=EVAL_WAIT_MS)


def _walk(page, width: int, tabs=TABS, texts: bool = True) -> dict[str, list[str]]:
    """Every tab at ``width``: a screenshot each, and what overflows (``texts``: also every
    title, legend and tick label inside its figure, and overlapping titles)."""
    page.set_viewport_size({"width": width, "height": 1000})
    problems = {}
    for tab, ready in tabs:
        _tab(page, tab)
        page.locator(ready).first.wait_for(state="visible")
        page.wait_for_function(  # the tab's own refresh on opening has finished
            "() => ![...document.querySelectorAll('.progress-text')].some(e => e.offsetParent)",
            timeout=WAIT_MS,
        )
        page.wait_for_timeout(800)  # plotly's resize to the panel is debounced
        page.screenshot(
            path=str(ARTIFACTS / f"layout_{width}_{tab.lower().replace('(n)', 'n')}.png"),
            full_page=True,
        )
        found = page.evaluate(LAYOUT, texts)
        if found:
            problems[f"{width} px, {tab}"] = found
    return problems


def test_every_tab_fits_and_describes_the_image_shown(tmp_path):
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=20)
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(demo) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.wait_for_selector("#detect-button", state="visible")
            _results(page, tmp_path)

            problems = {}
            for width in (1400, 1024):
                problems.update(_walk(page, width))
            assert not problems, problems
            # a phone, as it opens the app (not a window narrowed after the figures were
            # drawn): no panel or table wider than the screen; a figure keeps the width its
            # panels need and its panel scrolls sideways, its text whole
            phone = browser.new_page(viewport={"width": 412, "height": 900})
            phone.set_default_timeout(WAIT_MS)
            phone.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            phone.locator("#input-image input[type=file]").set_input_files(
                str(tmp_path / "first_image.jpg")
            )
            phone.wait_for_selector("#input-image img", state="visible")
            phone.click("#detect-button")
            _detected(phone, "first_image.jpg")
            assert not _walk(phone, 412, PHONE_TABS)
            phone.close()

            # a gallery thumbnail: Detect shows it, and its summary, table and JSON are its own
            page.set_viewport_size({"width": 1400, "height": 1000})
            _tab(page, "Evaluate")
            page.locator("#evaluate-gallery img").nth(1).click()
            page.get_by_role("tab", name="Detect", selected=True).wait_for()
            page.wait_for_function(
                "() => !document.querySelector('#input-image img')?.src.endsWith('first_image.jpg')",
                timeout=WAIT_MS,
            )
            opened = _shown_image(page)
            summary = _detected(page, opened)
            assert "first_image.jpg" not in summary and "ground truth" in summary
            json_name = page.locator("#detections-json").inner_text()
            assert Path(opened).stem in json_name
            page.screenshot(path=str(ARTIFACTS / "layout_gallery_opened.png"), full_page=True)

            # a video frame: the same
            _tab(page, "Video")
            page.click("#video-open-frame")
            page.locator("#refinement-overlay img").first.wait_for(state="visible")
            _tab(page, "Detect")
            page.wait_for_function(
                "() => document.querySelector('#input-image img')?.src.includes('_frame')",
                timeout=WAIT_MS,
            )
            frame = _shown_image(page)
            summary = _detected(page, frame)
            assert opened not in summary
            assert page.get_by_text("Error", exact=True).count() == 0  # no error badge anywhere
            page.screenshot(path=str(ARTIFACTS / "layout_frame_opened.png"), full_page=True)
        finally:
            browser.close()
