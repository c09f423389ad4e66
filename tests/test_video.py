"""Video: decoding, tracking and encoding on a generated clip with the bundled demo model.

The clip (dfine.data.synth_video) has three shapes moving on known straight lines; its ground
truth says where every object is in every frame.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from dfine.data.synth_video import render_clip, write_synth_video
from dfine.detections import Detections
from dfine.video import FrameReader, Tracker, VideoError, VideoWriter, count_frames, probe

FRAMES = 24


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, dict]:
    video, truth = write_synth_video(tmp_path_factory.mktemp("clip") / "clip.webm", FRAMES)
    return video, json.loads(truth.read_text())


@pytest.fixture(scope="module")
def tracked(demo_detector, clip) -> list[Detections]:
    return list(demo_detector.video(clip[0], track=True))


# --------------------------------------------------------------------------- the clip


def test_clip_truth_follows_straight_paths():
    frames, shapes, truth = render_clip(10, 160, 120, num_objects=2, seed=3)
    assert len(frames) == len(truth) == 10
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    for k, shape in enumerate(shapes):
        boxes = np.array([objs[k]["box"] for objs in truth], dtype=float)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 120).all()
        steps = np.diff(boxes[:, 0])
        assert np.ptp(steps) <= 1.0  # constant speed up to rounding
        assert np.ptp(boxes[:, 2] - boxes[:, 0]) == 0  # same size in every frame
        assert {objs[k]["label"] for objs in truth} == {shape.label}
    again, _, _ = render_clip(10, 160, 120, num_objects=2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_reader_reads_every_frame_with_timestamps(clip):
    video, _truth = clip
    info = probe(video)
    assert (info.width, info.height) == (320, 320)
    assert info.fps == pytest.approx(25.0)
    with FrameReader(video) as reader:
        frames = list(reader)
    assert [f.index for f in frames] == list(range(FRAMES))
    times = np.array([f.time_s for f in frames])
    np.testing.assert_allclose(times, np.arange(FRAMES) / 25.0, atol=1e-3)
    # lossy VP8, but the picture is the one drawn
    drawn, _, _ = render_clip(FRAMES, 320, 320, num_objects=3, seed=0)
    assert np.abs(frames[5].rgb.astype(int) - drawn[5]).mean() < 8


def test_reader_stride_and_cap(clip):
    with FrameReader(clip[0], stride=5, max_frames=3) as reader:
        assert reader.expected_frames == 3
        frames = list(reader)
    assert [f.index for f in frames] == [0, 5, 10]
    assert frames[2].time_s == pytest.approx(0.4, abs=1e-3)


def test_reader_stops_its_thread_when_the_consumer_stops(clip):
    reader = FrameReader(clip[0], prefetch=2)
    first = next(iter(reader))
    assert first.index == 0
    reader.close()
    assert not reader._thread.is_alive()


def test_folder_of_frames(tmp_path):
    from PIL import Image

    frames, _, _ = render_clip(4, 96, 64, num_objects=1)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    with FrameReader(tmp_path, folder_fps=10) as reader:
        got = list(reader)
    assert reader.info.frame_count == 4 and reader.info.codec == "images"
    assert [f.time_s for f in got] == [0.0, 0.1, 0.2, 0.3]
    assert np.array_equal(got[3].rgb, frames[3])


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "out.webm"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, 25, (64, 48)) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    with VideoWriter(out, 25, (64, 48)) as writer:
        for i in range(7):
            writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
        assert not out.exists()  # only under its temporary name while being written
    assert [p.name for p in tmp_path.iterdir()] == ["out.webm"]
    assert count_frames(out) == 7


# --------------------------------------------------------------------------- detections


def test_detections_video_fields_round_trip():
    dets = Detections(
        boxes=[[0, 0, 10, 10], [5, 5, 20, 20]],
        scores=[0.9, 0.6],
        labels=[1, 2],
        class_names=("a", "b", "c"),
        image_size=(32, 32),
        track_id=[4, -1],
        frame_index=7,
        time_s=0.28,
    )
    record = dets.to_dict()
    assert record["frame_index"] == 7 and record["time_s"] == 0.28
    assert [d["track_id"] for d in record["detections"]] == [4, -1]
    sub = dets[1:]
    assert sub.track_id.tolist() == [-1] and sub.frame_index == 7
    still = Detections(boxes=[[0, 0, 1, 1]], scores=[1.0], labels=[0], class_names=("a",),
                       image_size=(4, 4))  # fmt: skip
    assert "track_id" not in still.to_dict()["detections"][0]
    assert "frame_index" not in still.to_dict()
    with pytest.raises(ValueError, match="labels must have shape"):
        Detections(boxes=[[0, 0, 1, 1]], scores=[1.0], labels=[0], class_names=("a",),
                   image_size=(4, 4), track_id=[1, 2])  # fmt: skip


def test_tracker_keeps_ids_and_skips_duplicates():
    tracker = Tracker(fps=25, threshold=0.5)
    ids = []
    for t in range(6):
        x = 10.0 + 4 * t
        dets = Detections(
            boxes=[[x, 10, x + 30, 40], [x + 1, 10, x + 31, 41], [100, 100 + t, 130, 130 + t]],
            scores=[0.9, 0.6, 0.8],
            labels=[0, 0, 1],
            class_names=("a", "b"),
            image_size=(200, 200),
        )
        ids.append(tracker.update(dets, t / 25).track_id.tolist())
    assert ids[0] == [0, -1, 1]  # the first frame's tracks are active at once (ByteTrack)
    assert all(row[1] == -1 for row in ids)  # the duplicate never gets a track
    assert {row[0] for row in ids} == {0} and {row[2] for row in ids} == {1}


# --------------------------------------------------------------------------- end to end


def _match(dets: Detections, box: list[int]) -> int | None:
    """Row of the best-scoring tracked detection overlapping ``box`` with IoU >= 0.5."""
    if len(dets) == 0:
        return None
    iou = box_iou(torch.tensor([box], dtype=torch.float32), torch.from_numpy(dets.boxes))[0]
    ok = (iou >= 0.5).numpy()
    if not ok.any():
        return None
    rows = np.flatnonzero(ok)
    return int(rows[np.argmax(dets.scores[rows])])


def test_video_detects_and_tracks_every_object(tracked, clip):
    _video, truth = clip
    assert [d.frame_index for d in tracked] == list(range(FRAMES))
    np.testing.assert_allclose([d.time_s for d in tracked], np.arange(FRAMES) / 25, atol=1e-3)
    assert all(d.image is not None and d.image.shape == (320, 320, 3) for d in tracked)
    figures = {}
    for obj in truth["objects"]:
        k = obj["id"]
        labels, ids = [], []
        for dets, frame in zip(tracked, truth["frames"]):
            row = _match(dets, frame["objects"][k]["box"])
            assert row is not None, f"object {k} missed in frame {frame['index']}"
            labels.append(int(dets.labels[row]))
            ids.append(int(dets.track_id[row]))
        assert labels == [obj["label"]] * FRAMES  # the right class in every frame
        _main_id, count = Counter(i for i in ids if i >= 0).most_common(1)[0]
        valid = [i for i in ids if i >= 0]
        switches = sum(a != b for a, b in itertools.pairwise(valid))
        figures[k] = (count / FRAMES, switches)
        assert count >= 0.9 * FRAMES, f"object {k}: track ids {ids}"
        assert switches <= 1, f"object {k}: track ids {ids}"
    print("tracking (fraction of frames with the main id, id switches):", figures)
    main_ids = [Counter(int(dets.track_id[_match(dets, f["objects"][k]["box"])])
                        for dets, f in zip(tracked, truth["frames"])).most_common(1)[0][0]
                for k in range(len(truth["objects"]))]  # fmt: skip
    assert len(set(main_ids)) == len(main_ids)  # one id per object, none shared


def test_video_untracked_has_no_track_ids(demo_detector, clip):
    truth = clip[1]
    dets = list(demo_detector.video(clip[0], track=False, stride=8))
    assert [d.frame_index for d in dets] == [0, 8, 16]
    assert all(d.track_id is None for d in dets)
    for d in dets:
        for obj in truth["frames"][d.frame_index]["objects"]:
            row = _match(d, obj["box"])
            assert row is not None and d.labels[row] == obj["label"]


def test_video_rejects_bad_arguments(demo_detector, clip):
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        demo_detector.video(clip[0], stride=0)
    with pytest.raises(ValueError, match="max_frames must be a positive integer"):
        demo_detector.video(clip[0], max_frames=0)
    with pytest.raises(FileNotFoundError, match="video not found"):
        demo_detector.video(clip[0].with_name("missing.mp4"))
    with pytest.raises(VideoError):
        demo_detector.video(Path(__file__))


def test_video_batched_frames_match_single(demo_detector, clip):
    single = list(demo_detector.video(clip[0], track=True, max_frames=6))
    batched = list(demo_detector.video(clip[0], track=True, max_frames=6, batch=4))
    assert [d.frame_index for d in batched] == list(range(6))
    for a, b in zip(single, batched):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        assert a.labels.tolist() == b.labels.tolist()
        assert a.track_id.tolist() == b.track_id.tolist()
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        demo_detector.video(clip[0], batch=0)
