"""The app as a server (the bundled demo model): launched from app.py on 127.0.0.1, every endpoint called with
gradio_client, outputs checked for content. Every wait is bounded."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")

import analysis  # noqa: E402
from app.paths import BUNDLED_WEIGHTS, FIXTURE_WEIGHTS, SYNTH_ANNOTATIONS  # noqa: E402
from app.tables import DETECTION_COLUMNS  # noqa: E402
from dfine.io import load_image  # noqa: E402
from tests.app_util import call as call_app  # noqa: E402
from tests.app_util import load_app_py, serve  # noqa: E402

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "assets" / "examples" / "chelsea.jpg"
SYNTH = ROOT / "assets" / "examples" / "synth" / "000002.jpg"
TIMEOUT = 120  # seconds, for any single call
THRESHOLD = 0.1  # the demo model (synthetic shapes) is unsure about a photo: a few pass 0.1
SHARED = (THRESHOLD, 320, "default", 300, False)  # False: no letterbox


@pytest.fixture(scope="module")
def server():
    demo = load_app_py().create_demo(str(BUNDLED_WEIGHTS))
    assert demo.max_threads >= 2
    with serve(demo) as url:
        yield demo, url


@pytest.fixture(scope="module")
def client(server):
    return client_lib.Client(server[1], verbose=False, httpx_kwargs={"timeout": TIMEOUT})


def call(client, *args, api_name: str):
    return call_app(client, *args, api_name=api_name, timeout=TIMEOUT)


def image(path: str | Path) -> np.ndarray:
    return load_image(path)


def plotly(output: dict) -> dict:
    """A plotly figure sent by the server, numeric arrays decoded (plotly's JSON writes them
    as base64 typed arrays)."""
    assert output["type"] == "plotly"
    return _decode(json.loads(output["plot"]))


def _decode(value):
    if isinstance(value, dict):
        if set(value) >= {"dtype", "bdata"}:
            data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            if "shape" not in value:
                return data
            shape = value["shape"]  # plotly writes a 2-D shape as "rows, cols"
            if isinstance(shape, str):
                shape = tuple(int(n) for n in shape.split(","))
            return data.reshape(shape)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def test_queue_is_configured(server):
    demo, _ = server
    assert demo._queue.max_size == 20
    assert demo._queue.default_concurrency_limit == 2


def test_every_endpoint_is_named(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/detect", "/trace", "/distributions", "/weighting", "/golsd", "/model"} <= named


def test_detect(client):
    handle = client_lib.handle_file(PHOTO)
    # at 0.2 two boxes: most of the image is far from them
    annotated, table, json_path, summary = call(
        client, handle, 0.2, *SHARED[1:], api_name="/detect"
    )
    assert table["headers"] == DETECTION_COLUMNS
    rows = table["data"]
    assert 0 < len(rows) < 300
    assert all(row[2] > 0.2 for row in rows)
    data = json.loads(Path(json_path).read_text())
    assert [d["box"] for d in data["detections"]] == [row[3:] for row in rows]
    assert data["image_size"] == {"width": 451, "height": 300}
    assert f"**{len(rows)} detections**" in summary and "inference" in summary
    drawn, original = image(annotated).astype(int), image(PHOTO).astype(int)
    assert drawn.shape == original.shape
    x1, y1, _, y2 = (int(v) for v in rows[0][3:])
    # the outline of the first box is drawn (lossy webp: compare with a margin)
    outline = np.abs(
        drawn[y1:y2, max(x1 - 1, 0) : x1 + 2] - original[y1:y2, max(x1 - 1, 0) : x1 + 2]
    )
    assert outline.mean() > 20
    # far from every box and its label the image is unchanged (up to compression); a label
    # sits above the box, inside it or below it (dfine.draw.label), so 30 px on either side
    far = np.ones(original.shape[:2], bool)
    for bx1, by1, bx2, by2 in (row[3:] for row in rows):
        far[max(int(by1) - 30, 0) : int(by2) + 30, max(int(bx1) - 150, 0) : int(bx2) + 150] = False
    assert far.sum() > 15_000
    assert np.abs(drawn[far] - original[far]).mean() < 4


def test_trace(client):
    handle = client_lib.handle_file(PHOTO)
    overlay, chart, table = call(client, handle, *SHARED, ["0", "1"], 4, api_name="/trace")
    assert image(overlay).shape == (300, 451, 3)
    fig = plotly(chart)
    lines = [t for t in fig["data"] if t["type"] == "scatter"]
    assert len(lines) == 2 and lines[0]["x"][-1] == "layer 3"
    assert lines[0]["y"][-1] == pytest.approx(1.0)
    assert "showing stage: layer 3" in fig["layout"]["title"]["text"]
    assert len(table["data"]) == 2 * 5
    assert {"#", "stage", "IoU to final"} <= set(table["headers"])


def test_distributions(client):
    handle = client_lib.handle_file(PHOTO)
    chart, overlay, stats = call(
        client, handle, *SHARED, "0: frisbee", 1.5, False, api_name="/distributions"
    )
    fig = plotly(chart)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert len(bars) == 4 * 3  # four edges × three decoder layers
    assert all(len(b["x"]) == 33 for b in bars)  # reg_max + 1 bins
    assert sum(bars[0]["y"]) == pytest.approx(1.0, abs=1e-4)
    assert "detection 0" in fig["layout"]["title"]["text"]
    assert len(stats["data"]) == 12 and "σ (px)" in stats["headers"]
    assert np.abs(image(overlay).astype(int) - image(PHOTO)).mean() > 0.1


@pytest.mark.chromium
def test_distributions_figure_download(client):
    handle = client_lib.handle_file(PHOTO)
    png = call(client, handle, *SHARED, "0", "png", api_name="/distributions_figure")
    assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_weighting(client):
    chart, table, summary = call(client, 16, 0.25, 8.0, "default", api_name="/weighting")
    curve = analysis.weighting_curve(16, 0.25, 8.0)
    fig = plotly(chart)
    np.testing.assert_allclose(fig["data"][0]["customdata"], curve.w, rtol=1e-6)
    np.testing.assert_allclose(fig["data"][0]["y"], curve.box_fraction, rtol=1e-6)
    assert len(table["data"]) == 17 and "W(n)" in table["headers"]
    assert "reg_max = 16" in summary and "reg_max = 32" in summary


def test_golsd_with_annotations_and_with_pseudo_targets(client):
    coco = json.loads(SYNTH_ANNOTATIONS.read_text())
    count = sum(a["image_id"] == 2 for a in coco["annotations"])
    synth = client_lib.handle_file(SYNTH)
    out = call(client, synth, 0.5, 320, "default", 25, False, "auto", "", "top", api_name="/golsd")
    note, targets, query, dist, kl, _, table = out
    assert note.startswith("### ground truth: annotations") and f"({count} boxes)" in note
    assert query.startswith("query ")
    assert len(plotly(dist)["data"]) == 3 and len(plotly(kl)["data"]) == 4
    assert image(targets).shape == (320, 320, 3)
    assert table["headers"][:3] == ["query", "matched", "target"]
    photo = client_lib.handle_file(PHOTO)
    out = call(client, photo, *SHARED, "pseudo", "", "left", api_name="/golsd")
    assert "pseudo ground truth: the model's own detections" in out[0]
    assert "pseudo ground truth" in plotly(out[5])["layout"]["title"]["text"]


def test_model_default_and_upload(client, tmp_path):
    info, key = call(client, "default", None, api_name="/model")
    assert isinstance(key, str)
    assert key == "default" and "3.74 M" in info and "D-FINE-N" in info
    mine = tmp_path / "api_upload.pth"
    shutil.copy(FIXTURE_WEIGHTS, mine)
    info, key = call(client, "default", client_lib.handle_file(mine), api_name="/model")
    assert key.startswith("upload-") and "api_upload.pth" in info
    handle = client_lib.handle_file(PHOTO)
    _, table, _, summary = call(client, handle, 0.0494, 640, key, 300, api_name="/detect")
    assert len(table["data"]) > 0 and "api_upload.pth" in summary


def test_errors_are_readable(client, tmp_path):
    text = tmp_path / "note.jpg"
    text.write_text("not a picture")
    with pytest.raises(client_lib.exceptions.AppError, match="not an image") as err:
        call(client, client_lib.handle_file(text), *SHARED, api_name="/detect")
    assert "note.jpg" in str(err.value) and "Traceback" not in str(err.value)
    handle = client_lib.handle_file(PHOTO)
    with pytest.raises(client_lib.exceptions.AppError, match="maximum"):
        call(client, handle, 1.5, 320, "default", 25, api_name="/detect")
    with pytest.raises(client_lib.exceptions.AppError, match="No detections above"):
        call(
            client, handle, 0.9, 320, "default", 25, False, "", 1.0, True, api_name="/distributions"
        )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(client_lib.exceptions.AppError, match=r"garbage\.pth"):
        call(client, "default", client_lib.handle_file(garbage), api_name="/model")
