"""The app's letterbox box ("Keep aspect ratio"), called through the tabs' handlers on a
non-square image: Detect's boxes are ``Detector(letterbox=True)``'s, and every tab that reads
the Detect tab's selection (Refinement, Distributions, GO-LSD, Compare, Video) shows boxes of
that same letterboxed forward pass, in the image's pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio")

import gradio as gr

import dfine
from app.paths import BUNDLED_WEIGHTS
from app.state import AppState, SharedInputs
from app.summaries import detection_label
from app.tabs import compare, detect, distributions, golsd, refinement
from tests.app_util import SYNTH_EXAMPLE, app_state

SYNTH = SYNTH_EXAMPLE  # 6 shapes
THRESHOLD = 0.4
W, H = 320, 560  # the tall test image: letterboxing pads it left and right
BOX_COLUMNS = ["x1 (px)", "y1 (px)", "x2 (px)", "y2 (px)"]


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> AppState:
    tmp = tmp_path_factory.mktemp("app")
    return app_state(tmp)


@pytest.fixture(scope="module")
def tall(tmp_path_factory) -> str:
    canvas = np.full((H, W, 3), 114, np.uint8)
    canvas[100:420] = np.asarray(Image.open(SYNTH).convert("RGB"))
    path = tmp_path_factory.mktemp("img") / "tall.png"
    Image.fromarray(canvas).save(path)
    return str(path)


def _shared(image: str, letterbox: bool = True) -> tuple:
    return image, THRESHOLD, 320, "default", 300, letterbox


def _boxed(state: AppState, image: str):
    return state.select(SharedInputs(*_shared(image))).detections


def test_detect_with_letterbox_is_the_letterbox_detector(state, tall):
    _, stretched, _, summary_s = detect.detect(state, *_shared(tall, False))
    _, table, json_path, summary = detect.detect(state, *_shared(tall))
    model = state.store.get("default").model
    ref = dfine.Detector(model, threshold=THRESHOLD, size=320, letterbox=True)(tall)
    assert len(table) == len(ref) >= 5
    np.testing.assert_allclose(table[BOX_COLUMNS].to_numpy(float), ref.boxes, atol=0.006)
    assert "letterboxed" in summary and "letterboxed" not in summary_s
    assert len(stretched) != len(table) or not np.allclose(
        stretched[BOX_COLUMNS].to_numpy(float), table[BOX_COLUMNS].to_numpy(float), atol=1
    )
    saved = json.loads(Path(json_path).read_text())
    assert len(saved["detections"]) == len(ref)
    # the threshold re-filters the letterboxed result, not the stretched one
    refiltered = detect.refilter(state, tall, 0.6, 320, "default", 300, True)[1]
    assert len(refiltered) == int((ref.scores > 0.6).sum())
    again = detect.redetect(state, tall, THRESHOLD, 320, "default", 300, True)
    assert again[1].equals(table) and "letterboxed" in again[3]  # from the cache
    # no image: every output left as it is (four "no change" updates), no detection run
    for empty in (None, "  "):
        unchanged = detect.redetect(state, empty, THRESHOLD, 320, "default", 300, True)
        assert unchanged == (gr.skip(),) * 4, unchanged


def test_refinement_final_stage_is_detect(state, tall):
    dets = _boxed(state, tall)
    last = state.store.get("default").num_layers + 1
    overlay, _fig, rows = refinement.trace(state, *_shared(tall), [], last)
    assert overlay.size == (W, H)
    for i in range(min(5, len(dets))):
        final = rows[(rows["#"] == i) & (rows["stage"] == "layer 3")].iloc[0]
        box = np.clip([final.x1, final.y1, final.x2, final.y2], 0, [W, H, W, H])
        np.testing.assert_allclose(box, dets.boxes[i], atol=0.06)


def test_distributions_final_edges_are_detect(state, tall):
    dets = _boxed(state, tall)
    _, overlay, stats = distributions.distributions(
        state, *_shared(tall), "1", 1.0, False, "mass", "px"
    )
    assert overlay.size == (W, H)
    final = stats[stats["layer"] == stats["layer"].iloc[-1]]["edge position (px)"].to_numpy(float)
    np.testing.assert_allclose(np.clip(final, 0, [W, H, W, H]), dets.boxes[1], atol=0.06)
    x1, y1, x2, y2 = dets.boxes[1]
    label = distributions.nearest_detection(state, *_shared(tall), ((x1 + x2) / 2, (y1 + y2) / 2))
    assert label == detection_label(1, dets)


def test_golsd_pseudo_targets_are_detect(state, tall):
    dets = _boxed(state, tall)
    summary, targets, *_ = golsd.golsd(state, *_shared(tall), "pseudo", "", "left")
    assert targets.size == (W, H)
    assert f"{len(dets)} " in summary  # one pseudo target per detection
    report, _ = golsd.report_for(state, state.select(SharedInputs(*_shared(tall))), "pseudo")
    stretch, _ = golsd.report_for(
        state, state.select(SharedInputs(*_shared(tall, False))), "pseudo"
    )
    assert report is not stretch  # the GO-LSD memo keeps the two resizes apart


def test_compare_sees_the_letterboxed_boxes(state, tall, tmp_path):
    copy = tmp_path / "same_weights.safetensors"
    shutil.copy(BUNDLED_WEIGHTS, copy)
    other = state.store.add_upload(copy).entry.key
    fig = compare.compare_refinement(state, *_shared(tall), other)
    objects = [t.y[-1] for t in fig.data if t.showlegend is False]  # per object, 2 models
    assert len(objects) == 2 * len(_boxed(state, tall))
    # the final boxes of the queries matched to the objects (the detections) are the objects;
    # the matcher's class cost may pick a near-duplicate query for one of them
    assert sum(iou > 0.999 for iou in objects) >= len(objects) - 2


def test_video_uses_the_letterbox(state, tmp_path):
    from app.tabs.video import VideoCaps, VideoTab
    from dfine.data.synth_video import write_synth_video
    from dfine.video import FrameReader

    clip, _ = write_synth_video(tmp_path / "wide.webm", 2, (480, 256), num_objects=2)
    tab = VideoTab(state, VideoCaps(max_frames=2))
    out = tab.video(str(clip), THRESHOLD, 320, "default", 25, 1, False, True, progress=_quiet)
    table = tab.frame(out[5], 0)[1]
    with FrameReader(clip) as reader:
        frame = next(iter(reader)).rgb
    model = state.store.get("default").model
    ref = dfine.Detector(model, threshold=THRESHOLD, size=320, letterbox=True)(frame)
    got = table[["x1", "y1", "x2", "y2"]].to_numpy(float)
    assert len(got) == len(ref) >= 1
    np.testing.assert_allclose(np.sort(got, 0), np.sort(ref.boxes, 0), atol=0.06)  # 0.1 px table
    stretched = dfine.Detector(model, threshold=THRESHOLD, size=320)(frame)
    assert len(stretched) != len(ref) or np.abs(stretched.boxes - ref.boxes).max() > 0.5


def _quiet(*_args, **_kwargs) -> None:
    """A ``gr.Progress`` stand-in."""
