"""``dfine predict`` on videos, and one clear error for every kind of bad video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dfine.cli import main
from dfine.data.synth_video import write_synth_video
from dfine.video import MAX_PIXELS, FrameReader, VideoError, VideoWriter, count_frames, probe
from tests.app_util import DEMO

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples"


def _write(path: Path, frames: int, size=(64, 48)) -> Path:
    with VideoWriter(path, 25, size) as writer:
        for i in range(frames):
            writer.write(np.full((size[1], size[0], 3), (37 * i) % 255, np.uint8))
    return path


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------- bad inputs


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"not a video file: FFmpeg recognises no container"):
        probe(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.webm"
    path.write_bytes(b"")
    with pytest.raises(VideoError, match=r"the file is empty \(0 bytes\)"):
        probe(path)


def test_zero_frames(tmp_path):
    path = tmp_path / "zero.webm"
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), 25, (64, 48))
    writer.release()  # a header and no frames
    with pytest.raises(VideoError, match="holds no video frames"):
        probe(path)


def test_truncated_header(tmp_path):
    data = _write(tmp_path / "full.webm", 30).read_bytes()
    path = tmp_path / "cut.webm"
    path.write_bytes(data[:300])
    with pytest.raises(VideoError, match=r"no video frames|could not be decoded|truncated"):
        probe(path)


def test_truncated_middle(tmp_path):
    data = _write(tmp_path / "full.webm", 30, size=(160, 120)).read_bytes()
    path = tmp_path / "half.webm"
    path.write_bytes(data[: len(data) // 2])
    reader = FrameReader(path)  # the header is intact: it opens
    with reader, pytest.raises(VideoError, match=r"decoding stopped after \d+ of its 30 frames"):
        list(reader)


def test_unsupported_codec(tmp_path):
    import cv2

    good = tmp_path / "good.avi"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    path = tmp_path / "odd.avi"
    path.write_bytes(good.read_bytes().replace(b"MJPG", b"ZZZZ"))  # a codec no one has
    with pytest.raises(VideoError, match="is not supported by this OpenCV/FFmpeg build"):
        probe(path)


def test_audio_only(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoError, match=r"no video stream \(streams: audio; an audio-only"):
        probe(path)


def test_huge_resolution_is_refused_before_decoding(tmp_path):
    import cv2

    path = tmp_path / "huge.avi"
    width, height = 3904, 2176  # 8.5 MP, just above 4K UHD
    assert width * height > MAX_PIXELS
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    writer.write(np.zeros((height, width, 3), np.uint8))
    writer.release()
    with pytest.raises(VideoError, match=r"3904x2176 \(8.5 MP\), above the limit of 8.3 MP"):
        probe(path)
    assert probe(path, max_pixels=width * height).width == width  # a stated, movable limit


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    return write_synth_video(tmp_path_factory.mktemp("cli") / "moving.webm", 6)[0]


def test_predict_video_and_image_together(clip, tmp_path, capsys):
    image = next(p for p in sorted(EXAMPLE.iterdir()) if p.suffix == ".jpg")
    out = tmp_path / "out"
    rc = main(["predict", str(clip), str(image), "-w", str(DEMO), "-o", str(out), "--track"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["moving.webm", "moving.json", f"{image.stem}.jpg", f"{image.stem}.json"]
    )
    assert count_frames(out / "moving.webm") == 6  # frame count in = out
    record = json.loads((out / "moving.json").read_text())
    assert record["video"]["frame_count"] == 6 and record["video"]["fps"] == 25.0
    assert (record["video"]["width"], record["video"]["height"]) == (320, 320)
    assert [f["index"] for f in record["frames"]] == list(range(6))
    assert record["frames"][3]["time_s"] == pytest.approx(0.12, abs=1e-3)
    det = record["frames"][2]["detections"][0]
    assert set(det) == {"box", "score", "label", "name", "track_id"}
    assert {d["name"] for d in record["frames"][2]["detections"]} == {
        "green triangle",
        "orange cross",
        "purple ring",
    }
    text = capsys.readouterr().out
    assert "6 frames" in text and "frames/s" in text


def test_predict_caps_a_long_video_with_a_note(clip, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(clip), "-w", str(DEMO), "-o", str(out), "--max-frames", "2",
               "--stride", "2", "--no-track"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "6 frames, too long; processing the first 2 of every 2 (--max-frames 2" in err
    record = json.loads((out / "moving.json").read_text())
    assert [f["index"] for f in record["frames"]] == [0, 2]
    assert record["video"]["capped"] and record["video"]["fps"] == 12.5
    assert "track_id" not in record["frames"][0]["detections"][0]
    assert count_frames(out / "moving.webm") == 2


def test_predict_bad_video_is_one_line_and_writes_nothing(tmp_path, capsys):
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "out"
    assert main(["predict", str(bad), "-w", str(DEMO), "-o", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"skipped {bad}: Cannot read video {bad}: it is not a video file")
    assert list(out.iterdir()) == []


def test_interrupted_run_leaves_no_files(clip, tmp_path):
    from dfine.predict import Detector
    from dfine.video import annotate_video

    detector = Detector(DEMO)
    out = tmp_path / "out"
    out.mkdir()

    def stop(dets):
        if dets.frame_index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annotate_video(detector, clip, out / "a.webm", out / "a.json", on_frame=stop)
    assert list(out.iterdir()) == []  # no half video, no temporary file


@pytest.fixture(scope="module")
def onnx_b1(clip, tmp_path_factory) -> Path:
    """The demo model exported with a fixed batch of 1."""
    pytest.importorskip("onnxruntime")
    from dfine.export import export_onnx

    onnx = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    export_onnx(DEMO, onnx, batch=1, check_parity=False)
    return onnx


def test_predict_video_on_onnxruntime(clip, onnx_b1, tmp_path):
    """A fixed-batch (1) export runs with the default --batch: one frame per pass."""
    onnx = onnx_b1
    out = tmp_path / "out"
    args = ["predict", str(clip), "-w", str(onnx), "--backend", "onnxruntime", "-o", str(out)]
    assert main([*args, "--max-frames", "3", "-q"]) == 0
    record = json.loads((out / "moving.json").read_text())
    assert [f["index"] for f in record["frames"]] == [0, 1, 2]
    names = {d["name"] for d in record["frames"][1]["detections"] if d["track_id"] >= 0}
    assert names == {"green triangle", "orange cross", "purple ring"}


def test_predict_video_batch_matches_single(clip, tmp_path):
    """The default ``--batch 4``: frames share a forward pass (6 frames: chunks of 4 and 2);
    the JSON is the single-frame one up to float rounding."""
    from dfine.video_cli import DEFAULT_BATCH

    assert DEFAULT_BATCH == 4
    args = ["predict", str(clip), "-w", str(DEMO), "-q"]
    assert main([*args, "-o", str(tmp_path / "one"), "--batch", "1"]) == 0
    assert main([*args, "-o", str(tmp_path / "four")]) == 0
    one = json.loads((tmp_path / "one" / "moving.json").read_text())["frames"]
    four = json.loads((tmp_path / "four" / "moving.json").read_text())["frames"]
    assert [f["index"] for f in four] == list(range(6))
    for a, b in zip(one, four):
        assert [d["name"] for d in a["detections"]] == [d["name"] for d in b["detections"]]
        assert [d["track_id"] for d in a["detections"]] == [d["track_id"] for d in b["detections"]]
        np.testing.assert_allclose(
            [d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=0.05
        )
    assert count_frames(tmp_path / "four" / "moving.webm") == 6


def test_predict_batch_on_a_fixed_batch_export_is_one_line(clip, onnx_b1, tmp_path, capsys):
    from dfine.predict import Detector
    from dfine.video_cli import fixed_batch

    onnx = onnx_b1
    assert fixed_batch(Detector(onnx)) == 1 and fixed_batch(Detector(DEMO)) is None
    out = tmp_path / "out"
    rc = main(["predict", str(clip), "-w", str(onnx), "-o", str(out), "--batch", "4"])
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        "error: --batch 4: this model file has a fixed batch of 1; export it with a dynamic "
        "batch (dfine export W, the default) or drop --batch"
    )
    assert list(out.iterdir()) == []
