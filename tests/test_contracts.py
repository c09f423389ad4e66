"""Hand-off contracts between modules: typed backend results, device names every backend
translates, ``num_top`` carried by the ONNX metadata, TensorRT buffers shaped by the engine,
the trainer's temporary-file clean-up and the app's result cache under concurrency."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
import torch

import dfine
from dfine.backends import create_backend
from dfine.backends.base import torch_device
from dfine.backends.openvino import openvino_device
from dfine.backends.tensorrt import cuda_device, output_buffers
from dfine.export import export_onnx, read_metadata
from dfine.postprocess import BatchDetections, topk_detections
from tests.app_util import DEMO

SYNTH = Path(__file__).resolve().parents[1] / "assets" / "examples" / "synth_0.jpg"


@pytest.fixture(scope="module")
def onnx_top50(tmp_path_factory):
    pytest.importorskip("onnx")
    path = tmp_path_factory.mktemp("onnx") / "demo_top50.onnx"
    export_onnx(DEMO, path, num_top=50, check_parity=False)
    return path


def _inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(n, 3, 320, 320), torch.tensor([[640, 480]] * n)


def test_topk_returns_named_fields():
    logits, boxes = torch.randn(2, 30, 4), torch.rand(2, 30, 4) * 0.5 + 0.25
    top = topk_detections(logits, boxes, torch.tensor([[100, 50], [20, 40]]), num_top=7)
    assert isinstance(top, BatchDetections) and len(top) == 2
    assert top.boxes.shape == (2, 7, 4) and top.scores.shape == top.labels.shape == (2, 7)
    assert top.labels.dtype == torch.int64 and (top.scores[:, :-1] >= top.scores[:, 1:]).all()
    assert torch.equal(top.labels, torch.topk(logits.flatten(1), 7).indices % 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        top.scores = top.scores * 0  # a hand-off nobody rewrites on the way


def test_torch_backend_result_is_typed_with_queries():
    backend = create_backend("torch", DEMO, device=torch.device("cpu"), num_top=20)
    x, sizes = _inputs()
    out = backend.detect(x, sizes)
    assert isinstance(out, BatchDetections) and out.boxes.shape == (2, 20, 4)
    assert out.queries is not None and out.queries.shape == (2, 20)
    assert out.boxes.device.type == "cpu" and backend.device == torch.device("cpu")


def test_num_top_is_stored_and_used_by_the_runtimes(onnx_top50):
    pytest.importorskip("onnxruntime")
    assert read_metadata(onnx_top50)["num_top"] == 50
    x, sizes = _inputs()
    ort = create_backend("onnxruntime", onnx_top50, device=torch.device("cpu"), threads=1)
    assert ort.num_top == 50
    got = ort.detect(x, sizes)
    assert isinstance(got, BatchDetections) and got.scores.shape == (2, 50)
    ref = create_backend("torch", DEMO, num_top=50).detect(x, sizes)
    assert torch.allclose(got.scores, ref.scores, atol=1e-4)


@pytest.mark.parametrize("device", [None, "cpu", "CPU", torch.device("cpu")])
def test_openvino_accepts_torch_style_devices(onnx_top50, device):
    pytest.importorskip("openvino")
    ov = create_backend("openvino", onnx_top50, device=device, threads=1)
    assert ov.ov_device == "CPU"
    assert ov.detect(*_inputs(1)).scores.shape == (1, 50)


def test_openvino_device_names():
    assert openvino_device(torch.device("cpu")) == "CPU"
    assert openvino_device("gpu.1") == "GPU.1" and openvino_device("AUTO") == "AUTO"
    for bad in ("cuda:0", torch.device("cuda", 0)):
        with pytest.raises(ValueError, match="not on CUDA device"):
            openvino_device(bad)
    with pytest.raises(ValueError, match="unknown OpenVINO device"):
        openvino_device("tpu")


def test_tensorrt_device_defaults_to_cuda():
    assert cuda_device(None) == torch.device("cuda", 0)
    assert cuda_device("cuda") == torch.device("cuda", 0)
    assert cuda_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="runs on a CUDA GPU, not on cpu"):
        cuda_device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        torch_device("gpu-please")


def test_detector_leaves_the_device_to_the_backend(monkeypatch):
    """``Detector(w, backend="tensorrt")`` used to send device="cpu" to TensorRT."""
    seen = {}

    class Fake:
        name, input_size, num_classes, class_names = "tensorrt", (320, 320), 8, None
        device = torch.device("cuda", 0)

    def fake_create(name, weights, **options):
        seen.update(options, name=name)
        return Fake()

    monkeypatch.setattr(dfine.predict, "create_backend", fake_create)
    det = dfine.Detector(DEMO, backend="tensorrt")
    assert seen["name"] == "tensorrt" and seen["device"] is None
    assert cuda_device(seen["device"]) == torch.device("cuda", 0)
    assert det.device == torch.device("cuda", 0)


class _FakeEngine:
    """What ``output_buffers`` reads from a TensorRT engine and its execution context."""

    def __init__(self, k: int, batch: int) -> None:
        self.dtypes = {
            "labels": "DataType.INT64",
            "boxes": "DataType.FLOAT",
            "scores": "DataType.FLOAT",
        }
        self.shapes = {"labels": (batch, k), "boxes": (batch, k, 4), "scores": (batch, k)}

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return self.shapes[name]


@pytest.mark.parametrize("k", [7, 300])
def test_tensorrt_output_buffers_follow_the_engine(k):
    engine = _FakeEngine(k, batch=3)
    out = output_buffers(engine, engine, torch.device("cpu"))
    assert out["labels"].shape == (3, k) and out["labels"].dtype == torch.int64
    assert out["boxes"].shape == (3, k, 4) and out["scores"].dtype == torch.float32
    engine.shapes["scores"] = (-1, k)
    with pytest.raises(RuntimeError, match="unresolved shape"):
        output_buffers(engine, engine, torch.device("cpu"))


def test_stale_temporaries_only_ours(tmp_path):
    from dfine.train.state import remove_stale_temporaries

    ours = [f"last.pth.tmp.{os.getpid() + 1}", "metrics.csv.tmp.12"]
    others = ["notes.tmp.txt", "data.tmp.backup", "last.pth.tmp.12ab", "x.tmp.", "best.pth"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.tmp.5").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "dir.tmp.5"])


class _Result:
    nbytes = 10


class _Hooks:
    """A ``ResultCache`` lock and pending table that, right after the first computation's key
    stops being pending (and the lock is free again), run a second request for that key to the
    end: the window in which a second computation used to start."""

    def __init__(self, second: threading.Thread) -> None:
        self.second, self.popped, self.lock = second, False, threading.Lock()

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        if self.popped and self.second.ident is None:
            self.second.start()
            self.second.join(timeout=5)


class _Pending(dict):
    def __init__(self, hooks: _Hooks) -> None:
        super().__init__()
        self.hooks = hooks

    def pop(self, *args):
        self.hooks.popped = True
        return super().pop(*args)


def test_result_cache_never_computes_a_key_twice():
    pytest.importorskip("gradio")
    from app.results import ResultCache

    cache = ResultCache()
    calls = []

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.05)
        return _Result()

    answers = []
    second = threading.Thread(target=lambda: answers.append(cache.get(("k", "m", 1), compute)))
    hooks = _Hooks(second)
    cache._lock, cache._pending = hooks, _Pending(hooks)
    answers.append(cache.get(("k", "m", 1), compute))
    second.join(timeout=5)
    threads = [threading.Thread(target=cache.get, args=(("k", "m", 1), compute)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(calls) == 1, f"computed {len(calls)} times"
    assert sorted(cached for _, cached in answers) == [False, True]
    assert answers[0][0] is answers[1][0] and cache.misses == 1 and cache.hits == 9
    assert len(cache) == 1


def test_hf_save_is_atomic(tmp_path, monkeypatch):
    from dfine.hf import files as hf_files
    from dfine.hf import read_hf_checkpoint, save_hf_checkpoint

    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=3)
    save_hf_checkpoint(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(hf_files, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(dfine.build_model("n", num_classes=3), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files, intact
    sd, meta = read_hf_checkpoint(tmp_path)
    assert meta["num_classes"] == 3 and torch.equal(
        sd["decoder.enc_score_head.weight"], model.state_dict()["decoder.enc_score_head.weight"]
    )


def test_reg_max_is_checked_in_one_place():
    from analysis.weighting import check_parameters
    from dfine.nn.fdr import check_reg_max, weighting_function

    assert check_reg_max(32) == 32 and check_reg_max(16.0) == 16
    for bad in (7, 2, 5.5, True, float("nan"), "32"):
        with pytest.raises(ValueError, match="reg_max must be an even whole number"):
            check_reg_max(bad)
        with pytest.raises(ValueError, match="reg_max must be an even whole number"):
            weighting_function(bad, 0.5, 4.0)
        with pytest.raises(ValueError, match="reg_max must be an even whole number"):
            check_parameters(bad, 0.5, 4.0)
