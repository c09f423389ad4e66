"""The app's tab handlers, called directly (no server) on the bundled demo model
(D-FINE-N trained on synthetic shapes, 320×320). Every test computes what it needs itself:
none depends on another having run first."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the app needs gradio")

from gradio.helpers import special_args  # noqa: E402

import analysis  # noqa: E402
import dfine  # noqa: E402
from app import models as app_models  # noqa: E402
from app import tables  # noqa: E402
from app.checks import first_int  # noqa: E402
from app.errors import UserError, user_errors  # noqa: E402
from app.ground_truth import AnnotatedExamples  # noqa: E402
from app.models import ModelStore  # noqa: E402
from app.paths import FIXTURE_BANNER, FIXTURE_WEIGHTS, SYNTH_ANNOTATIONS  # noqa: E402
from app.results import file_digest  # noqa: E402
from app.state import AppState, SharedInputs  # noqa: E402
from app.summaries import detection_label  # noqa: E402
from app.tables import DETECTION_COLUMNS  # noqa: E402
from app.tabs import detect, distributions, golsd, model, refinement, weighting  # noqa: E402
from app.tabs.common import SHARED, Controls, bind, quietly, selection, shared_inputs  # noqa: E402
from app.tabs.distributions import nearest_box  # noqa: E402
from dfine.io import load_image  # noqa: E402
from dfine.zoo import ZooDownloadError  # noqa: E402
from tests.app_util import SYNTH_EXAMPLE, app_state  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE = SYNTH_EXAMPLE  # 6 shapes, all found at 0.5
SYNTH = ROOT / "assets" / "examples" / "synth" / "000002.jpg"
PHOTO = ROOT / "assets" / "examples" / "astronaut.jpg"  # no shapes: nothing above 0.5
SIZE = 320  # the demo model's own input size
THRESHOLD = 0.5
MAX = 300


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> AppState:
    tmp = tmp_path_factory.mktemp("app")
    return app_state(tmp)


def _shared(image=IMAGE, threshold=THRESHOLD):
    return str(image), threshold, SIZE, "default", MAX, False  # False: stretch (no letterbox)


def _dets(state, image=IMAGE, threshold=THRESHOLD):
    return state.select(SharedInputs(*_shared(image, threshold))).detections


def _raises(match: str):
    return pytest.raises(gr.Error, match=match)


def _readable(err: pytest.ExceptionInfo) -> str:
    message = err.value.message
    assert "Traceback" not in message and 'File "' not in message
    assert "/tmp/" not in message  # server temp folders are not shown
    assert "\n" not in message  # one line
    return message


# ------------------------------------------------------------------------------ /detect
def test_detect_table_json_and_summary(state):
    annotated, table, json_path, summary = detect.detect(state, *_shared())
    reference = dfine.Detector(state.store.get("default").model, threshold=THRESHOLD, size=SIZE)(
        IMAGE
    )
    truth = json.loads(SYNTH_ANNOTATIONS.read_text())
    assert len(reference) == sum(a["image_id"] == 1 for a in truth["annotations"])
    assert list(table.columns) == DETECTION_COLUMNS
    assert len(table) == len(reference)  # one row per detection above the threshold
    assert (table["score"] > THRESHOLD).all()
    np.testing.assert_allclose(table[DETECTION_COLUMNS[3:]].to_numpy(), reference.boxes, atol=0.06)
    assert table["class"].tolist() == reference.names
    data = json.loads(Path(json_path).read_text())
    assert len(data["detections"]) == len(table)
    assert data["image_size"] == {"width": 320, "height": 320}
    assert set(data["speed"]) == {"preprocess", "inference", "postprocess"}
    assert f"{len(table)} detections" in summary
    assert "inference" in summary and "ms" in summary
    assert "on PyTorch f32, traced" in summary  # the runtime it ran on, named
    assert FIXTURE_BANNER not in summary
    assert annotated.size == (320, 320)


def test_detect_draws_boxes_only_where_the_boxes_are(state):
    annotated, table, _, _ = detect.detect(state, *_shared())
    before = load_image(IMAGE).astype(int)
    after = np.asarray(annotated).astype(int)
    assert after.shape == before.shape
    changed = np.abs(after - before).sum(-1) > 0
    near = np.zeros_like(changed)
    for x1, y1, x2, y2 in table[DETECTION_COLUMNS[3:]].to_numpy():
        # outline plus the label tag above or inside it
        near[max(int(y1) - 40, 0) : int(y2) + 40, max(int(x1) - 200, 0) : int(x2) + 200] = True
    assert changed.any()
    assert not (changed & ~near).any(), "pixels changed away from every box"
    x1, y1, x2, y2 = (round(float(v)) for v in table.iloc[0, 3:].to_numpy())
    edge = changed[min(y1, 319) : min(y2, 319) + 1, max(x1 - 1, 0) : x1 + 2]
    assert edge.mean() > 0.5, "the first box's left edge is drawn"


def test_detect_reuses_the_cached_forward_pass(state):
    detect.detect(state, *_shared())
    misses = state.cache.misses
    _, table, _, summary = detect.detect(state, *_shared(threshold=0.05))
    assert state.cache.misses == misses  # another threshold: no new forward pass
    assert "reused" in summary
    assert len(table) > len(_dets(state))


def test_refilter_reads_the_cache_only(state, tmp_path):
    fresh = tmp_path / "fresh.jpg"
    shutil.copy(SYNTH, fresh)
    misses = state.cache.misses
    assert all(v == gr.skip() for v in detect.refilter(state, *_shared(fresh)))
    assert state.cache.misses == misses  # nothing computed for an image never detected
    detect.detect(state, *_shared(fresh))
    _, low, _, _ = detect.refilter(state, *_shared(fresh, threshold=0.05))
    _, high, _, _ = detect.refilter(state, *_shared(fresh, threshold=0.9))
    assert len(low) > len(high)
    assert state.cache.misses == misses + 1


def test_detect_zero_detections_says_so(state):
    annotated, table, _, summary = detect.detect(state, *_shared(threshold=0.999))
    assert len(table) == 0 and list(table.columns) == DETECTION_COLUMNS
    assert "0 detections" in summary and "lower it" in summary
    np.testing.assert_array_equal(np.asarray(annotated), load_image(IMAGE))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"threshold": 1.5}, "threshold must be between 0 and 1"),
        ({"threshold": -0.1}, "threshold must be between 0 and 1"),
        ({"size": 333}, "multiple of 32 between 256 and 800"),
        ({"size": 1024}, "multiple of 32 between 256 and 800"),
        ({"max_detections": 0}, "from 1 to 300"),
        ({"model": "dfine_q_coco"}, "Unknown model"),
        ({"image": None}, "Upload an image first"),
    ],
)
def test_detect_rejects_bad_options(state, args, match):
    values = dict(zip(SHARED, _shared()))
    values.update(args)
    with _raises(match) as err:
        detect.detect(state, **values)
    _readable(err)


def test_text_file_as_image_is_a_readable_error(state, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a picture\n")
    with _raises("not an image") as err:
        detect.detect(state, str(fake), 0.5, SIZE, "default", MAX)
    assert "holiday.jpg" in _readable(err)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with _raises("empty"):
        detect.detect(state, str(empty), 0.5, SIZE, "default", MAX)


# ------------------------------------------------------------------------------ /trace
def test_trace_overlay_figure_and_table(state):
    dets = _dets(state)
    picks = [detection_label(i, dets) for i in (0, 2)]
    stages = state.store.get("default").num_layers + 2
    overlay, fig, rows = refinement.trace(state, *_shared(), picks, stages - 1)
    assert overlay.size == (320, 320)
    assert np.abs(np.asarray(overlay).astype(int) - load_image(IMAGE)).sum() > 0
    iou_traces = [t for t in fig.data if t.type == "scatter"]
    assert len(iou_traces) == 2  # one IoU line per chosen detection
    assert list(iou_traces[0].x) == ["encoder (b0)", "pre-head", "layer 1", "layer 2", "layer 3"]
    assert iou_traces[0].y[-1] == pytest.approx(1.0)
    assert len(rows) == 2 * stages and set(rows["#"]) == {0, 2}
    final = rows[(rows["#"] == 0) & (rows["stage"] == "layer 3")].iloc[0]
    box = np.clip([final.x1, final.y1, final.x2, final.y2], 0, 320)
    np.testing.assert_allclose(box, dets.boxes[0], atol=0.06)
    assert final["IoU to final"] == pytest.approx(1.0)
    assert list(rows.columns) == tables.REFINEMENT_COLUMNS  # the headers shown before a result


def test_trace_stage_zero_and_defaults(state):
    overlay_b0, fig, rows = refinement.trace(state, *_shared(), [], 0)
    assert fig.data[0].name.startswith("#0")
    assert len(set(rows["#"])) == min(5, len(_dets(state)))  # empty selection: the top 5
    overlay_last, _, _ = refinement.trace(state, *_shared(), [], 4)
    assert np.abs(np.asarray(overlay_b0).astype(int) - np.asarray(overlay_last)).sum() > 0


def test_trace_errors(state):
    with _raises("stage must be a whole number from 0"):
        refinement.trace(state, *_shared(), [], 9)
    with _raises("There is no detection 299"):
        refinement.trace(state, *_shared(), ["299: red circle 0.950"], 4)
    with _raises("No detections above the threshold 0.999"):
        refinement.trace(state, *_shared(threshold=0.999), [], 4)


# ------------------------------------------------------------------------------ /distributions
def test_distributions_figure_overlay_and_stats(state):
    dets = _dets(state)
    fig, overlay, stats = distributions.distributions(
        state, *_shared(), detection_label(1, dets), 2.0, True
    )
    sel = state.select(SharedInputs(*_shared()))
    q = int(sel.queries[1])
    dist = analysis.edge_distributions(sel.result.trace, q, (320, 320))
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 * dist.num_layers
    np.testing.assert_allclose(bars[0].x, dist.offsets_px[0])  # pixel axis, not bin index
    np.testing.assert_allclose(bars[-1].y, dist.probs[-1, 3])
    assert f"query {q}" in fig.layout.title.text
    assert len(stats) == 4 * dist.num_layers
    assert list(stats.columns) == tables.EDGE_STATS_COLUMNS
    np.testing.assert_allclose(
        stats["expected offset (px, + outward)"], dist.expected_px.reshape(-1), atol=0.006
    )
    np.testing.assert_allclose(stats["σ (px)"], dist.std_px.reshape(-1), atol=0.006)
    assert np.abs(np.asarray(overlay).astype(int) - load_image(IMAGE)).sum() > 0
    wide = distributions.distributions(state, *_shared(), 1, 4.0, True)[1]
    assert not np.array_equal(np.asarray(wide), np.asarray(overlay))  # σ scale matters


def test_distributions_errors(state):
    with _raises("σ scale must be between"):
        distributions.distributions(state, *_shared(), 0, 50.0, True)
    with _raises("No detections above the threshold"):
        distributions.distributions(state, *_shared(threshold=0.999), 0, 1.0, True)


@pytest.mark.chromium
def test_export_figures(state):
    png = Path(distributions.export_figure(state, *_shared(), 0, "png"))
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = Path(weighting.export_figure(state, 16, 0.5, 4.0, "default", "svg"))
    assert svg.suffix == ".svg" and b"<svg" in svg.read_bytes()[:2000]


def test_export_figures_without_a_browser_offers_the_html(state, no_chromium):
    """No Chromium: PNG/SVG come as the interactive HTML, with one warning line (the toast)
    that says why; never an error. HTML is a format of its own, and a wrong one is refused."""
    with pytest.warns(UserWarning) as warned:
        page = Path(distributions.export_figure(state, *_shared(), 0, "png"))
    assert page.suffix == ".html" and "plotly" in page.read_text()[:100_000].lower()
    (message,) = [str(w.message) for w in warned]
    assert "\n" not in message and "Chromium" in message and "HTML instead" in message
    page = Path(weighting.export_figure(state, 16, 0.5, 4.0, "default", "html"))
    assert page.name == "weighting_regmax16.html" and "W(n)" in page.read_text()
    with _raises("png, svg, html"):
        weighting.export_figure(state, 16, 0.5, 4.0, "default", "gif")


# ------------------------------------------------------------------------------ /weighting
def test_weighting_matches_the_library(state):
    fig, table, summary = weighting.weighting(state, 16, 0.25, 8.0, "default")
    curve = analysis.weighting_curve(16, 0.25, 8.0)
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata), curve.w)
    np.testing.assert_allclose(fig.data[0].y, curve.box_fraction)
    np.testing.assert_allclose(table["W(n)"], curve.w, atol=1e-6)
    assert len(table) == 17
    model_ = state.store.get("default").model
    own = next(t for t in fig.data if t.name.startswith("model's W(n)"))
    np.testing.assert_allclose(own.customdata, model_.decoder.project().numpy())
    assert "reg_max = 32" in summary and "reg_max = 16" in summary


@pytest.mark.parametrize(
    ("reg_max", "up", "reg_scale", "match"),
    [(7, 0.5, 4, "even"), (130, 0.5, 4, "reg_max"), (32, 0, 4, "up"), (32, 0.5, 40, "reg_scale")],
)
def test_weighting_out_of_range(state, reg_max, up, reg_scale, match):
    with _raises(match) as err:
        weighting.weighting(state, reg_max, up, reg_scale, "default")
    _readable(err)


@pytest.mark.parametrize(
    ("typed", "snapped"), [(7, 8), (5, 6), (9.2, 10), (3, 4), (1000, 128), (None, 32), ("x", 32)]
)
def test_reg_max_slider_snaps_to_even(typed, snapped):
    assert weighting.even_reg_max(typed) == snapped


# ------------------------------------------------------------------------------ /golsd
def test_golsd_pseudo_targets_say_so(state):
    out = golsd.golsd(state, *_shared(PHOTO, threshold=0.1), "auto", None, "left")
    note, targets_image, query, dist_fig, kl_fig, loss_fig, table = out
    n = len(_dets(state, PHOTO, 0.1))
    assert "pseudo ground truth: the model's own detections" in note
    assert f"({n} boxes)" in note
    assert "pseudo ground truth" in dist_fig.layout.title.text
    assert query.startswith("query ")
    picker = golsd.queries(state, *_shared(PHOTO, threshold=0.1), "auto", query)
    assert picker["value"] == query and query in picker["choices"]
    assert len(picker["choices"]) == 20  # the top contributors to the loss
    assert dist_fig.data[0].type == "bar" and len(dist_fig.data) == 3  # teacher + 2 students
    assert loss_fig.data[0].name.startswith("matched queries")
    assert len(kl_fig.data) == 4  # stacked by edge
    assert list(table.columns[: len(tables.GOLSD_COLUMNS)]) == tables.GOLSD_COLUMNS
    assert targets_image.size == (512, 512)


def test_golsd_with_annotations(state):
    coco = json.loads(SYNTH_ANNOTATIONS.read_text())
    count = sum(a["image_id"] == 1 for a in coco["annotations"])
    note, *_, table = golsd.golsd(state, *_shared(IMAGE), "annotations", None, "top")
    assert "ground truth: annotations" in note and "pseudo" not in note.split("\n")[0]
    assert f"({count} boxes)" in note and "000001.jpg" in note
    q = int(table["query"].iloc[0])
    again = golsd.golsd(state, *_shared(IMAGE), "auto", f"query {q}: x", "right")
    assert again[2].startswith(f"query {q}:")
    assert "ground truth: annotations" in again[0]


def test_golsd_errors(state):
    with _raises("This image has no annotations"):
        golsd.golsd(state, *_shared(PHOTO), "annotations", None, "left")
    with _raises("No detections above the threshold 0.999 to use as pseudo ground truth"):
        golsd.golsd(state, *_shared(threshold=0.999), "pseudo", None, "left")
    with _raises("edge must be one of"):
        golsd.golsd(state, *_shared(), "pseudo", None, "middle")
    with _raises("query must be between 0 and 299"):
        golsd.golsd(state, *_shared(), "pseudo", "query 300", "left")


# ------------------------------------------------------------------------------ /model
def test_model_info_default(state):
    info, key = model.model_info(state, "default", None)
    assert "D-FINE-N" in info and "3.74 M" in info and "320×320" in info
    assert "8: red circle, blue square" in info and FIXTURE_BANNER not in info
    assert key == "default"
    update = model.use_model(state, key)
    assert update == {"__type__": "update", "choices": state.store.choices(), "value": "default"}


def test_upload_a_checkpoint_then_use_it(state, tmp_path):
    mine = tmp_path / "my_model.pth"
    shutil.copy(FIXTURE_WEIGHTS, mine)
    info, key = model.model_info(state, "default", str(mine))
    assert key.startswith("upload-") and "my_model.pth" in info
    update = model.use_model(state, key)
    assert update["value"] == key and key in [value for _, value in update["choices"]]
    # the picker's change event: the user's threshold stays, the size was the old model's
    # default and follows the new one (the fixture's own 640)
    picked, good, threshold, size, note, *_, summary = detect.switch_model(
        state, str(IMAGE), 0.285, SIZE, key, MAX, False, False, "default"
    )
    assert picked == good == key and threshold == 0.285 and size == 640
    assert "Knows 80 classes" in note and "synthetic" not in note
    assert "my_model.pth" in summary and "network input 640×640" in summary
    _, table, _, summary = detect.detect(state, str(PHOTO), 0.0494, 640, key, MAX)
    assert len(table) > 0 and "my_model.pth" in summary


def test_garbage_checkpoint_upload(state, tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"\x00garbage" * 100)
    with _raises("weights.pth") as err:
        model.model_info(state, "default", str(garbage))
    _readable(err)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(FIXTURE_WEIGHTS.read_bytes()[:4096])
    with _raises("truncated.pth is not a readable PyTorch checkpoint") as err:
        model.model_info(state, "default", str(truncated))
    _readable(err)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with _raises(r"must be a \.pth or \.safetensors file"):
        model.model_info(state, "default", str(text))
    choices = [value for _, value in state.store.choices()]
    assert all(not c.startswith("upload-") or state.store.entry(c) for c in choices)


def test_zoo_download_offline_is_a_readable_error(state, monkeypatch, tmp_path):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "zoo"))
    monkeypatch.setenv("DFINE_ZOO_URL", "http://127.0.0.1:9/unreachable")  # refused at once
    with _raises("Could not download dfine_n_coco") as err:
        model.model_info(state, "dfine_n_coco", None)
    message = err.value.message  # names the cache path to put the file at by hand
    assert "Traceback" not in message and "\n" not in message
    assert "dfine_n_coco.pth" in message and "save it as" in message
    assert "upload the checkpoint file in the Model tab" in message


# ------------------------------------------------------------------------------ helpers
def test_endpoints_take_the_shared_values_first_and_gradio_sees_progress(state):
    names = list(inspect.signature(distributions.distributions).parameters)
    assert names == ["state", *SHARED, "detection", "sigma_scale", "overlay_all", "x_range",
                     "axis", "progress"]  # fmt: skip
    bound = bind(state, golsd.golsd)  # what gradio calls: the state bound, progress injected
    assert list(inspect.signature(bound).parameters)[: len(SHARED)] == list(SHARED)
    _, progress_index, _, _ = special_args(bound)
    assert progress_index == len(SHARED) + 3  # after targets, query, edge
    assert special_args(bind(state, distributions.export_figure))[1] is None
    fields = {f.name for f in dataclasses.fields(Controls)}
    assert set(SHARED) <= fields  # every shared value has its component


def test_a_click_on_a_box_picks_its_detection(state):
    """What the Detect tab's annotated image calls on a click (gradio injects gr.SelectData
    after the shared values)."""
    on_click = quietly(bind(state, shared_inputs(distributions.select_box)), 2)
    _, _, event_index, _ = special_args(on_click)
    assert event_index == len(SHARED)
    dets = _dets(state)
    x1, y1, x2, y2 = dets.boxes[1]
    click = SimpleNamespace(index=[(x1 + x2) / 2, (y1 + y2) / 2])
    label, tabs = on_click(*_shared(), click)
    assert first_int(label, "detection") == nearest_box(dets.boxes, click.index)
    assert tabs.selected == "distributions"


def test_selection_and_shared_inputs_pack_the_shared_values(state):
    seen = []

    @selection
    def probe(state, sel, extra, progress=None):
        seen.append((sel.inputs, extra, progress))
        return len(sel.detections)

    @shared_inputs
    def raw(state, inputs, extra=7):
        return inputs, extra

    n = probe(state, *_shared(), "x")
    assert n == len(_dets(state)) and seen[-1] == (SharedInputs(*_shared()), "x", None)
    values = dict(zip(SHARED, _shared()))
    assert probe(state, extra="y", **values) == n and seen[-1][1] == "y"
    assert raw(state, *_shared()) == (SharedInputs(*_shared()), 7)
    # letterbox (the last, with a default) may be left out where all after it have defaults
    assert raw(state, *_shared()[:-1]) == (SharedInputs(*_shared()[:-1]), 7)
    with pytest.raises(TypeError):
        probe(state, *_shared()[:-1], "x")  # here "x" would take its place: no default
    with pytest.raises(TypeError):
        raw(state, *_shared()[:-2])  # a shared value missing is a bug, not a user error


def test_pickers_and_nearest_detection(state):
    sel = state.select(SharedInputs(*_shared()))
    refine, stage = refinement.pickers(sel)
    dist = distributions.picker(sel)
    dets = sel.detections
    assert dist["choices"] == [detection_label(i, dets) for i in range(len(dets))]
    assert refine["choices"] == dist["choices"] and refine["value"] == []  # none: the top 5
    assert stage["maximum"] == 4 and stage["value"] == 4
    assert golsd.clear_picker(sel)["choices"] == []
    x1, y1, x2, y2 = dets.boxes[2]
    point = ((x1 + x2) / 2, (y1 + y2) / 2)
    label = distributions.nearest_detection(state, *_shared(), point)
    assert first_int(label, "detection") == nearest_box(dets.boxes, point)


def test_nearest_box_prefers_the_smallest_containing_box():
    boxes = np.array([[0, 0, 100, 100], [40, 40, 60, 60], [200, 200, 210, 210]], np.float32)
    assert nearest_box(boxes, (50, 50)) == 1
    assert nearest_box(boxes, (10, 10)) == 0
    assert nearest_box(boxes, (220, 205)) == 2


def test_first_int_reads_picker_values():
    assert first_int("3: person 0.91", "detection") == 3
    assert first_int("query 12: unmatched", "query") == 12
    assert first_int(7.0, "detection") == 7
    assert first_int("", "detection") is None
    with _raises("Cannot tell which detection"):
        user_errors(first_int)("person", "detection")


def test_default_model_prefers_the_bundled_weights(monkeypatch, tmp_path):
    bundled = tmp_path / "dfine_n_synth.safetensors"
    monkeypatch.setattr(app_models, "BUNDLED_WEIGHTS", bundled)
    assert app_models.default_weights() == FIXTURE_WEIGHTS
    dfine.save_model(dfine.load_model(FIXTURE_WEIGHTS), bundled)
    assert app_models.default_weights() == bundled
    entry = ModelStore(upload_dir=tmp_path / "u").default
    assert not entry.is_fixture and entry.default_threshold == 0.5
    assert ModelStore(FIXTURE_WEIGHTS, upload_dir=tmp_path / "u").default.is_fixture


def test_warm_answers_first_example_clicks_from_the_cache(tmp_path):
    s = app_state(tmp_path)
    assert s.warm([IMAGE, SYNTH]) == 2
    assert s.warm([IMAGE, SYNTH]) == 0  # both cached now
    *_, summary = detect.detect(s, str(SYNTH), THRESHOLD, s.store.get("default").default_size,
                                "default", MAX)  # fmt: skip
    assert "reused" in summary
    with pytest.raises(UserError):
        s.warm([tmp_path / "missing.jpg"])


def test_default_model_by_zoo_name(monkeypatch, tmp_path):
    """``python app.py --model dfine_n_coco`` (or DFINE_APP_MODEL on a Space): the zoo file is
    downloaded once into DFINE_HOME; a file already there is used without the network."""
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "zoo"))
    monkeypatch.setenv("DFINE_ZOO_URL", "http://127.0.0.1:9/unreachable")  # refused at once
    with pytest.raises(ZooDownloadError, match=r"dfine_n_coco\.pth"):
        ModelStore("dfine_n_coco", upload_dir=tmp_path / "u")
    cached = tmp_path / "zoo" / "dfine_n_coco.pth"
    shutil.copy(FIXTURE_WEIGHTS, cached)
    store = ModelStore("dfine_n_coco", upload_dir=tmp_path / "u")
    assert Path(store.default.source) == cached
    assert store.get("default").model.num_classes == 80


def test_synthetic_examples_are_reproducible_and_annotated(tmp_path):
    from app.examples import make_synth_examples, synth_examples

    written = make_synth_examples(tmp_path)
    assert [p.name for p in written] == [
        *(Path(p).name for p in synth_examples()),
        "instances_val.json",
    ]
    for path in written:
        assert path.read_bytes() == (SYNTH.parent / path.name).read_bytes()
    examples = AnnotatedExamples()
    assert len(examples) == 4
    truth = examples.find(file_digest(SYNTH.parent / "000001.jpg"))
    assert truth is not None and truth.file_name == "000001.jpg"
    assert (
        truth.names[0] == "red circle" and (truth.boxes_xyxy[:, 2:] > truth.boxes_xyxy[:, :2]).all()
    )


def test_handled_errors_are_one_line_in_toast_and_log(state, tmp_path, caplog):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture\nsecond line")
    with caplog.at_level("WARNING", logger="dfine.app"), _raises("not an image") as err:
        detect.detect(state, str(fake), 0.5, SIZE, "default", MAX)
    assert err.value.print_exception is False  # gradio prints no traceback for it
    _readable(err)
    records = [r for r in caplog.records if r.name == "dfine.app"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "\n" not in records[0].getMessage() and "notes.jpg" in records[0].getMessage()


def test_an_onnx_upload_is_refused_with_the_way_out(state, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with _raises("exported ONNX graph: the app needs the PyTorch weights") as err:
        model.model_info(state, "default", str(onnx))
    assert "dfine predict IMAGE --weights model.onnx" in _readable(err)


def test_distributions_zoom_to_the_probability_mass(state):
    """A confident box: the default x range holds ≥ 99.9 % of every layer's mass plus a
    margin, far narrower than the full W(n) range; the bars span their bins' true widths,
    the previous layer is outlined, and the bin-index view is on the bin axis."""
    args = (*_shared(), 0, 1.0, True)
    zoomed = distributions.distributions(state, *args, "mass", "px")[0]
    full = distributions.distributions(state, *args, "full", "px")[0]
    dist = distributions.edge_distributions(state.select(SharedInputs(*_shared())), 0)[1]
    for e in range(4):
        lo, hi = zoomed.layout[f"xaxis{'' if e == 0 else e + 1}"].range
        flo, fhi = full.layout[f"xaxis{'' if e == 0 else e + 1}"].range
        assert (hi - lo) < 0.2 * (fhi - flo)  # a confident edge is readable
        inside = (dist.offsets_px[e] >= lo) & (dist.offsets_px[e] <= hi)
        assert (dist.probs[:, e][:, inside].sum(-1) >= 0.999).all()
    bar = next(t for t in zoomed.data if t.type == "bar")
    bounds = dist.bin_bounds(0)
    np.testing.assert_allclose(np.asarray(bar.x) + np.asarray(bar.offset), bounds[:-1])
    np.testing.assert_allclose(bar.width, np.diff(bounds))  # true widths, not equal ones
    outlines = [t for t in zoomed.data if t.type == "scatter" and "previous" in (t.name or "")]
    assert len(outlines) == 4 * (dist.num_layers - 1)
    np.testing.assert_allclose(outlines[0].y[1:-1], dist.probs[0, 0])
    by_bin = distributions.distributions(state, *args, "full", "bin")[0]
    np.testing.assert_array_equal(next(t for t in by_bin.data if t.type == "bar").x,
                                  np.arange(33))  # fmt: skip
    with _raises("x axis must be"):
        distributions.distributions(state, *args, "full", "cm")


def test_first_impression_says_what_the_model_knows(state):
    """The synthetic demo model on a photo says why it finds little and how to get a COCO
    model; on its own examples it does not; another input size gets a visible note."""
    *_, on_photo = detect.detect(state, *_shared(PHOTO))
    assert "knows only 8 synthetic shapes" in on_photo and "dfine_n_coco" in on_photo
    assert "about 16 MB" in on_photo and "dfine_n_coco.pth" in on_photo  # size, where to put it
    *_, on_example = detect.detect(state, *_shared())
    assert "knows only" not in on_example and "trained at" not in on_example
    *_, at_640 = detect.detect(state, str(IMAGE), THRESHOLD, 640, "default", MAX)
    assert "trained at 320×320 px" in at_640 and "Choose 320" in at_640


def test_a_model_trained_at_256_starts_at_its_own_size(state, tmp_path):
    """An ``--ablate`` run's model (trained at 256², scripts/ablation.py's size) is offered and
    used at 256, without the "trained at another size" warning."""
    import torch

    from dfine.model import DFINE

    torch.manual_seed(0)
    names = state.store.get(None).class_names
    config = dataclasses.replace(dfine.build_model("n", 8).config, eval_size=(256, 256))
    path = dfine.save_model(DFINE(config, class_names=names).eval(), tmp_path / "m256.safetensors")
    loaded = state.store.add_upload(path)
    size = detect.switch_model(state, None, 0.5, SIZE, loaded.entry.key, MAX)[3]
    assert size == 256 == loaded.default_size
    *_, summary = detect.detect(state, str(IMAGE), 0.0, size, loaded.entry.key, MAX)
    assert "trained at" not in summary and "network input 256×256 px" in summary


def test_a_failed_model_switch_restores_the_picker_and_keeps_the_result(state, monkeypatch):
    """Issue 25: a zoo model that cannot be downloaded (offline) or a name typed wrong puts
    the picker back on the last good model with a warning; nothing else changes (no error on
    the outputs: they stay the last good result). Switching back to the model shown does
    nothing."""

    def offline(*args, **kwargs):
        raise ZooDownloadError("Could not download dfine_n_coco (offline).")

    state.store.get(None)  # the last good model, loaded
    monkeypatch.setattr(app_models, "_load", offline)
    for name in ("dfine_n_coco", "no-such-model"):
        with pytest.warns(UserWarning, match="download|Unknown model"):
            out = detect.switch_model(
                state, str(IMAGE), 0.285, SIZE, name, MAX, False, False, "default"
            )
        assert out[:2] == ("default", "default")
        assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in out[2:])
    assert all(
        v == gr.skip()
        for v in detect.switch_model(
            state, str(IMAGE), 0.285, SIZE, "default", MAX, False, False, "default"
        )
    )


def test_a_new_image_never_shows_the_previous_result(state, tmp_path):
    """Issue 25: an image put in the Detect tab shows its own result (cached) or nothing; an
    image opened from another tab is detected; the summary names the image."""
    *_, summary = detect.detect(state, *_shared())
    assert f"`{IMAGE.name}`" in summary
    fresh = tmp_path / "fresh.png"  # an image no test has detected on yet
    Image.fromarray(load_image(SYNTH)[:, ::-1].copy()).save(fresh)
    annotated, table, json_file, summary = detect.new_image(state, *_shared(fresh))
    assert annotated is None and json_file is None and summary == "" and len(table) == 0
    assert list(table.columns) == DETECTION_COLUMNS
    *_, summary = detect.new_image(state, *_shared(IMAGE))  # cached: shown at once
    assert f"`{IMAGE.name}`" in summary
    *_, summary = detect.open_image(state, *_shared(fresh))
    assert "`fresh.png`" in summary
    assert detect.open_image(state, None, THRESHOLD, SIZE, "default", MAX)[3] == ""
