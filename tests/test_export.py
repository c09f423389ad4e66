"""ONNX export, ONNX Runtime and OpenVINO backends, TensorRT where a GPU exists."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import dfine
from dfine.backends import create_backend
from dfine.errors import InvalidArgumentError
from dfine.export import export_onnx, read_metadata, sample_images
from dfine.parity import compare_detections, compare_outputs
from tests.conftest import reference_file

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt():
    return reference_file("dfine_n_perturbed_random_official.pth")


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory, ckpt):
    path = tmp_path_factory.mktemp("onnx") / "n_dynamic.onnx"
    result = export_onnx(ckpt, path)
    assert result.parity is not None and result.parity.ok(), result.report()
    return path


@pytest.fixture(scope="module")
def torch_backend(ckpt):
    return create_backend("torch", ckpt)


def test_dynamic_batch_runs_any_batch(dynamic_onnx, torch_backend):
    ort = create_backend("onnxruntime", dynamic_onnx, threads=2)
    for b in (1, 3):
        x, sizes = sample_images((640, 640), 2)
        x, sizes = x.repeat(2, 1, 1, 1)[:b], sizes.repeat(2, 1)[:b]
        got = ort.detect(x, sizes)
        assert got.labels.shape == (b, 300) and got.boxes.shape == (b, 300, 4)
        report = compare_detections(got, torch_backend.detect(x, sizes), sizes)
        assert report.ok(logit_tol=1e-4, box_tol=1e-4, max_swaps=3), report.summary()


def test_metadata(dynamic_onnx):
    meta = read_metadata(dynamic_onnx)
    assert meta["input_size"] == (640, 640) and meta["num_classes"] == 80
    assert meta["class_names"][0] == "person" and meta["postprocess"] and meta["batch"] == "dynamic"


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_export(tmp_path, ckpt, batch):
    result = export_onnx(ckpt, tmp_path / f"b{batch}.onnx", batch=batch, size=(320, 480))
    assert result.parity.ok(), result.report()
    assert result.parity_batch == batch
    ort = create_backend("onnxruntime", result.path)
    assert ort.input_size == (320, 480)
    x = torch.rand(batch + 1, 3, 320, 480)
    with pytest.raises(Exception, match=r"(?i)dimension|shape|index"):
        ort.detect(x, torch.tensor([[480, 320]] * (batch + 1)))


def test_raw_outputs_export_matches_model(tmp_path, ckpt):
    result = export_onnx(ckpt, tmp_path / "raw.onnx", postprocess=False)
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x, _ = sample_images((640, 640), 2)
    logits, boxes = session.run(None, {"images": x.numpy()})
    model = dfine.load_model(ckpt)
    with torch.inference_mode():
        out = model(x)
    report = compare_outputs(
        torch.from_numpy(logits), torch.from_numpy(boxes), out["pred_logits"], out["pred_boxes"]
    )
    assert report.ok(), report.summary()


def test_openvino_backend(dynamic_onnx, torch_backend):
    pytest.importorskip("openvino")
    ov = create_backend("openvino", dynamic_onnx, threads=2)
    x, sizes = sample_images((640, 640), 2)
    report = compare_detections(ov.detect(x, sizes), torch_backend.detect(x, sizes), sizes)
    assert report.ok(logit_tol=1e-4, box_tol=1e-4, max_swaps=3), report.summary()
    with pytest.raises(ValueError, match="precision"):
        create_backend("openvino", dynamic_onnx, precision="int3")


def test_detector_on_onnx_and_from_checkpoint(dynamic_onnx, ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
    example = "assets/examples/coffee.jpg"
    ref = dfine.Detector(ckpt, threshold=0.005)(example)
    for det in (
        dfine.Detector(dynamic_onnx, backend="onnxruntime", threshold=0.005),
        dfine.Detector(ckpt, backend="onnxruntime", threshold=0.005),  # exported and cached
    ):
        got = det(example)
        np.testing.assert_allclose(np.sort(got.scores), np.sort(ref.scores), atol=1e-4)
        assert got.image_size == ref.image_size
        with pytest.raises(InvalidArgumentError, match="needs the torch backend"):
            det.trace(example)  # a user's mistake: one line, not an AttributeError
    assert list((tmp_path / "home" / "backends").glob("*.onnx"))


def test_export_rejects_bad_options(tmp_path, ckpt):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(ckpt, tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match="batch"):
        export_onnx(ckpt, tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(ckpt, tmp_path / "x.onnx", size=(100, 100))


def test_missing_backend_package_is_named(monkeypatch, dynamic_onnx):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("no openvino")
        return real_import(name, *args, **kwargs)

    import dfine.backends.openvino as ov_backend

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(ov_backend, "_CORE", [])  # the process's Core, if an earlier test made it
    with pytest.raises(ImportError, match="pip install openvino"):
        create_backend("openvino", dynamic_onnx)


def test_cli_export(tmp_path, ckpt, capsys):
    from dfine.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpt), "--batch", "2", "--size", "320", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnx.checker passed" in text and "[OK]" in text and out.exists()
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), "--batch", "zero"])


needs_trt = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is None,
    reason="TensorRT tests need a CUDA GPU and the tensorrt package (none on this machine)",
)


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_backend(dynamic_onnx, ckpt, precision):
    trt = create_backend("tensorrt", ckpt, precision=precision)
    reference = create_backend("torch", ckpt, device="cuda:0")
    x, sizes = sample_images((640, 640), 2)
    report = compare_detections(trt.detect(x, sizes), reference.detect(x, sizes), sizes)
    tol = (1e-4, 1e-4) if precision == "fp32" else (0.02, 0.01)
    assert report.ok(logit_tol=tol[0], box_tol=tol[1], max_swaps=10), report.summary()
    if precision == "fp16":
        assert trt.guard_report


def test_tensorrt_without_gpu_is_a_clear_error(dynamic_onnx):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises((ImportError, RuntimeError), match=r"tensorrt|CUDA"):
        create_backend("tensorrt", dynamic_onnx)
