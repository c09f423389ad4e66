"""Two models side by side in a real browser (Debian's Chromium via Playwright): upload an
``--ablate golsd`` and an ``--ablate fdr`` checkpoint in the Model tab, go back to the bundled
demo model, and pick each as the second model in the Refinement, Distributions and Evaluate
tabs' compare controls: both models' per-layer IoU curves, the same edge's distributions per
layer in both (the fdr model: its box edge and a plain note that it has no distributions, no
error), and both models' COCO AP and per-stage AP on the same split; with the fdr model as
the first model, the Distributions tab explains that it has none. The ablated models are
random-initialised D-FINE-N checkpoints of each variant (the demo's 8 classes, metadata as
``dfine train --ablate`` writes it). Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfine.optional import chromium_path

CHROMIUM = chromium_path()  # None: every test here is skipped (tests/conftest.py)
pytest.importorskip("gradio", reason="the app needs gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

import torch  # noqa: E402

import dfine  # noqa: E402
from app.paths import BUNDLED_WEIGHTS, SYNTH_DIR  # noqa: E402
from app.tabs.evaluate import UPLOAD  # noqa: E402
from tests.app_util import (  # noqa: E402
    PLOTLY_TEXT_PROBLEMS,
    ablated_checkpoint,
    load_app_py,
    serve,
    synth_split_zip,
)

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SYNTH = SYNTH_DIR / "000002.jpg"  # annotated: the IoU curves are against its ground truth
WAIT_MS = 90_000  # every browser wait is bounded by this
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
LAYERS = ["layer 1", "layer 2", "layer 3"]
NAMES = {"golsd": "variant_golsd", "fdr": "variant_fdr", "deim": "deim_dfine_hgnetv2_n_coco"}


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """``variant_golsd.safetensors`` and ``variant_fdr.safetensors``: random D-FINE-N; and
    a random DEIM-D-FINE-N release file as DEIM names and writes them (issue 23)."""
    folder = tmp_path_factory.mktemp("variants")
    out = {}
    for ablation in ("golsd", "fdr"):
        out[ablation] = ablated_checkpoint(folder / f"variant_{ablation}.safetensors", ablation)
        assert dfine.load_model(out[ablation]).ablation == ablation
    torch.manual_seed(0)
    out["deim"] = folder / f"{NAMES['deim']}.pth"
    torch.save({"model": dfine.build_model("n", 8, family="deim").state_dict()}, out["deim"])
    return out


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The 4 annotated synthetic examples as a COCO-layout zip (a fast Evaluate split)."""
    return synth_split_zip(tmp_path_factory.mktemp("split") / "synth4.zip")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # a fresh evaluation cache
        mp.setenv("DFINE_HOME", str(tmp_path_factory.mktemp("dfine_home_compare_browser")))
        demo = load_app_py("dfine_app_compare_browser").create_demo(str(BUNDLED_WEIGHTS))
        demo.queue(default_concurrency_limit=2, max_size=20)
        with serve(demo) as address:
            yield address


def _pick(page, selector: str, text: str) -> None:
    """Choose the option containing ``text`` in the dropdown ``selector``."""
    page.locator(f"{selector} input").click()
    page.get_by_role("option").filter(has_text=text).first.click()


def _upload(page, selector: str, path: Path) -> None:
    """Put ``path`` in the file box ``selector`` and wait until gradio has it: the file's row
    shows its download link (it says "Uploading..." until the server holds the file)."""
    page.locator(f"{selector} input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "([sel, name]) => [...document.querySelectorAll(`${sel} td.filename`)].some(td =>"
        " td.getAttribute('aria-label') === name"
        " && td.parentElement.querySelector('td.download a[href]'))",
        arg=[selector, path.name],
        timeout=WAIT_MS,
    )


def _open_compare(page, label: str = "Compare with a second model") -> None:
    page.locator(f"button:visible:has-text('{label}')").first.click()


def _plot_data(page, selector: str, js: str, until_js: str):
    """``js`` (a function of the plot's ``_fullData``) once ``until_js`` holds for it."""
    page.wait_for_function(
        f"() => {{ const el = document.querySelector('{selector} .js-plotly-plot');"
        f" if (!el || !el._fullData) return false; const d = el._fullData; return {until_js}; }}",
        timeout=WAIT_MS,
    )
    return page.locator(f"{selector} .js-plotly-plot").evaluate(
        f"el => {{ const d = el._fullData; return {js}; }}"
    )


def _shot(page, name: str, shots: list[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)  # let plotly finish its layout
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    shots.append(str(ARTIFACTS / name))


def _layout_problems(page) -> dict:
    return {f["id"]: f["problems"] for f in page.evaluate(PLOTLY_TEXT_PROBLEMS) if f["problems"]}


def test_compare_two_models_in_refinement_distributions_and_evaluate(
    url, variants, split, record_property
):
    shots: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.wait_for_selector("#detect-button", state="visible")

            # the two ablated checkpoints and a DEIM release file, uploaded in the Model tab
            page.get_by_role("tab", name="Model").click()
            for ablation in ("golsd", "fdr", "deim"):
                _upload(page, "#model-upload", variants[ablation])
                page.click("#model-load")
                page.locator("#model-info").get_by_text(NAMES[ablation]).first.wait_for()
                page.locator("#model-info").get_by_text(ablation).first.wait_for()
                page.locator("#model-upload button[aria-label='Clear']").click()  # for the next
            assert "DEIM-D-FINE (SiLU decoder" in page.locator("#model-info").inner_text()

            # back to the demo model, on an annotated example
            page.get_by_role("tab", name="Detect").click()
            _pick(page, "#model", "Default")
            page.locator("#input-image input[type=file]").set_input_files(str(SYNTH))
            page.wait_for_selector("#input-image img", state="visible")
            page.click("#detect-button")
            page.wait_for_function(
                "() => Number(document.querySelector('#detections-table [role=grid]')"
                "?.getAttribute('aria-rowcount')) > 1",
                timeout=WAIT_MS,
            )

            # Refinement: per-layer IoU curves of both models
            page.get_by_role("tab", name="Refinement").click()
            _open_compare(page)
            means = "d.filter(t => t.type === 'scatter' && t.showlegend !== false)"
            curves = {}
            for ablation in ("golsd", "fdr", "deim"):
                _pick(page, "#compare-refinement-model", NAMES[ablation])
                curves[ablation] = _plot_data(
                    page, "#compare-refinement-plot",
                    f"{means}.map(t => ({{name: t.name, x: Array.from(t.x), y: Array.from(t.y)}}))",
                    f"{means}.length === 2 && {means}[1].name.includes('{NAMES[ablation]}')",
                )  # fmt: skip
                _shot(page, f"compare_1_refinement_{ablation}.png", shots)
            demo, golsd = curves["golsd"]
            assert demo["name"].startswith("Default")
            ytitle = page.locator("#compare-refinement-plot .g-ytitle").text_content()
            assert "ground truth" in ytitle, ytitle
            assert demo["x"] == golsd["x"] == ["pre-head", *LAYERS]
            assert demo["y"][-1] > 0.8  # the trained model's boxes on the ground truth
            assert curves["fdr"][1]["x"] == LAYERS  # no pre-head without FDR
            assert curves["deim"][1]["x"] == ["pre-head", *LAYERS]  # DEIM keeps FDR
            assert curves["deim"][1]["y"][-1] < 0.8  # random weights beside the trained demo
            assert all(0 <= v <= 1 for c in curves.values() for t in c for v in t["y"])
            problems = _layout_problems(page)

            # Distributions: the same edge per layer in both models
            page.get_by_role("tab", name="Distributions").click()
            page.locator("#dist-plot .gtitle").filter(has_text="detection 0 ").first.wait_for()
            _open_compare(page)
            bars = "d.filter(t => t.type === 'bar')"
            for ablation, count in (("golsd", 6), ("fdr", 3)):
                _pick(page, "#compare-distributions-model", f"variant_{ablation}")
                got = _plot_data(
                    page, "#compare-dist-plot",
                    f"{bars}.map(t => ({{name: t.name, sum: Array.from(t.y).reduce((a, b) => a + b, 0)}}))",
                    f"d.some(t => (t.name || '').includes('variant_{ablation}'))",
                )  # fmt: skip
                assert len(got) == count, got  # 3 layers of the demo (+ 3 of golsd)
                assert all(abs(b["sum"] - 1) < 1e-3 for b in got)  # probability distributions
                assert sum("variant_golsd" in b["name"] for b in got) == (count - 3)
                _shot(page, f"compare_2_distributions_{ablation}.png", shots)
            note = page.locator("#compare-dist-plot .annotation-text").all_text_contents()
            assert any("box edge only" in t for t in page.locator(
                "#compare-dist-plot .legendtext").all_text_contents())  # fmt: skip
            assert any("no distributions" in t or "without FDR" in t for t in note), note
            assert page.locator(".toast-body").count() == 0  # explained, not an error
            problems.update(_layout_problems(page))

            # Evaluate: both models on the same (uploaded) split
            page.get_by_role("tab", name="Evaluate").click()
            _upload(page, "#evaluate-zip", split)
            # the upload event's answer: the Dataset choice switched to the uploaded zip (the
            # compare run reads it; clicking before it arrives evaluates the bundled split)
            page.wait_for_function(
                "v => [...document.querySelectorAll('input[type=radio]')]"
                ".some(r => r.value === v && r.checked)",
                arg=UPLOAD,
                timeout=WAIT_MS,
            )
            _open_compare(page)
            _pick(page, "#evaluate-compare-model", "variant_fdr")
            page.click("#evaluate-compare-button")
            page.locator("#evaluate-compare-summary").get_by_text("4 images").first.wait_for()
            rows = page.locator("#evaluate-compare-table [role=row]").all_inner_texts()
            assert len(rows) == 3 and "Default" in rows[1] and "variant_fdr" in rows[2], rows
            lines = _plot_data(
                page,
                "#evaluate-compare-plot",
                "d.map(t => t.legendgroup + ': ' + t.name)",
                "d.length === 6",
            )
            assert sum("variant_fdr" in n for n in lines) == 3
            _shot(page, "compare_3_evaluate.png", shots)
            problems.update(_layout_problems(page))
            assert page.locator(".toast-body").count() == 0

            # the fdr model as the first model: Distributions explains, nothing fails
            page.get_by_role("tab", name="Detect").click()
            _pick(page, "#model", "variant_fdr")
            page.click("#detect-button")
            page.locator("#detect-summary").get_by_text("detection").first.wait_for()
            page.get_by_role("tab", name="Distributions").click()
            page.locator("#dist-plot .annotation-text").filter(
                has_text="--ablate fdr"
            ).first.wait_for()  # "… needs per-edge distributions, but this model was trained …"
            _shot(page, "compare_4_fdr_distributions.png", shots)
            assert page.locator(".toast-body").count() == 0
            problems.update(_layout_problems(page))
            assert not problems, problems
        finally:
            browser.close()
    record_property("compare_screenshots", ", ".join(shots))
    print("screenshots:\n" + "\n".join(shots))
