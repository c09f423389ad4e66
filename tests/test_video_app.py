"""The app's Video tab and webcam stream, without a browser: handlers, endpoints, caps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

import gradio as gr

from analysis.tracks import TrackSeries, track_series, uncertainty_jumps
from app.tabs.video import VideoCaps, VideoTab
from dfine.data.synth_video import render_clip, write_synth_video
from dfine.detections import Detections
from dfine.video import count_frames
from tests.app_util import DEMO

FRAMES = 8


class NoProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, value: float, desc: str = "") -> None:
        self.calls.append((value, desc))


@pytest.fixture(scope="module")
def tab():
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app.models import ModelStore
    from app.state import AppState

    return VideoTab(AppState(ModelStore(str(DEMO))), VideoCaps(max_frames=6))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_synth_video(tmp_path_factory.mktemp("app") / "shapes.webm", FRAMES)


@pytest.fixture(scope="module")
def run(tab, clip):
    progress = NoProgress()
    out = tab.video(str(clip[0]), 0.5, 320, "default", 25, 1, True, progress=progress)
    return out, progress


def test_video_endpoint_outputs(run):
    (video, json_path, summary, slider, tracks, run_id, owned), progress = run
    assert owned == [run_id]  # the session's runs, removed when it ends
    assert count_frames(video) == 6  # capped at the tab's 6 frames
    record = json.loads(Path(json_path).read_text())
    assert record["video"]["frame_count"] == 6 and record["video"]["capped"]
    assert "processed the first 6" in summary and "frames/s" in summary
    assert slider["maximum"] == 5
    assert len(tracks["choices"]) == 3 and tracks["value"] == tracks["choices"][0][1]
    assert progress.calls[-1][0] == pytest.approx(1.0)
    assert "frames/s" in progress.calls[-1][1]


def test_frame_slider_shows_that_frames_detections(tab, run, clip):
    run_id = run[0][5]
    truth = json.loads(clip[1].read_text())
    first = tab.frame(run_id, 0)
    last = tab.frame(run_id, 5)
    assert first[2].startswith("Frame 0 ") and last[2].startswith("Frame 5 ")
    assert sorted(first[1]["class"]) == sorted(o["name"] for o in truth["objects"])
    assert not np.allclose(first[1]["x1"].sort_values(), last[1]["x1"].sort_values())
    assert {"track", "σ left (px)", "σ bottom (px)"} <= set(first[1].columns)
    assert (first[1]["σ left (px)"] > 0).all()
    with pytest.raises(gr.Error, match="There is no processed frame 6"):
        tab.frame(run_id, 6)
    with pytest.raises(gr.Error, match="no longer on the server"):
        tab.frame("nope", 0)


def test_open_frame_is_the_exact_source_frame(tab, run):
    from dfine.video import FrameReader

    path, tabs = tab.open_frame(run[0][5], 3)
    assert path.endswith(".png") and tabs.selected == "refinement"
    from PIL import Image

    with FrameReader(tab.runs.get(run[0][5]).source) as reader:
        expected = next(f.rgb for f in reader if f.index == 3)
    assert np.array_equal(np.asarray(Image.open(path)), expected)


def test_track_endpoint(tab, run):
    run_id, tracks = run[0][5], run[0][4]
    fig, table, text = tab.track(run_id, tracks["value"])
    assert text.startswith(f"**Track #{tracks['value']}**")
    assert len(table) >= 5 and (table["σ top (px)"] > 0).all()
    assert [t.name for t in fig.data[:4]] == ["σ left", "σ top", "σ right", "σ bottom"]
    with pytest.raises(gr.Error, match="There is no track #99"):
        tab.track(run_id, "99")


def test_bad_videos_are_one_clear_gr_error(tab, tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match="not a video file"):
        tab.video(str(bad), 0.5, 320, "default", 25, 1, True, progress=NoProgress())
    with pytest.raises(gr.Error, match="Upload a video first"):
        tab.video(None, 0.5, 320, "default", 25, 1, True, progress=NoProgress())
    big = VideoTab(tab.state, VideoCaps(max_pixels=100 * 100))
    clip = write_synth_video(tmp_path / "c.avi", 2, (128, 96))[0]
    with pytest.raises(gr.Error, match=r"128x96 \(0.0 MP\), above the limit"):
        big.video(str(clip), 0.5, 320, "default", 25, 1, True, progress=NoProgress())


def test_untracked_run_uses_the_plain_forward(tab, clip, monkeypatch):
    """Without tracking there is no track view, so no frame is traced (the plain forward);
    with tracking every frame is traced once, for detection and its edge σ together."""
    from dfine.model import DFINE

    traced = []
    real_trace = DFINE.trace
    monkeypatch.setattr(
        DFINE,
        "trace",
        lambda self, images: traced.append(images.shape[0]) or real_trace(self, images),
    )
    out = tab.video(str(clip[0]), 0.5, 320, "default", 25, 2, False, progress=NoProgress())
    assert traced == [] and out[4]["choices"] == []
    assert "tracking off" in out[2] and "traced" not in out[2]
    table = tab.frame(out[5], 1)[1]
    assert len(table) == 3 and not any(c.startswith("σ") for c in table.columns)
    assert set(table["track"]) == {""}
    with pytest.raises(gr.Error, match="no tracks"):
        tab.track(out[5], None)
    out = tab.video(str(clip[0]), 0.5, 320, "default", 25, 2, True, progress=NoProgress())
    assert sum(traced) == 4 and "traced model + track" in out[2]  # frames 0, 2, 4, 6


def test_run_folders_are_removed_on_failure(tab, tmp_path):
    root = Path(tab.state.outputs.root)
    before = {p.name for p in root.glob("runs/video-*")}
    data = write_synth_video(tmp_path / "full.webm", 12, (160, 120))[0].read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])  # opens, then decoding stops half way
    long = VideoTab(tab.state, VideoCaps(max_frames=30))
    with pytest.raises(gr.Error, match="decoding stopped after"):
        long.video(str(cut), 0.5, 320, "default", 25, 1, False, progress=NoProgress())
    assert {p.name for p in root.glob("runs/video-*")} == before  # nothing half-written is kept
    assert not list(tmp_path.glob(".*tmp*"))  # nor a temporary video next to the input


def test_run_folders_live_as_long_as_their_session(tab, clip, tmp_path):
    """A run's folder outlives the output folder's maximum age while its session shows it
    (the slider still reads its frames), goes when the session lets it go (the ``gr.State``'s
    ``delete_callback``) or the session's newer runs push it out, and everything goes when
    the server stops."""
    from tests.app_util import app_state

    state = app_state(tmp_path, DEMO)
    state.outputs.max_age_s = 0.0
    tab = VideoTab(state, VideoCaps(max_frames=3))
    tab.runs.per_session = 2
    first = tab.video(str(clip[0]), 0.5, 320, "default", 25, 1, True, progress=NoProgress())
    run_id, owned = first[5], first[6]
    folder = tab.runs.get(run_id).folder
    state.outputs._last_prune = 0.0
    state.outputs.path("later.json")  # prunes everything older than max_age_s = 0
    assert folder.is_dir() and tab.frame(run_id, 2)[2].startswith("Frame 2 ")
    assert tab.track(run_id, first[4]["value"])[2].startswith("**Track #")
    args = (str(clip[0]), 0.5, 320, "default", 25, 1, False)
    second = tab.video(*args, session_runs=owned, progress=NoProgress())
    third = tab.video(*args, session_runs=second[6], progress=NoProgress())
    assert third[6] == [second[5], third[5]] and not folder.exists()  # pushed out
    with pytest.raises(gr.Error, match="no longer on the server"):
        tab.frame(run_id, 0)
    tab.runs.release(third[6])  # the session ended
    assert not list((state.outputs.root / "runs").iterdir())
    with pytest.raises(gr.Error, match="no longer on the server"):
        tab.frame(third[5], 0)
    state.outputs.path("x.json")
    state.outputs.close()  # the server stops
    assert not state.outputs.root.exists()


def test_session_state_releases_its_runs_when_deleted():
    """The page's ``gr.State`` of runs calls the store's release when Gradio deletes it."""
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app import build_demo

    demo = build_demo(str(DEMO))
    deps = {d["api_name"]: d for d in demo.config["dependencies"] if d.get("api_name")}
    video = deps["video"]
    states = [demo.blocks[i] for i in video["outputs"] if isinstance(demo.blocks[i], gr.State)]
    assert len(states) == 1 and states[0].delete_callback.__name__ == "release"
    assert video["outputs"][-1] == video["inputs"][-1] == states[0]._id


def test_caps_from_environment(monkeypatch):
    monkeypatch.setenv("DFINE_VIDEO_MAX_FRAMES", "42")
    monkeypatch.setenv("DFINE_VIDEO_MAX_SECONDS", "7")
    caps = VideoCaps.from_env()
    assert (caps.max_frames, caps.max_seconds) == (42, 7)
    assert "42 processed frames" in caps.markdown() and "7 s" in caps.markdown()
    monkeypatch.setenv("DFINE_VIDEO_MAX_FRAMES", "lots")
    with pytest.raises(ValueError, match="DFINE_VIDEO_MAX_FRAMES must be a positive integer"):
        VideoCaps.from_env()


def test_webcam_measures_fps_and_draws(tab):
    frame = render_clip(1, 320, 320, num_objects=2)[0][0]
    times: list[float] = []
    for _ in range(3):
        shown, text, times = tab.webcam(frame, 0.5, 320, "default", times)
    assert shown.shape == frame.shape and np.abs(shown.astype(int) - frame).mean() > 0.5
    assert len(times) == 3 and "frames/s" in text and "ms/frame" in text
    assert float(text.split("**")[1].split()[0]) > 0
    assert tab.webcam(None, 0.5, 320, "default", times)[0] is None
    with pytest.raises(gr.Error, match="Expected an RGB webcam frame"):
        tab.webcam(np.zeros((4, 4), np.uint8), 0.5, 320, "default", [])


def test_webcam_event_drops_frames_and_shares_the_queue():
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app import build_demo

    demo = build_demo(str(DEMO))
    deps = {d["api_name"]: d for d in demo.config["dependencies"] if d.get("api_name")}
    cam, video = deps["webcam"], deps["video"]
    # one open stream event: each frame the browser posts replaces the one before, and the
    # handler takes the newest when it is free (tests/test_video_browser.py measures it);
    # "always_last" would defer every frame after the first until the stream ends
    assert cam["connection"] == "stream" and cam["trigger_mode"] == "multiple"
    assert cam["stream_every"] == pytest.approx(0.1) and cam["time_limit"] > 0
    fns = demo.fns
    # the webcam and the video runs share one queue slot: a webcam holds it for at most its
    # time limit, and waits while someone's video runs
    assert {fns[d["id"]].concurrency_id for d in (cam, video)} == {"dfine-video"}
    assert {fns[d["id"]].concurrency_limit for d in (cam, video)} == {1}
    assert {"video", "track", "video_frame"} <= set(deps)
    assert deps["track"]["api_visibility"] == "public"  # not taken by a private event


# --------------------------------------------------------------------------- analysis


def _dets(frame: int, tid: int, box, score=0.9) -> Detections:
    return Detections(boxes=[box], scores=[score], labels=[2], class_names=("a", "b", "c"),
                      image_size=(100, 100), track_id=[tid], frame_index=frame,
                      time_s=frame / 10)  # fmt: skip


def test_track_series_marks_the_jump():
    frames, sigmas = [], []
    for t in range(12):
        frames.append(_dets(t, 7, [10 + t, 10, 40 + t, 40]))
        s = 0.5 + 0.01 * (t % 3)
        sigmas.append(np.array([[s, s, s, 4.0 if t == 8 else s]]))
    series = track_series(frames, sigmas, 7, ("a", "b", "c"))
    assert isinstance(series, TrackSeries) and len(series) == 12 and series.name == "c"
    assert series.jumps.tolist() == [8]
    assert series.frame_index[series.jumps].tolist() == [8]
    np.testing.assert_allclose(series.widths, 30)
    assert uncertainty_jumps(np.array([1.0, 1.0, np.nan, 1.0])).size == 0
    with pytest.raises(ValueError, match="track 3 is in none"):
        track_series(frames, sigmas, 3)


def test_track_view_marks_motion_blurred_frames(tab, tmp_path):
    """Frames 5 and 6 smeared by a horizontal motion blur: every track's edge σ jumps
    there, and nowhere else."""
    clip, _ = write_synth_video(tmp_path / "blur.webm", 10, blur=(5, 6))
    long = VideoTab(tab.state, VideoCaps(max_frames=10))
    out = long.video(str(clip), 0.5, 320, "default", 25, 1, True, progress=NoProgress())
    run_id, tracks = out[5], out[4]["choices"]
    assert len(tracks) == 3
    for _, tid in tracks:
        _, table, text = long.track(run_id, tid)
        jumps = set(table.loc[table["jump"], "frame"].tolist())
        assert jumps and jumps <= {5, 6}, (tid, text)
        assert "uncertainty jumps at frames: 5" in text
