"""The Evaluate tab's two-model comparison through its API (``/evaluate_compare``, gradio_client
on 127.0.0.1): the bundled demo D-FINE and an uploaded random ``--ablate fdr`` model on the
same uploaded split (the 4 annotated synthetic examples): a COCO AP row per model that agrees
with ``/evaluate``, and the per-stage AP figure of both (the fdr model has no pre-head)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")

from analysis.evaluation import DatasetReport  # noqa: E402
from analysis.evaluation.figures import stage_ap_comparison_figure  # noqa: E402
from analysis.evaluation.stages import StageResult  # noqa: E402
from app.paths import BUNDLED_WEIGHTS  # noqa: E402
from tests.app_util import ablated_checkpoint, load_app_py, serve, synth_split_zip  # noqa: E402
from tests.app_util import call as call_app  # noqa: E402
from tests.test_app_api import plotly  # noqa: E402

TIMEOUT = 300
UPLOAD = "uploaded zip"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # a fresh evaluation cache
        mp.setenv("DFINE_HOME", str(tmp_path_factory.mktemp("dfine_home_compare")))
        demo = load_app_py("dfine_app_evaluate_compare").create_demo(str(BUNDLED_WEIGHTS))
        with serve(demo) as url:
            yield client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """The 4 annotated synthetic examples as a COCO-layout zip."""
    path = synth_split_zip(tmp_path_factory.mktemp("split") / "synth4.zip")
    return client_lib.handle_file(str(path))


@pytest.fixture(scope="module")
def fdr_key(client, tmp_path_factory):
    path = ablated_checkpoint(tmp_path_factory.mktemp("fdr") / "rtdetr_style.safetensors", "fdr")
    _, key = call(client, "default", client_lib.handle_file(path), api_name="/model")
    return key


def call(client, *args, api_name: str):
    return call_app(client, *args, api_name=api_name, timeout=TIMEOUT)


def test_two_models_side_by_side_on_the_same_split(client, split, fdr_key):
    settings = (0.5, True, False)  # threshold, per-stage AP, no calibration
    summary, table, fig = call(
        client, UPLOAD, split, "default", fdr_key, *settings, api_name="/evaluate_compare"
    )
    assert "**4 images**" in summary and "no pre-head" in summary
    assert table["headers"] == ["model", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
    (demo_row, fdr_row) = table["data"]
    assert demo_row[1] > 0.5 > fdr_row[1]  # trained vs random: the first row is the first model
    assert "rtdetr_style" in fdr_row[0]
    # the first model's row is what /evaluate reports on the same data (the cached report)
    single = call(client, UPLOAD, split, "default", *settings, api_name="/evaluate")
    assert f"AP {demo_row[1]:.4f}" in single[0]
    stages = [r[0] for r in single[1]["data"]]
    fig = plotly(fig)
    assert list(fig["layout"]["xaxis"]["categoryarray"]) == stages  # encoder … layer 3
    lines = {f"{t['legendgroup']}: {t['name']}": t for t in fig["data"]}
    assert len(lines) == 6  # AP, AP50, AP75 of each model
    demo_ap, fdr_ap = lines[f"{demo_row[0]}: AP"], lines[f"{fdr_row[0]}: AP"]
    np.testing.assert_allclose(demo_ap["y"], [r[1] for r in single[1]["data"]], atol=1e-4)
    by_stage = dict(zip(fdr_ap["x"], fdr_ap["y"]))
    assert by_stage["pre-head"] is None and by_stage["layer 3"] == pytest.approx(fdr_row[1])


def test_compare_without_a_second_model_or_with_the_same_one(client, split):
    summary, table, fig = call(
        client, UPLOAD, split, "default", "", 0.5, True, False, api_name="/evaluate_compare"
    )
    assert "Choose a second model" in summary and table["data"] in ([], [[]])
    assert "Choose a second model" in plotly(fig)["layout"]["annotations"][0]["text"]
    with pytest.raises(Exception, match="The second model is the first one"):
        call(client, UPLOAD, split, "default", "default", 0.5, True, False,
             api_name="/evaluate_compare")  # fmt: skip


def test_stage_comparison_figure_orders_the_union_of_stages():
    def report(names, aps):
        stages = [StageResult(n, a, a, a, None, None, None, None) for n, a in zip(names, aps)]
        return DatasetReport({}, stages, [], None, [], {}, {}, {})

    fdr = report(["encoder", "layer 1", "layer 2"], [0.1, 0.2, 0.3])
    full = report(["encoder", "pre-head", "layer 1", "layer 2"], [0.1, 0.15, 0.25, 0.35])
    fig = stage_ap_comparison_figure([fdr, full], ["fdr", "full"])
    assert list(fig.layout.xaxis.categoryarray) == ["encoder", "pre-head", "layer 1", "layer 2"]
    assert list(fig.data[0].y) == [0.1, None, 0.2, 0.3]
    assert fig.data[0].line.color != fig.data[3].line.color  # a colour per model
    with pytest.raises(ValueError, match="2 reports but 1 names"):
        stage_ap_comparison_figure([fdr, full], ["fdr"])
