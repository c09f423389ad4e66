"""The app's endpoint functions, called directly (no server) on the parity fixture model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the app needs gradio")

import analysis  # noqa: E402
import dfine  # noqa: E402
from app import models as app_models  # noqa: E402
from app.errors import UserError, user_errors  # noqa: E402
from app.files import OutputDir  # noqa: E402
from app.ground_truth import AnnotatedExamples  # noqa: E402
from app.handlers import Handlers, detection_label, first_int, nearest_box  # noqa: E402
from app.models import ModelStore  # noqa: E402
from app.paths import FIXTURE_BANNER, FIXTURE_WEIGHTS, SYNTH_ANNOTATIONS  # noqa: E402
from app.results import ResultCache  # noqa: E402
from app.tables import DETECTION_COLUMNS  # noqa: E402
from dfine.io import load_image  # noqa: E402
from dfine.zoo import ZooDownloadError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "assets" / "examples" / "astronaut.jpg"
SYNTH = ROOT / "assets" / "examples" / "synth" / "000001.jpg"
SIZE = 640
THRESHOLD = 0.0494  # the fixture's scores lie in 0.048..0.050: this keeps a handful
MAX = 300


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Handlers:
    tmp = tmp_path_factory.mktemp("app")
    store = ModelStore(FIXTURE_WEIGHTS, upload_dir=tmp / "uploads")
    return Handlers(store, ResultCache(), AnnotatedExamples(), OutputDir(tmp / "out"))


@pytest.fixture(scope="module")
def detected(handlers):
    return handlers.detect(str(PHOTO), THRESHOLD, SIZE, "default", MAX)


def _shared(image=PHOTO, threshold=THRESHOLD):
    return str(image), threshold, SIZE, "default", MAX


def _raises(match: str):
    return pytest.raises(gr.Error, match=match)


def _readable(err: pytest.ExceptionInfo) -> str:
    message = err.value.message
    assert "Traceback" not in message and 'File "' not in message
    assert "/tmp/" not in message  # server temp folders are not shown
    return message


# ------------------------------------------------------------------------------ /detect
def test_detect_table_json_and_summary(handlers, detected):
    _, table, json_path, summary = detected
    expected = dfine.Detector(handlers.store.get("default").model, threshold=THRESHOLD, size=SIZE)
    reference = expected(PHOTO)
    assert 0 < len(reference) < 300
    assert list(table.columns) == DETECTION_COLUMNS
    assert len(table) == len(reference)  # one row per detection above the threshold
    assert (table["score"] > THRESHOLD - 1e-4).all()
    np.testing.assert_allclose(table[DETECTION_COLUMNS[3:]].to_numpy(), reference.boxes, atol=0.06)
    assert table["class"].tolist() == reference.names
    data = json.loads(Path(json_path).read_text())
    assert len(data["detections"]) == len(table)
    assert data["image_size"] == {"width": 512, "height": 512}
    assert set(data["speed"]) == {"preprocess", "inference", "postprocess"}
    assert f"{len(table)} detections" in summary
    assert "inference" in summary and "ms" in summary
    assert FIXTURE_BANNER in summary


def test_detect_draws_boxes_only_where_the_boxes_are(detected):
    annotated, table, _, _ = detected
    before = load_image(PHOTO).astype(int)
    after = np.asarray(annotated).astype(int)
    assert after.shape == before.shape
    changed = np.abs(after - before).sum(-1) > 0
    near = np.zeros_like(changed)
    for x1, y1, x2, y2 in table[DETECTION_COLUMNS[3:]].to_numpy():
        # outline plus the label tag above it (inside at the top edge, or shifted left to stay
        # in the image)
        near[max(int(y1) - 40, 0) : int(y2) + 4, max(int(x1) - 200, 0) : int(x2) + 200] = True
    assert changed.any()
    assert not (changed & ~near).any(), "pixels changed away from every box"
    x1, y1, x2, y2 = (round(float(v)) for v in table.iloc[0, 3:].to_numpy())
    edge = changed[min(y1, 511) : min(y2, 511) + 1, max(x1 - 1, 0) : x1 + 2]
    assert edge.mean() > 0.5, "the first box's left edge is drawn"


def test_detect_reuses_the_cached_forward_pass(handlers, detected):
    misses = handlers.cache.misses
    _, table, _, summary = handlers.detect(*_shared(threshold=0.02))
    assert handlers.cache.misses == misses  # another threshold: no new forward pass
    assert "cached result" in summary
    assert len(table) == MAX or len(table) > len(detected[1])


def test_detect_zero_detections_says_so(handlers):
    annotated, table, _, summary = handlers.detect(*_shared(threshold=0.9))
    assert len(table) == 0 and list(table.columns) == DETECTION_COLUMNS
    assert "0 detections" in summary and "lower it" in summary
    np.testing.assert_array_equal(np.asarray(annotated), load_image(PHOTO))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"threshold": 1.5}, "threshold must be between 0 and 1"),
        ({"threshold": -0.1}, "threshold must be between 0 and 1"),
        ({"size": 333}, "multiple of 32 between 320 and 800"),
        ({"size": 1024}, "multiple of 32 between 320 and 800"),
        ({"max_detections": 0}, "from 1 to 300"),
        ({"model": "dfine_q_coco"}, "Unknown model"),
        ({"image": None}, "Upload an image first"),
    ],
)
def test_detect_rejects_bad_options(handlers, args, match):
    values = dict(zip(("image", "threshold", "size", "model", "max_detections"), _shared()))
    values.update(args)
    with _raises(match) as err:
        handlers.detect(**values)
    _readable(err)


def test_text_file_as_image_is_a_readable_error(handlers, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a picture\n")
    with _raises("not an image") as err:
        handlers.detect(str(fake), 0.5, SIZE, "default", MAX)
    assert "holiday.jpg" in _readable(err)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with _raises("empty"):
        handlers.detect(str(empty), 0.5, SIZE, "default", MAX)


# ------------------------------------------------------------------------------ /trace
def test_trace_overlay_figure_and_table(handlers, detected):
    table = detected[1]
    picks = [detection_label(i, _dets(handlers)) for i in (0, 2)]
    stages = handlers.store.get("default").num_layers + 2
    overlay, fig, rows = handlers.trace(*_shared(), picks, stages - 1)
    assert overlay.size == (512, 512)
    assert np.abs(np.asarray(overlay).astype(int) - load_image(PHOTO)).sum() > 0
    iou_traces = [t for t in fig.data if t.type == "scatter"]
    assert len(iou_traces) == 2  # one IoU line per chosen detection
    assert list(iou_traces[0].x) == ["encoder (b0)", "pre-head", "layer 1", "layer 2", "layer 3"]
    assert iou_traces[0].y[-1] == pytest.approx(1.0)
    assert len(rows) == 2 * stages and set(rows["#"]) == {0, 2}
    final = rows[(rows["#"] == 0) & (rows["stage"] == "layer 3")].iloc[0]
    box = np.clip([final.x1, final.y1, final.x2, final.y2], 0, 512)
    np.testing.assert_allclose(box, table.iloc[0, 3:].to_numpy(dtype=float), atol=0.06)
    assert final["IoU to final"] == pytest.approx(1.0)


def test_trace_stage_zero_and_defaults(handlers):
    overlay_b0, fig, rows = handlers.trace(*_shared(), [], 0)
    assert fig.data[0].name.startswith("#0")
    assert len(set(rows["#"])) == min(5, len(_dets(handlers)))  # empty selection: the top 5
    overlay_last, _, _ = handlers.trace(*_shared(), [], 4)
    assert np.abs(np.asarray(overlay_b0).astype(int) - np.asarray(overlay_last)).sum() > 0


def test_trace_errors(handlers):
    with _raises("stage must be a whole number from 0"):
        handlers.trace(*_shared(), [], 9)
    with _raises("There is no detection 299"):
        handlers.trace(*_shared(), ["299: frisbee 0.050"], 4)
    with _raises("No detections above the threshold 0.9"):
        handlers.trace(*_shared(threshold=0.9), [], 4)


# ------------------------------------------------------------------------------ /distributions
def test_distributions_figure_overlay_and_stats(handlers):
    dets = _dets(handlers)
    fig, overlay, stats = handlers.distributions(*_shared(), detection_label(1, dets), 2.0, True)
    result = handlers.cache.peek((_digest(), "default", SIZE))
    q = int(result.queries[1])
    dist = analysis.edge_distributions(result.trace, q, (512, 512))
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 * dist.num_layers
    np.testing.assert_allclose(bars[0].x, dist.offsets_px[0])  # pixel axis, not bin index
    np.testing.assert_allclose(bars[-1].y, dist.probs[-1, 3])
    assert f"query {q}" in fig.layout.title.text
    assert len(stats) == 4 * dist.num_layers
    np.testing.assert_allclose(
        stats["expected offset (px, + outward)"], dist.expected_px.reshape(-1), atol=0.006
    )
    np.testing.assert_allclose(stats["σ (px)"], dist.std_px.reshape(-1), atol=0.006)
    assert np.abs(np.asarray(overlay).astype(int) - load_image(PHOTO)).sum() > 0
    wide = handlers.distributions(*_shared(), 1, 4.0, True)[1]
    assert not np.array_equal(np.asarray(wide), np.asarray(overlay))  # σ scale matters


def test_distributions_errors(handlers):
    with _raises("σ scale must be between"):
        handlers.distributions(*_shared(), 0, 50.0, True)
    with _raises("No detections above the threshold"):
        handlers.distributions(*_shared(threshold=0.99), 0, 1.0, True)


def test_export_figures(handlers):
    png = Path(handlers.export_distributions(*_shared(), 0, "png"))
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = Path(handlers.export_weighting(16, 0.5, 4.0, "default", "svg"))
    assert svg.suffix == ".svg" and b"<svg" in svg.read_bytes()[:2000]
    with _raises("png or svg"):
        handlers.export_weighting(16, 0.5, 4.0, "default", "gif")


# ------------------------------------------------------------------------------ /weighting
def test_weighting_matches_the_library(handlers):
    fig, table, summary = handlers.weighting(16, 0.25, 8.0, "default")
    curve = analysis.weighting_curve(16, 0.25, 8.0)
    np.testing.assert_array_equal(np.asarray(fig.data[0].customdata), curve.w)
    np.testing.assert_allclose(fig.data[0].y, curve.box_fraction)
    np.testing.assert_allclose(table["W(n)"], curve.w, atol=1e-6)
    assert len(table) == 17
    model = handlers.store.get("default").model
    own = next(t for t in fig.data if t.name.startswith("model's W(n)"))
    np.testing.assert_allclose(own.customdata, model.decoder.project().numpy())
    assert "reg_max = 32" in summary and "reg_max = 16" in summary


@pytest.mark.parametrize(
    ("reg_max", "up", "reg_scale", "match"),
    [(7, 0.5, 4, "even"), (130, 0.5, 4, "reg_max"), (32, 0, 4, "up"), (32, 0.5, 40, "reg_scale")],
)
def test_weighting_out_of_range(handlers, reg_max, up, reg_scale, match):
    with _raises(match) as err:
        handlers.weighting(reg_max, up, reg_scale, "default")
    _readable(err)


# ------------------------------------------------------------------------------ /golsd
def test_golsd_pseudo_targets_say_so(handlers):
    out = handlers.golsd(*_shared(), "auto", None, "left")
    note, targets_image, query, dist_fig, kl_fig, loss_fig, table = out
    n = len(_dets(handlers))
    assert "pseudo ground truth: the model's own detections" in note
    assert f"({n} boxes)" in note
    assert "pseudo ground truth" in dist_fig.layout.title.text
    assert query.startswith("query ")
    picker = handlers.golsd_queries(*_shared(), "auto", query)
    assert picker["value"] == query and query in picker["choices"]
    assert len(picker["choices"]) == 20  # the top contributors to the loss
    assert dist_fig.data[0].type == "bar" and len(dist_fig.data) == 3  # teacher + 2 students
    assert loss_fig.data[0].name.startswith("matched queries")
    assert len(kl_fig.data) == 4  # stacked by edge
    assert {"query", "matched", "teacher confidence"} <= set(table.columns)
    assert targets_image.size == (512, 512)


def test_golsd_with_annotations(handlers):
    coco = json.loads(SYNTH_ANNOTATIONS.read_text())
    count = sum(a["image_id"] == 1 for a in coco["annotations"])
    note, *_, table = handlers.golsd(*_shared(SYNTH, threshold=0.02), "annotations", None, "top")
    assert "ground truth: annotations" in note and "pseudo" not in note.split("\n")[0]
    assert f"({count} boxes)" in note and "000001.jpg" in note
    q = int(table["query"].iloc[0])
    again = handlers.golsd(*_shared(SYNTH, threshold=0.02), "auto", f"query {q}: x", "right")
    assert again[2].startswith(f"query {q}:")
    assert "ground truth: annotations" in again[0]


def test_golsd_errors(handlers):
    with _raises("This image has no annotations"):
        handlers.golsd(*_shared(), "annotations", None, "left")
    with _raises("No detections above the threshold 0.9 to use as pseudo ground truth"):
        handlers.golsd(*_shared(threshold=0.9), "pseudo", None, "left")
    with _raises("edge must be one of"):
        handlers.golsd(*_shared(), "pseudo", None, "middle")
    with _raises("query must be between 0 and 299"):
        handlers.golsd(*_shared(), "pseudo", "query 300", "left")


# ------------------------------------------------------------------------------ /model
def test_model_info_default(handlers):
    info, key = handlers.model_info("default", None)
    assert "D-FINE-N" in info and "3.78 M" in info and "640×640" in info
    assert "80: person, bicycle" in info and FIXTURE_BANNER in info
    assert key == "default"
    assert handlers.use_model(key) == (
        {"__type__": "update", "choices": handlers.store.choices(), "value": "default"},
        0.02,
    )


def test_upload_a_checkpoint_then_use_it(handlers, tmp_path):
    mine = tmp_path / "my_model.pth"
    shutil.copy(FIXTURE_WEIGHTS, mine)
    info, key = handlers.model_info("default", str(mine))
    assert key.startswith("upload-") and "my_model.pth" in info
    update, threshold = handlers.use_model(key)
    assert update["value"] == key and key in [value for _, value in update["choices"]]
    assert threshold == 0.5  # an uploaded model is not the fixture
    _, table, _, summary = handlers.detect(str(PHOTO), THRESHOLD, SIZE, key, MAX)
    assert len(table) > 0 and "my_model.pth" in summary


def test_garbage_checkpoint_upload(handlers, tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"\x00garbage" * 100)
    with _raises("weights.pth") as err:
        handlers.model_info("default", str(garbage))
    _readable(err)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(FIXTURE_WEIGHTS.read_bytes()[:4096])
    with _raises("truncated.pth is not a readable PyTorch checkpoint") as err:
        handlers.model_info("default", str(truncated))
    _readable(err)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with _raises(r"must be a \.pth or \.safetensors file"):
        handlers.model_info("default", str(text))
    choices = [value for _, value in handlers.store.choices()]
    assert all(not c.startswith("upload-") or handlers.store.entry(c) for c in choices)


def test_zoo_download_offline_is_a_readable_error(handlers, monkeypatch, tmp_path):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "zoo"))
    monkeypatch.setenv("DFINE_ZOO_URL", "http://127.0.0.1:9/unreachable")  # refused at once
    with _raises("Could not download dfine_n_coco") as err:
        handlers.model_info("dfine_n_coco", None)
    message = err.value.message  # names the cache path to put the file at by hand
    assert "dfine_n_coco.pth" in message and "save it as" in message
    assert "upload the checkpoint file in the Model tab" in message
    assert "Traceback" not in message


# ------------------------------------------------------------------------------ helpers
def test_pickers_and_nearest_detection(handlers):
    refine, stage, dist, golsd_query = handlers.pickers(*_shared())
    dets = _dets(handlers)
    assert dist["choices"] == [detection_label(i, dets) for i in range(len(dets))]
    assert refine["value"] == dist["choices"][:5]
    assert stage["maximum"] == 4 and stage["value"] == 4
    assert golsd_query["choices"] == []
    x1, y1, x2, y2 = dets.boxes[2]
    label = handlers.nearest_detection(*_shared(), ((x1 + x2) / 2, (y1 + y2) / 2))
    assert first_int(label, "detection") == nearest_box(dets.boxes, ((x1 + x2) / 2, (y1 + y2) / 2))


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
    model = dfine.load_model(FIXTURE_WEIGHTS)
    dfine.save_model(model, bundled)
    assert app_models.default_weights() == bundled
    entry = ModelStore(upload_dir=tmp_path / "u").default
    assert not entry.is_fixture and entry.default_threshold == 0.5
    assert ModelStore(FIXTURE_WEIGHTS, upload_dir=tmp_path / "u").default.is_fixture


def test_warm_answers_first_example_clicks_from_the_cache(tmp_path):
    store = ModelStore(FIXTURE_WEIGHTS, upload_dir=tmp_path / "u")
    h = Handlers(store, ResultCache(), AnnotatedExamples(), OutputDir(tmp_path / "out"))
    assert h.warm([PHOTO, SYNTH]) == 2
    assert h.warm([PHOTO, SYNTH]) == 0  # both cached now
    size = store.get("default").default_size
    *_, summary = h.detect(str(SYNTH), THRESHOLD, size, "default", MAX)
    assert "cached result" in summary
    with pytest.raises(UserError):
        h.warm([tmp_path / "missing.jpg"])


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


# ------------------------------------------------------------------------------ utilities
def _dets(handlers):
    result = handlers.cache.peek((_digest(), "default", SIZE))
    assert result is not None
    return result.select(THRESHOLD, MAX)[0]


def _digest(path: Path = PHOTO) -> str:
    from app.results import file_digest

    return file_digest(path)


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
    truth = examples.find(_digest(SYNTH))
    assert truth is not None and truth.file_name == "000001.jpg"
    assert (
        truth.names[0] == "red circle" and (truth.boxes_xyxy[:, 2:] > truth.boxes_xyxy[:, :2]).all()
    )
