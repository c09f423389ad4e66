"""A DEIM-D-FINE model in the app (issue 23), through its API (gradio_client on 127.0.0.1):
a release file named like DEIM's (``deim_dfine_hgnetv2_n_coco.pth``, seeded random weights)
is uploaded in the Model tab, read as the ``deim`` family without a hint, and every image
endpoint answers on it; the comparison views put it beside the bundled D-FINE-N demo model.
Random weights: every detection above 0 is kept, so each endpoint has queries to show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")

import dfine  # noqa: E402
from app.paths import BUNDLED_WEIGHTS, SYNTH_DIR  # noqa: E402
from tests.app_util import call as call_app  # noqa: E402
from tests.app_util import load_app_py, serve  # noqa: E402
from tests.test_app_api import plotly  # noqa: E402

pytestmark = pytest.mark.server

SYNTH = SYNTH_DIR / "000002.jpg"
TIMEOUT = 180


def call(client, *args, api_name: str):
    return call_app(client, *args, api_name=api_name, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def client():
    demo = load_app_py("dfine_app_deim").create_demo(str(BUNDLED_WEIGHTS))
    with serve(demo) as url:
        yield client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})


@pytest.fixture(scope="module")
def deim_key(client, tmp_path_factory):
    """A DEIM-D-FINE-N release file (DEIM's ``{"model": state_dict}`` layout, 8 classes like
    the demo model) uploaded in the Model tab; its key."""
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=8, family="deim")
    path = tmp_path_factory.mktemp("deim") / "deim_dfine_hgnetv2_n_coco.pth"
    torch.save({"model": model.state_dict()}, path)
    info, key = call(client, "default", client_lib.handle_file(path), api_name="/model")
    assert "`deim`" in info and "SiLU decoder" in info
    return key


def _shared(key: str) -> tuple:
    return (client_lib.handle_file(SYNTH), 0.0, 320, key, 20, False)


def test_every_image_endpoint_answers_on_a_deim_model(client, deim_key):
    shared = _shared(deim_key)
    _, table, _, summary = call(client, *shared, api_name="/detect")
    assert len(table["data"]) == 20 and "**20 detections**" in summary
    _, chart, _ = call(client, *shared, ["0", "1"], 4, api_name="/trace")
    lines = [t for t in plotly(chart)["data"] if t["type"] == "scatter"]
    assert len(lines) == 2 and lines[0]["x"][-1] == "layer 3"
    chart, _, _ = call(client, *shared, "0", 1.0, True, api_name="/distributions")
    bars = [t for t in plotly(chart)["data"] if t["type"] == "bar"]
    assert bars and all(len(b["x"]) == 33 for b in bars)  # reg_max 32: 33 bins per edge
    *plots, _ = call(client, *shared, "0", 2, ["1"], api_name="/attention")
    assert "layer 2 of 3" in plots[0]["plot"]
    summary = call(client, *shared, "auto", "", "left", api_name="/golsd")[0]
    assert "Targets: annotations" in summary and "DDF loss per student layer" in summary


def test_compare_puts_dfine_and_deim_of_one_size_side_by_side(client, deim_key):
    synth = client_lib.handle_file(SYNTH)
    shared = (synth, 0.5, 320, "default", 25, False)
    fig = plotly(call(client, *shared, deim_key, api_name="/compare_refinement"))
    means = [t for t in fig["data"] if t.get("showlegend", True) is not False]
    assert len(means) == 2
    demo, deim = means
    stages = ["pre-head", "layer 1", "layer 2", "layer 3"]
    assert list(demo["x"]) == list(deim["x"]) == stages  # both FDR models of the N size
    assert np.asarray(demo["y"])[-1] > 0.8 > np.asarray(deim["y"])[-1]  # trained vs random
    fig = plotly(call(client, *shared, "0", deim_key, "top", api_name="/compare_distributions"))
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert len(bars) == 6 and all(len(b["x"]) == 33 for b in bars)  # 3 layers of each model
    assert sum("deim_dfine_hgnetv2_n_coco" in b["legendgroup"] for b in bars) == 3
