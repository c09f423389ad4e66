"""Clips OpenCV cannot write, encoded with PyAV from the synthetic generator's frames.

* Phone videos: the frames are stored sideways and a display matrix (the MP4 ``tkhd``
  matrix, FFmpeg's ``rotate``) says how to turn them. The decoder must hand out upright
  frames, the detections must be in the upright frame, and the JSON must report the
  displayed size.
* Variable frame rate: each frame's ``time_s`` is its presentation timestamp, not
  ``index / fps``, in the reader and in the JSON; a complete VFR file whose container
  overestimates its frame count (MKV/WebM: duration x fps) is not taken for a truncated one.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from dfine.data.synth_video import render_clip
from dfine.video import FrameReader, annotate_video, probe

av = pytest.importorskip("av", reason="PyAV writes the rotation-tagged clip: pip install av")

WIDTH, HEIGHT, FRAMES = 320, 240, 6


def write_rotated(path: Path, frames: list[np.ndarray], degrees: int, fps: int = 25) -> Path:
    """Encode RGB ``frames`` as stored (sensor) pixels with a display rotation of ``degrees``
    counter-clockwise (FFmpeg's convention; a phone held upright records -90)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        stream.set_display_rotation(degrees)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotate_box(box: list[float], k: int, width: int, height: int) -> list[float]:
    """``box`` (xyxy in a ``width x height`` image) after ``np.rot90(image, k)`` (k quarter
    turns counter-clockwise)."""
    x1, y1, x2, y2 = box
    for _ in range(k % 4):  # one CCW quarter turn: (x, y) -> (y, W - x); the image is H x W
        x1, y1, x2, y2 = y1, width - x2, y2, width - x1
        width, height = height, width
    return [x1, y1, x2, y2]


@pytest.fixture(scope="module")
def scene():
    frames, _shapes, truth = render_clip(FRAMES, WIDTH, HEIGHT, num_objects=2, seed=4)
    return frames, truth


@pytest.mark.parametrize("degrees", [-90, 90, 180])
def test_decoded_frames_are_upright(tmp_path, scene, degrees):
    frames, _ = scene
    clip = write_rotated(tmp_path / f"phone{degrees}.mp4", frames, degrees)
    k = degrees // 90
    upright = [np.rot90(f, k) for f in frames]
    info = probe(clip)
    assert (info.width, info.height) == (upright[0].shape[1], upright[0].shape[0])
    with FrameReader(clip) as reader:
        got = list(reader)
    assert len(got) == FRAMES
    for a, b in zip(got, upright):
        assert a.rgb.shape == b.shape
        error = np.abs(a.rgb.astype(int) - b).mean()
        # the same frame upside down is far off: the check can fail
        flipped = np.abs(a.rgb.astype(int) - np.rot90(b, 2)).mean()
        assert error < 3 and flipped > 4 * error  # measured: 1.5 vs 14-16
    # frames kept by a stride (grab + retrieve) are turned the same way
    with FrameReader(clip, stride=4) as reader:
        strided = list(reader)
    assert [f.index for f in strided] == [0, 4]
    assert np.abs(strided[1].rgb.astype(int) - upright[4]).mean() < 4


def test_rotated_phone_clip_detections_and_json(tmp_path, scene, demo_detector):
    frames, truth = scene
    clip = write_rotated(tmp_path / "portrait.mp4", frames, -90)  # an upright phone
    k = -1
    run = annotate_video(demo_detector, clip, tmp_path / "out.webm", tmp_path / "out.json")
    record = json.loads((tmp_path / "out.json").read_text())
    assert (record["video"]["width"], record["video"]["height"]) == (HEIGHT, WIDTH)  # displayed
    assert probe(tmp_path / "out.webm").width == HEIGHT  # the annotated video is upright too
    assert len(record["frames"]) == FRAMES
    for dets, frame_truth in zip(run.frames, truth):
        assert dets.image_size == (HEIGHT, WIDTH)
        for obj in frame_truth:
            box = rotate_box(obj["box"], k, WIDTH, HEIGHT)
            iou = box_iou(torch.tensor([box]), torch.from_numpy(dets.boxes))[0].numpy()
            assert iou.size and iou.max() >= 0.7, (dets.frame_index, box, dets.boxes)
            assert dets.labels[int(iou.argmax())] == obj["label"]


def test_rotate_box_matches_numpy():
    image = np.zeros((4, 6), bool)
    image[1:3, 2:5] = True  # box [2, 1, 5, 3] in a 6 x 4 image
    for k in range(4):
        turned = np.rot90(image, k)
        ys, xs = np.nonzero(turned)
        expect = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert rotate_box([2, 1, 5, 3], k, 6, 4) == expect
    assert rotate_box([2, 1, 5, 3], -1, 6, 4) == rotate_box([2, 1, 5, 3], 3, 6, 4)


# --------------------------------------------------------------------------- variable frame rate

PTS_MS = [0, 40, 80, 200, 240, 280, 500, 540]  # a stall, then another


def write_vfr(path: Path, frames: list[np.ndarray], pts_ms: list[int]) -> Path:
    """Encode ``frames`` with the given presentation times (milliseconds): H.264 in MP4/MKV,
    VP8 in WebM."""
    codec = "libvpx" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for ms, rgb in zip(pts_ms, frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_variable_frame_rate_keeps_timestamps(tmp_path, suffix):
    frames, _, _ = render_clip(len(PTS_MS), 160, 128, num_objects=1, seed=1)
    clip = write_vfr(tmp_path / f"vfr{suffix}", frames, PTS_MS)
    with FrameReader(clip) as reader:  # MKV/WebM say 14 frames (0.56 s x 25 fps): not cut
        got = list(reader)
    assert [f.index for f in got] == list(range(len(PTS_MS)))
    np.testing.assert_allclose([f.time_s for f in got], np.array(PTS_MS) / 1000, atol=1e-3)
    with FrameReader(clip, stride=3) as reader:
        np.testing.assert_allclose([f.time_s for f in reader], [0.0, 0.2, 0.5], atol=1e-3)


def test_variable_frame_rate_json_times(tmp_path, demo_detector):
    frames, _, _ = render_clip(len(PTS_MS), 320, 320, num_objects=2, seed=2)
    clip = write_vfr(tmp_path / "vfr.mkv", frames, PTS_MS)
    annotate_video(demo_detector, clip, tmp_path / "out.webm", tmp_path / "out.json", track=True)
    record = json.loads((tmp_path / "out.json").read_text())
    assert [f["time_s"] for f in record["frames"]] == pytest.approx(
        [ms / 1000 for ms in PTS_MS], abs=1e-3
    )
    assert all(len(f["detections"]) == 2 for f in record["frames"])
