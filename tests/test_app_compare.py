"""Two models side by side in the app, through its API (gradio_client on 127.0.0.1): the
bundled demo D-FINE and an uploaded ``--ablate fdr`` model (no distributions) on an annotated
synthetic example. Every wait is bounded."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")

from app.paths import BUNDLED_WEIGHTS, SYNTH_DIR  # noqa: E402
from tests.app_util import ablated_checkpoint, load_app_py, serve  # noqa: E402
from tests.app_util import call as call_app  # noqa: E402
from tests.test_app_api import plotly  # noqa: E402

SYNTH = SYNTH_DIR / "000002.jpg"
TIMEOUT = 180
SHARED = (0.5, 320, "default", 25, False)  # False: no letterbox


@pytest.fixture(scope="module")
def client():
    demo = load_app_py("dfine_app_compare").create_demo(str(BUNDLED_WEIGHTS))
    with serve(demo) as url:
        yield client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})


@pytest.fixture(scope="module")
def fdr_key(client, tmp_path_factory):
    path = ablated_checkpoint(tmp_path_factory.mktemp("fdr") / "rtdetr_style.safetensors", "fdr")
    info, key = call(client, "default", client_lib.handle_file(path), api_name="/model")
    assert "`fdr`" in info and "no distributions" in info
    return key


def call(client, *args, api_name: str):
    return call_app(client, *args, api_name=api_name, timeout=TIMEOUT)


def test_refinement_of_two_models_on_the_same_annotated_objects(client, fdr_key):
    synth = client_lib.handle_file(SYNTH)
    fig = plotly(call(client, synth, *SHARED, fdr_key, api_name="/compare_refinement"))
    means = [t for t in fig["data"] if t.get("showlegend", True) is not False]
    assert len(means) == 2
    demo, fdr = means
    assert list(demo["x"]) == ["pre-head", "layer 1", "layer 2", "layer 3"]
    assert list(fdr["x"]) == ["layer 1", "layer 2", "layer 3"]  # no pre-head without FDR
    assert "ground truth" in fig["layout"]["yaxis"]["title"]["text"]
    coco = json.loads((SYNTH_DIR / "instances_val.json").read_text())
    count = sum(a["image_id"] == 2 for a in coco["annotations"])
    assert demo["name"].endswith(f"mean of {count}")
    assert np.asarray(demo["y"])[-1] > 0.8 > np.asarray(fdr["y"])[-1]  # trained vs random
    # without a second model: a plain request to choose one
    fig = plotly(call(client, synth, *SHARED, "", api_name="/compare_refinement"))
    assert "Choose a second model" in fig["layout"]["annotations"][0]["text"]


def test_distributions_of_the_same_edge_in_two_models(client, fdr_key):
    synth = client_lib.handle_file(SYNTH)
    fig = plotly(
        call(client, synth, *SHARED, "0", fdr_key, "top", api_name="/compare_distributions")
    )
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert len(bars) == 3 and all(len(b["x"]) == 33 for b in bars)  # the demo model's layers
    assert any("box edge only" in (t.get("name") or "") for t in fig["data"])
    assert "top edge" in fig["layout"]["title"]["text"]


def test_a_model_without_distributions_is_explained_not_failed(client, fdr_key):
    synth = client_lib.handle_file(SYNTH)
    args = (synth, 0.0, 320, fdr_key, 5, False)
    chart, _, stats = call(client, *args, "0", 1.0, True, api_name="/distributions")
    text = plotly(chart)["layout"]["annotations"][0]["text"].replace("<br>", " ")
    assert "--ablate fdr" in text and stats["headers"] == ["note"]
    summary = call(client, *args, "auto", "", "left", api_name="/golsd")[0]
    assert "--ablate fdr" in summary
    _, chart, table = call(client, *args, ["0"], 3, api_name="/trace")  # boxes per layer: fine
    lines = [t for t in plotly(chart)["data"] if t["type"] == "scatter"]
    assert list(lines[0]["x"]) == ["encoder (b0)", "layer 1", "layer 2", "layer 3"]
    assert len(table["data"]) == 4
