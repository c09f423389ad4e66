"""The one streaming pipeline (``Detector.stream``) and everything that runs through it: the
Python API, ``dfine predict``, ``annotate_video`` and the app's Video tab agree; sources are
read lazily in bounded batches; the threshold keeps scores at least it; ByteTrack ids start
in the first frame; nothing process-wide is touched and nothing opened is left open."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import dfine
from dfine.cli import main
from dfine.data.synth_video import render_clip, write_synth_video
from dfine.postprocess import BatchDetections, postprocess
from dfine.video import VideoError, annotate_video
from tests.app_util import DEMO, SYNTH_EXAMPLE

pytestmark = pytest.mark.skipif(not DEMO.exists(), reason="demo model not bundled")
SYNTH = SYNTH_EXAMPLE.parent


@pytest.fixture(scope="module")
def det():
    return dfine.Detector(DEMO, threshold=0.5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_synth_video(tmp_path_factory.mktemp("clip") / "shapes.webm", 7)[0]


def _batches(det, monkeypatch) -> list[int]:
    """Record the batch size of every forward pass of ``det``."""
    sizes: list[int] = []
    real = det.backend.detect
    monkeypatch.setattr(det.backend, "detect", lambda x, s: sizes.append(x.shape[0]) or real(x, s))
    return sizes


# --------------------------------------------------------------------------- sources


def test_call_takes_a_list_a_folder_and_a_glob_in_bounded_batches(det, monkeypatch):
    images = sorted(SYNTH.glob("*.jpg"))
    assert len(images) >= 3
    sizes = _batches(det, monkeypatch)
    one = det(images[0])
    assert isinstance(one, dfine.Detections) and sizes == [1]
    sizes.clear()
    many = det([images[0], images[1]], batch=1)
    assert [d.source for d in many] == [str(images[0]), str(images[1])] and sizes == [1, 1]
    sizes.clear()
    folder = det(SYNTH, batch=2)
    assert [Path(d.source) for d in folder] == images
    assert sizes == [2] * (len(images) // 2) + [1] * (len(images) % 2)
    np.testing.assert_allclose(folder[0].boxes, one.boxes, atol=1e-3)  # batched: rounding
    globbed = det(str(SYNTH / "*.jpg"))
    assert [d.source for d in globbed] == [d.source for d in folder]
    assert det.predict([]) == []


def test_stream_decodes_no_more_than_its_batch_ahead(det):
    frames = render_clip(6, 96, 96, num_objects=1)[0]
    pulled: list[int] = []

    def camera():
        for i, frame in enumerate(frames):
            pulled.append(i)
            yield frame

    stream = det.stream(camera(), batch=2, keep_image=False)
    first = next(stream)
    assert len(pulled) == 2 and first.image is None  # one batch decoded, nothing kept
    assert len(list(stream)) == 5 and len(pulled) == 6


def test_bad_images_raise_or_go_to_on_error(det, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(dfine.io.ImageLoadError, match=r"bad\.jpg"):
        det([SYNTH_EXAMPLE, bad])
    skipped = []
    out = list(det.stream([bad, SYNTH_EXAMPLE], on_error=lambda i, e: skipped.append(i.source)))
    assert skipped == [str(bad)] and [d.source for d in out] == [str(SYNTH_EXAMPLE)]
    with pytest.raises(FileNotFoundError, match="no files match"):
        det(str(tmp_path / "*.png"))
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        det.stream(SYNTH_EXAMPLE, batch=0)


# --------------------------------------------------------------------------- one threshold rule


def _fixed_scores(det, monkeypatch, scores: list[float]) -> None:
    k = len(scores)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(k, 1)[None]
    top = BatchDetections(boxes, torch.tensor([scores]), torch.zeros(1, k, dtype=torch.int64))
    monkeypatch.setattr(det.backend, "detect", lambda x, s: top)


def test_a_score_equal_to_the_threshold_is_kept_everywhere(monkeypatch):
    det = dfine.Detector(DEMO, threshold=0.5)
    _fixed_scores(det, monkeypatch, [0.75, 0.5, 0.25])
    assert det(SYNTH_EXAMPLE).scores.tolist() == [0.75, 0.5]
    assert det(SYNTH_EXAMPLE, threshold=0.75).scores.tolist() == [0.75]
    assert det(SYNTH_EXAMPLE).filter(0.5).scores.tolist() == [0.75, 0.5]
    logit = torch.logit(torch.tensor([0.5, 0.25]))
    out = {"pred_logits": logit.view(1, 2, 1), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    kept = postprocess(out, torch.tensor([[8, 8]]), num_top=2, threshold=0.5)[0]
    assert kept["scores"].tolist() == [0.5]

    from app.results import TraceResult

    dets = det(SYNTH_EXAMPLE, threshold=0.0)
    result = TraceResult(dets, None, np.arange(len(dets)), "default", 320, False)
    assert result.select(0.5, 300)[0].scores.tolist() == [0.75, 0.5]


# --------------------------------------------------------------------------- ByteTrack


def test_every_first_frame_object_has_a_track_id(det, clip):
    frames = list(det.video(clip, track=True))
    assert len(frames[0]) == 3 and (frames[0].track_id >= 0).all()
    assert sorted(frames[0].track_id) == [0, 1, 2]
    for dets in frames[1:]:  # the same objects keep their ids
        assert sorted(dets.track_id) == [0, 1, 2]


# --------------------------------------------------------------------------- the same results


def _records(frames) -> list[list[tuple]]:
    return [
        [
            (tuple(round(float(v), 2) for v in b), round(float(s), 4), int(c), int(t))
            for b, s, c, t in zip(d.boxes, d.scores, d.labels, d.track_id)
        ]
        for d in frames
    ]


def test_cli_python_and_app_give_the_same_detections_and_track_ids(det, clip, tmp_path):
    """One clip through ``dfine predict --track``, ``Detector.video`` and the app's ``/video``
    handler: the same boxes, scores, classes and track ids in every frame."""
    assert (
        main(["predict", str(clip), "--weights", str(DEMO), "--out", str(tmp_path / "cli"), "-q"])
        == 0
    )
    cli = json.loads((tmp_path / "cli" / "shapes.json").read_text())["frames"]
    cli = [
        [(tuple(e["box"]), e["score"], e["label"], e["track_id"]) for e in frame["detections"]]
        for frame in cli
    ]
    api = _records(det.video(clip, track=True, batch=4))

    from app.tabs.video import VideoCaps, VideoTab
    from tests.app_util import app_state

    tab = VideoTab(app_state(tmp_path, DEMO), VideoCaps())
    out = tab.video(str(clip), 0.5, 320, "default", 300, 1, True, progress=lambda *a, **k: None)
    app = _records(tab.runs.get(out[5]).frames)
    assert len(cli) == len(api) == len(app) == 7
    assert cli == api == app
    assert all(t >= 0 for frame in api for *_, t in frame)


# --------------------------------------------------------------------------- side effects, leaks


def test_opening_a_writer_leaves_file_descriptor_2_alone(tmp_path, monkeypatch):
    import cv2

    from dfine.video import VideoWriter

    dups = []
    real = os.dup2
    monkeypatch.setattr(os, "dup2", lambda a, b, *r: dups.append(b) or real(a, b, *r))
    level = cv2.utils.logging.getLogLevel()
    before = os.fstat(2)

    def write(i: int) -> None:
        with VideoWriter(tmp_path / f"v{i}.webm", 10, (32, 32)) as w:
            w.write(np.zeros((32, 32, 3), np.uint8))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert dups == [] and (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    assert cv2.utils.logging.getLogLevel() == level  # OpenCV's own level, restored
    assert all((tmp_path / f"v{i}.webm").is_file() for i in range(4))


class _Captures:
    """Count the ``cv2.VideoCapture`` s opened and those still open."""

    def __init__(self, monkeypatch) -> None:
        import cv2

        real = cv2.VideoCapture
        self.opened, self.live = 0, []
        counter = self

        class Capture:
            def __init__(self, *args):
                self._cap = real(*args)
                counter.opened += 1
                counter.live.append(self)

            def release(self):
                if self in counter.live:
                    counter.live.remove(self)
                self._cap.release()

            def __getattr__(self, name):
                return getattr(self._cap, name)

        monkeypatch.setattr(cv2, "VideoCapture", Capture)


def test_annotate_video_closes_its_reader_when_the_writer_fails(det, clip, tmp_path, monkeypatch):
    caps = _Captures(monkeypatch)
    with pytest.raises(ValueError, match="the suffix must be one of"):
        annotate_video(det, clip, tmp_path / "out.gif")
    assert caps.opened == 1 and caps.live == []
    with pytest.raises(VideoError, match="not a video file"):
        (tmp_path / "x.mp4").write_text("nope")
        annotate_video(det, tmp_path / "x.mp4", tmp_path / "out.webm")
    assert caps.live == [] and not list(tmp_path.glob("*.webm"))


def test_dfine_predict_opens_each_video_once(clip, tmp_path, monkeypatch):
    caps = _Captures(monkeypatch)
    argv = ["predict", str(clip), str(clip), "--weights", str(DEMO), "--out", str(tmp_path), "-q"]
    assert main([*argv, "--max-frames", "2"]) == 0
    assert caps.opened == 2 and caps.live == []
    assert {p.name for p in tmp_path.glob("*.json")} == {"shapes.json", "shapes_1.json"}


def test_video_tab_checks_the_model_before_opening_the_video(clip, tmp_path, monkeypatch):
    import gradio as gr

    from app.tabs.video import VideoTab
    from tests.app_util import app_state

    tab = VideoTab(app_state(tmp_path, DEMO))
    caps = _Captures(monkeypatch)
    with pytest.raises(gr.Error):
        tab.video(str(clip), 0.5, 320, "no-such-model", 300, progress=lambda *a, **k: None)
    assert caps.opened == 0 and caps.live == []


# --------------------------------------------------------------------------- the Python API


def test_detections_views():
    d = dfine.Detections(
        boxes=[[10, 20, 50, 60], [0, 0, 100, 50]],
        scores=[0.9, 0.6],
        labels=[2, 0],
        class_names=("a", "b", "c"),
        image_size=(200, 100),
    )
    assert np.array_equal(d.xyxy, d.boxes) and d.xyxy is not d.boxes
    assert d.xywh.tolist() == [[30, 40, 40, 40], [50, 25, 100, 50]]
    np.testing.assert_allclose(d.xyxyn, [[0.05, 0.2, 0.25, 0.6], [0.0, 0.0, 0.5, 0.5]], rtol=1e-6)
    assert d.conf.tolist() == pytest.approx([0.9, 0.6]) and d.cls.tolist() == [2, 0]
    assert d[1:].xywh.tolist() == [[50, 25, 100, 50]]


def test_repr_of_a_detector(det):
    text = repr(det)
    assert text.startswith(f"Detector(weights={str(DEMO)!r}, backend='torch', size=320x320")
    assert "threshold=0.5" in text and "device='cpu'" in text


@pytest.mark.parametrize("deploy", [False, True])
def test_detector_never_changes_the_callers_model(deploy):
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=3)  # train mode
    state = {k: v.clone() for k, v in model.state_dict().items()}
    det = dfine.Detector(model, deploy=deploy, size=256)
    det(np.zeros((256, 256, 3), np.uint8))
    assert model.training and not model.deployed
    assert det.model is not model and not det.model.training
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    model.eval()  # an eval-mode model on the device (deploy=False) is shared as it is
    assert dfine.Detector(model, deploy=False, size=256).model is model
