"""The Attention tab: its handler called directly on the bundled demo model and on an
``--ablate fdr`` model (no distributions, attention all the same), its checks, and the
``/attention`` endpoint of a running app returning the four figures."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the app needs gradio")

from app.paths import BUNDLED_WEIGHTS  # noqa: E402
from app.state import SharedInputs  # noqa: E402
from app.summaries import detection_label  # noqa: E402
from app.tabs import attention  # noqa: E402
from dfine.io import load_image  # noqa: E402
from tests.app_util import SYNTH_EXAMPLE, ablated_checkpoint, app_state, load_app_py, serve  # noqa: E402  # noqa: E402
from tests.app_util import call as call_app  # noqa: E402

SHARED = (str(SYNTH_EXAMPLE), 0.5, 320, "default", 300, False)  # 6 shapes above 0.5
TIMEOUT = 120


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return app_state(tmp_path_factory.mktemp("attention"))


def _points(fig) -> list:
    return [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]


def test_attention_figures_of_the_demo_model(state):
    points, heat, origin, neighbours, image = attention.attention(state, *SHARED, "2", 3, None)
    sel = state.select(SharedInputs(*SHARED))
    trace, q = sel.result.trace, int(sel.queries[2])
    heads, num_points = trace.sampling_locations.shape[3], sum(trace.num_points)
    # one marker trace per level (N: strides 16 and 32), every head's every point
    levels = _points(points)
    assert [t.name.split(" (")[0] for t in levels] == ["stride 16", "stride 32"]
    assert sum(len(t.x) for t in levels) == heads * num_points
    expected = trace.sampling_locations[2, 0, q, :, :, 0].numpy() * sel.result.image_size[0]
    shown = np.sort(np.concatenate([t.x for t in levels]))
    np.testing.assert_allclose(shown, np.sort(expected.reshape(-1)), rtol=1e-5)
    assert f"query {q} sampled at layer 3 of 3" in points.layout.title.text.replace("<br>", " ")
    assert len(points.layout.images) == 1  # the image underneath
    # heat maps: one per level; with every point inside the maps they hold all the mass
    maps = [t for t in heat.data if t.type == "heatmap"]
    assert len(maps) == 2 and sum(np.asarray(m.z).sum() for m in maps) <= 1 + 1e-5
    # origin: the selected positions of every level, and this query's star
    selected = [t for t in origin.data if t.name == "selected positions"]
    assert sum(len(t.x) for t in selected) == trace.boxes.shape[2]
    assert f"query {q}'s position" in [t.name for t in origin.data]
    bars = [t for t in neighbours.data if t.type == "bar"]
    assert len(bars) == 1 and len(bars[0].x) == attention.NEIGHBOURS
    assert np.asarray(image).shape == load_image(SYNTH_EXAMPLE).shape


def test_layer_and_heads_change_the_points(state):
    last = attention.attention(state, *SHARED, "0", 3, None)[0]
    first = attention.attention(state, *SHARED, "0", 1, None)[0]
    assert "layer 1 of 3" in first.layout.title.text.replace("<br>", " ")
    xs = [np.concatenate([t.x for t in _points(f)]) for f in (first, last)]
    assert not np.allclose(np.sort(xs[0]), np.sort(xs[1]))
    one = attention.attention(state, *SHARED, "0", 3, ["2"])
    assert sum(len(t.x) for t in _points(one[0])) == sum(len(t.x) for t in _points(last)) // 8
    titles = [f.layout.title.text.replace("<br>", " ") for f in one[:2]]  # titles wrap
    assert all("head 2" in t for t in titles)
    hover = _points(one[0])[0].customdata[:, 0]
    assert set(hover.tolist()) == {2}  # the hover names the head, 1-based


def test_letterboxed_points_are_in_image_pixels(state, tmp_path):
    """With the letterbox on, a tall image's points are drawn where the trace (mapped out of
    the padding like the boxes) puts them: ``x × width``, ``y × height``."""
    tall = np.full((480, 240, 3), 114, np.uint8)
    tall[80:400] = load_image(SYNTH_EXAMPLE)[:, 40:280]
    path = tmp_path / "tall.png"
    Image.fromarray(tall).save(path)
    shared = (str(path), 0.3, 320, "default", 300, True)
    sel = state.select(SharedInputs(*shared))
    assert sel.result.trace.input_extent != (0.0, 0.0, 1.0, 1.0)
    points = attention.attention(state, *shared, "0", 2, None)[0]
    q = int(sel.queries[0])
    xy = sel.result.trace.sampling_locations[1, 0, q].reshape(-1, 2).double().numpy() * [240, 480]
    shown = np.stack(
        [
            np.concatenate([t.x for t in _points(points)]),
            np.concatenate([t.y for t in _points(points)]),
        ],
        -1,
    )
    np.testing.assert_allclose(np.sort(shown, 0), np.sort(xy, 0), rtol=1e-5)


def test_clicking_a_box_picks_it(state):
    sel = state.select(SharedInputs(*SHARED))
    x1, y1, x2, y2 = sel.detections.boxes[3]
    evt = SimpleNamespace(index=[(x1 + x2) / 2, (y1 + y2) / 2])
    label = attention.select_box(state, SharedInputs(*SHARED), evt)
    assert label == detection_label(3, sel.detections)


@pytest.mark.parametrize(
    ("layer", "heads", "match"),
    [
        (4, None, "from 1 to 3, got 4"),
        (1.5, None, "whole number"),
        (1, [], "at least one attention head"),
        (1, ["9"], "numbered 1 to 8"),
    ],
)
def test_bad_values_are_one_line(state, layer, heads, match):
    with pytest.raises(gr.Error, match=match) as err:
        attention.attention(state, *SHARED, "0", layer, heads)
    assert "\n" not in err.value.message


def test_an_ablate_fdr_model_has_attention(state, tmp_path):
    """A model without FDR (RT-DETR-style boxes): no distributions, but every attention view;
    random weights, so every detection above 0 is kept."""
    loaded = state.store.add_upload(ablated_checkpoint(tmp_path / "fdr.safetensors", "fdr"))
    shared = (str(SYNTH_EXAMPLE), 0.0, 320, loaded.entry.key, 300, False)
    points, heat, origin, neighbours, _ = attention.attention(state, *shared, "0", 2, None)
    assert "layer 2 of 3" in points.layout.title.text.replace("<br>", " ")
    assert len(_points(points)) == 2 and len([t for t in heat.data if t.type == "heatmap"]) == 2
    assert "came from" in origin.layout.title.text
    assert "no duplicate" in neighbours.layout.title.text


@pytest.mark.server
def test_attention_endpoint_returns_the_figures():
    client_lib = pytest.importorskip("gradio_client")
    demo = load_app_py("dfine_app_attention").create_demo(str(BUNDLED_WEIGHTS))
    with serve(demo) as url:
        client = client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})
        named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert "/attention" in named
        image = client_lib.handle_file(SYNTH_EXAMPLE)
        out = call_app(
            client, image, *SHARED[1:], "1", 2, ["1", "2"], api_name="/attention", timeout=TIMEOUT
        )
    *plots, picked = out
    assert [p["type"] for p in plots] == ["plotly"] * 4
    assert "layer 2 of 3" in plots[0]["plot"] and "heads 1, 2" in plots[0]["plot"]
    assert Path(picked).exists()
