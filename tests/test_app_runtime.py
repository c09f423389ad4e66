"""The fastest runtime where nothing needs a trace: ``backend="fastest"``
(:func:`dfine.sources.fastest_backend`), and the app's webcam and untracked video, which run on
it and say so, while Detect and the tracked video keep tracing with PyTorch. The fast path's
detections stay within the precision guard's drift bounds of the traced torch pass."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import dfine
from dfine import optional
from dfine.guard import DRIFT_BOX_TOL, DRIFT_MAX_LOST, DRIFT_SCORE_TOL, drift
from dfine.io import load_image
from dfine.sources import fastest_backend
from tests.app_util import DEMO

EXAMPLES = sorted((DEMO.parent / "examples" / "synth").glob("*.jpg"))


def _installed(monkeypatch, *modules: str) -> None:
    """Pretend exactly ``modules`` of dfine's optional parts are installed."""
    monkeypatch.setattr(optional, "available", lambda m: m in modules)


@pytest.mark.parametrize(
    "installed, source, expected",
    [
        (("onnx", "openvino", "onnxruntime"), "w.safetensors", "openvino"),
        (("onnx", "onnxruntime"), "w.safetensors", "onnxruntime"),
        (("onnx",), "w.safetensors", "torch"),
        (("openvino", "onnxruntime"), "w.safetensors", "torch"),  # no onnx: no export
        (("openvino",), "model.onnx", "openvino"),  # an ONNX file needs no export
        ((), "model.onnx", "onnxruntime"),  # the file's own runtime (its error names it)
        (("onnx", "openvino"), "model_int8.xml", "openvino"),
        (("onnx", "openvino", "onnxruntime"), "dfine_n_coco", "openvino"),
    ],
)
def test_fastest_backend_prefers_openvino_then_onnxruntime(
    monkeypatch, installed, source, expected
):
    _installed(monkeypatch, *installed)
    assert fastest_backend(source) == expected


def test_fastest_backend_keeps_torch_for_a_model_object_and_a_gpu(monkeypatch):
    _installed(monkeypatch, "onnx", "openvino", "onnxruntime")
    assert fastest_backend(object()) == "torch"  # a DFINE in memory cannot be exported
    assert fastest_backend("w.pth", device="cuda:0") == "torch"
    assert fastest_backend("w.pth", device=torch.device("cpu")) == "openvino"


@pytest.fixture(scope="module")
def demo():
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    if not (optional.available("onnx") and optional.available("openvino")):
        pytest.skip("the fast path here needs onnx and openvino")
    return DEMO


def test_detector_fastest_matches_torch_within_the_guard(demo):
    torch_det = dfine.Detector(demo, threshold=0.0)
    fast = dfine.Detector(demo, backend="fastest", threshold=0.0)
    assert fast.backend.name == fastest_backend(demo) == "openvino"
    assert fast.backend.label == "OpenVINO f32" and torch_det.backend.label == "PyTorch f32"
    boxes, scores, lost, total = [], [], 0, 0
    for image in EXAMPLES:
        a, b = torch_det(image), fast(image)
        ref = _batch(a)
        got = _batch(b)
        bx, sc, lo, n = drift(ref, got, torch.tensor(a.image_size))
        boxes, scores, lost, total = boxes + bx, scores + sc, lost + lo, total + n
    assert total > 10
    assert (
        np.percentile(boxes, 95) <= DRIFT_BOX_TOL and np.percentile(scores, 95) <= DRIFT_SCORE_TOL
    )
    assert lost / total <= DRIFT_MAX_LOST
    # f32 on both: in fact equal to float rounding
    assert max(boxes) < 1e-4 and max(scores) < 1e-4


def _batch(dets):
    """One image's Detections as the guard's batch of one."""

    class B:
        boxes = torch.as_tensor(dets.boxes)[None]
        scores = torch.as_tensor(dets.scores)[None]
        labels = torch.as_tensor(dets.labels)[None]

    return B


@pytest.fixture(scope="module")
def tab(demo):
    pytest.importorskip("gradio")
    from app.models import ModelStore
    from app.state import AppState
    from app.tabs.video import VideoCaps, VideoTab

    return VideoTab(AppState(ModelStore(str(demo))), VideoCaps(max_frames=4))


def test_webcam_runs_on_the_fastest_runtime_and_names_it(tab):
    frame = np.asarray(load_image(EXAMPLES[0]))
    _, text, _ = tab.webcam(frame, 0.5, 320, "default", [])
    loaded = tab.state.store.get("default")
    fast = loaded.fast_detector(320)
    assert fast.backend.name == "openvino" and "on OpenVINO f32" in text
    assert fast is not loaded.detector(320)  # the traced detector stays torch
    assert loaded.detector(320).backend.name == "torch"
    # what the webcam shows is what the torch pass finds, to float rounding
    ref = loaded.detector(320)(frame, threshold=0.5)
    got = fast(frame, threshold=0.5)
    assert got.names == ref.names
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.05)


def test_video_untracked_is_fast_and_tracked_is_traced(tab, tmp_path):
    from dfine.data.synth_video import write_synth_video

    video, _ = write_synth_video(tmp_path / "clip.mp4", 4, (320, 320), seed=3)
    untracked = tab.video(str(video), 0.5, 320, "default", 50, 1, False)
    tracked = tab.video(str(video), 0.5, 320, "default", 50, 1, True)
    assert "Runtime: **OpenVINO f32**" in untracked[2]
    assert "Runtime: **PyTorch f32**" in tracked[2] and "only PyTorch" in tracked[2]
    a, b = (tab.runs.get(r[5]).frames for r in (untracked, tracked))
    assert [d.names for d in a] == [d.names for d in b]
    for da, db in zip(a, b):
        np.testing.assert_allclose(da.boxes, db.boxes, atol=0.05)


def test_zero_gpu_keeps_torch(monkeypatch, demo):
    from app import gpu

    assert gpu.plain_backend(str(demo)) == "openvino"
    monkeypatch.setitem(sys.modules, "spaces", types.ModuleType("spaces"))  # on a Space
    assert gpu.plain_backend(str(demo)) == "torch"


def test_onnxruntime_spinning_can_be_turned_off(demo_onnx):
    pytest.importorskip("onnxruntime")
    from dfine.backends import OnnxRuntimeBackend

    def entry(backend):
        options = backend.session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # "does not have configuration with key": the default, spin
            return None

    assert entry(OnnxRuntimeBackend(demo_onnx, threads=1, spinning=False)) == "0"
    assert entry(OnnxRuntimeBackend(demo_onnx, threads=1)) is None


def test_cli_predict_backend_fastest_says_what_ran(demo, tmp_path, capsys):
    from dfine.cli import main

    assert main(["predict", str(EXAMPLES[0]), "--backend", "fastest", "--out", str(tmp_path)]) == 0
    assert "ran on OpenVINO f32 (--backend fastest)" in capsys.readouterr().out
    assert main(["predict", str(EXAMPLES[0]), "--out", str(tmp_path)]) == 0
    assert "ran on PyTorch f32" in capsys.readouterr().out
