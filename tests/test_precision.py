"""Reduced precision (bf16, INT8) of the demo model: graph parts, the decoder kept in exact
f32, the accuracy guard, metadata, Detector(precision=...) and the CLI round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from dfine.cli import main
from dfine.export import read_metadata
from dfine.guard import (
    PrecisionGuardError,
    drift,
    guard_drift,
)
from dfine.postprocess import BatchDetections
from dfine.precision import PARTS, graph_parts, part_of, split_model
from dfine.predict import Detector
from tests.app_util import DEMO


@pytest.fixture(scope="module")
def int8_xml(tmp_path_factory, demo_onnx, demo_val20):
    """INT8 through the CLI: calibrated on 8 images, guarded on the 20 val images."""
    out = tmp_path_factory.mktemp("int8") / "demo_int8.xml"
    code = main(
        [
            "export", str(demo_onnx), "--format", "openvino", "--precision", "int8",
            "--calibration", str(demo_val20), "--calibration-size", "8", "--val", str(demo_val20),
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def ov_model(demo_onnx):
    import openvino as ov

    return ov.Core().read_model(str(demo_onnx))


def test_every_node_has_a_part(ov_model):
    parts = graph_parts(ov_model)
    assert set(parts.values()) == set(PARTS)
    assert part_of("/model/decoder/dec_bbox_head.2/layers.0/MatMul") == "distribution_heads"
    assert part_of("/model/decoder/Softmax_2") == "fdr_math"
    assert part_of("/model/decoder/lqe_layers.2/Softmax") == "score_lqe"
    assert part_of("/model/backbone/stem/Pad") == "backbone"
    assert part_of("Constant_12") is None


def test_split_is_exact_and_keeps_the_decoder_f32(ov_model, demo_onnx):
    """Head + tail in f32 equal the whole graph bit for bit; with the head at bf16 the tail
    (every FDR operation) still runs f32 only."""
    from dfine.backends.openvino import shared_core
    from dfine.precision import runtime_precisions

    head, tail, feats = split_model(ov_model)
    core = shared_core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    full = core.compile_model(ov_model, "CPU", cfg)
    h, t = core.compile_model(head, "CPU", cfg), core.compile_model(tail, "CPU", cfg)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 320, 320).numpy()
    sizes = np.array([[640, 480]])
    want = full({"images": x, "orig_target_sizes": sizes}).to_tuple()
    f = h({"images": x}).to_tuple()
    got = t({**dict(zip(feats, f)), "images": x, "orig_target_sizes": sizes}).to_tuple()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    from dfine.backends.openvino import OpenVINOBackend

    backend = OpenVINOBackend(demo_onnx, precision="bf16")
    tail_counts = runtime_precisions(backend.stages[1])
    assert all("bf16" not in c for c in tail_counts.values()), tail_counts
    head_counts = runtime_precisions(backend.stages[0])
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip(
            "this CPU has no bf16 units: OpenVINO runs a bf16 hint in f32 (the tail's f32 is checked)"
        )
    assert head_counts["backbone"].get("bf16", 0) > 0, head_counts


def test_drift_is_query_order_aware():
    torch.manual_seed(0)
    boxes = torch.rand(1, 5, 2) * 100
    boxes = torch.cat([boxes, boxes + 20], -1)
    ref = BatchDetections(boxes, torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1]]), torch.arange(5)[None])
    perm = torch.tensor([3, 1, 4, 0, 2])
    shuffled = BatchDetections(ref.boxes[:, perm], ref.scores[:, perm], ref.labels[:, perm])
    box, score, lost, total = drift(ref, shuffled, torch.tensor([200, 100]))
    assert total == 4 and lost == 0 and max(box) == 0 and max(score) == 0
    moved = BatchDetections(ref.boxes + 2.0, ref.scores - 0.05, ref.labels)
    box, score, lost, total = drift(ref, moved, torch.tensor([200, 100]))
    assert np.allclose(box, 0.01) and np.allclose(score, 0.05, atol=1e-6)


def test_drift_guard_bounds():
    torch.manual_seed(0)
    b = torch.rand(1, 4, 2) * 100
    dets = BatchDetections(
        torch.cat([b, b + 60], -1), torch.full((1, 4), 0.9), torch.zeros(1, 4, dtype=torch.long)
    )
    inputs = [(torch.zeros(1, 3, 32, 32), torch.tensor([[200, 200]]))]
    ok = guard_drift(lambda x, s: dets, lambda x, s: dets, inputs)
    assert ok.ok and ok.reduced["box_p95"] == 0
    far = BatchDetections(dets.boxes + 6, dets.scores, dets.labels)  # IoU 0.68: paired, drift 0.03
    bad = guard_drift(lambda x, s: dets, lambda x, s: far, inputs)
    assert not bad.ok
    with pytest.raises(
        PrecisionGuardError, match=r"accuracy guard refused .* box p95 0\.0300 .* lost 0\.0%"
    ):
        bad.check()


def test_int8_export_is_guarded_and_recorded(int8_xml):
    meta = read_metadata(int8_xml)
    assert meta["precision"] == "int8" and meta["format"] == "openvino"
    assert meta["reduced_parts"] == ["backbone", "encoder"] and meta["mixed"] == "split"
    assert meta["calibration"]["images"] == 8 and "NNCF" in meta["method"]
    guard = meta["guard"]
    assert guard["mode"] == "val" and guard["images"] == 20 and guard["ok"]
    drop = 100 * (guard["reference"]["AP"] - guard["reduced"]["AP"])
    assert drop <= guard["bound"]["max_ap_drop"] == 0.5
    assert set(guard["reduced"]) == {"AP", "AP50", "AP75"}
    assert meta["num_classes"] == 8 and meta["input_size"] == (320, 320)


def test_bf16_export_keeps_ap(tmp_path, demo_onnx, demo_val20):
    from dfine.quantize import export_reduced

    out = tmp_path / "demo_bf16.xml"
    result = export_reduced(demo_onnx, out, precision="bf16", val=demo_val20, progress=False)
    assert result.guard.ok and result.guard.ap_drop <= 0.5
    assert "accuracy guard [OK]" in result.report()
    meta = read_metadata(out)
    assert meta["precision"] == "bf16" and meta["guard"]["mode"] == "val"
    det = Detector(out, backend="openvino", threshold=0.3)
    assert det.backend.precision == "bf16" and len(det.backend.stages) == 2


def test_guard_refuses_broken_quantization(tmp_path, demo_onnx, demo_val20):
    """INT8 of the whole graph, distribution heads and integral included, calibrated on two
    flat grey images (activation ranges that fit no real image): the guard refuses it with
    one line and writes nothing. (Calibrated on real images, whole-graph INT8 of the demo
    model loses more than 0.5 AP on an AVX2 CPU but not on an AVX-512 VNNI one, so a test of
    the refusal needs a quantization broken on every CPU.)"""
    from PIL import Image

    from dfine.quantize import export_reduced

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, grey in enumerate((96, 160)):
        Image.new("RGB", (320, 320), (grey, grey, grey)).save(flat / f"{i}.png")
    out = tmp_path / "broken.xml"
    with pytest.raises(PrecisionGuardError) as err:
        export_reduced(
            demo_onnx, out, precision="int8", calibration=flat, calibration_size=2,
            val=demo_val20, val_size=8, reduced_parts=PARTS, max_ap_drop=0.5, progress=False,
        )  # fmt: skip
    message = str(err.value)
    assert "\n" not in message and message.startswith("accuracy guard refused the int8 export")
    assert "drop" in message and "bound 0.5" in message
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_detector_precision_per_runtime(demo_onnx, int8_xml, demo_val20):
    image = sorted((demo_val20 / "val").glob("*.jpg"))[0]
    f32 = Detector(demo_onnx, backend="openvino", precision="f32", threshold=0.3)(image)
    bf16 = Detector(demo_onnx, backend="openvino", precision="bf16", threshold=0.3)(image)
    int8 = Detector(int8_xml, backend="openvino", threshold=0.3)(image)
    ort = Detector(demo_onnx, backend="onnxruntime", precision="f32", threshold=0.3)(image)
    assert len(f32) > 0 and len(ort) == len(f32)
    for dets in (bf16, int8):
        assert abs(len(dets) - len(f32)) <= 1
        np.testing.assert_allclose(dets.boxes[:1], f32.boxes[:1], atol=3.0)
    with pytest.raises(ValueError, match=r"no bf16 CPU path; use backend='openvino'"):
        Detector(demo_onnx, backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="needs a calibrated model"):
        Detector(demo_onnx, backend="openvino", precision="int8")
    with pytest.raises(ValueError, match="exported with precision int8"):
        Detector(int8_xml, backend="openvino", precision="bf16")
    with pytest.raises(ValueError, match="torch backend runs f32"):
        Detector(DEMO, backend="torch", precision="bf16")


def test_cli_predict_and_val_on_the_int8_file(tmp_path, int8_xml, demo_val20, capsys):
    out = tmp_path / "pred"
    images = sorted((demo_val20 / "val").glob("*.jpg"))[:2]
    assert (
        main(["predict", *map(str, images), "--weights", str(int8_xml), "--out", str(out), "-q"])
        == 0
    )
    record = json.loads((out / f"{images[0].stem}.json").read_text())
    assert record["detections"] and record["speed"]["inference"] > 0
    capsys.readouterr()
    assert main(["val", "--weights", str(int8_xml), "--data", str(demo_val20), "--json", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    guard = read_metadata(int8_xml)["guard"]
    assert metrics["AP"] == pytest.approx(guard["reduced"]["AP"], abs=1e-6)


def test_cli_val_at_a_precision_is_validate_at_that_precision(demo_onnx, demo_val20, capsys):
    """``dfine val --precision`` goes through :func:`dfine.train.run.validate` (the one
    evaluation path, batched) and scores what the guard's image-by-image evaluation does."""
    from dfine.backends.openvino import OpenVINOBackend
    from dfine.guard import evaluate, load_val
    from dfine.train.run import validate

    args = ["val", "--weights", str(demo_onnx), "--data", str(demo_val20), "--json", "-q"]
    assert main([*args, "--precision", "bf16"]) == 2  # an .onnx runs on ONNX Runtime: f32
    assert "use backend='openvino' with precision='bf16'" in capsys.readouterr().err
    args += ["--backend", "openvino"]
    assert main([*args, "--precision", "bf16"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    bf16 = OpenVINOBackend(demo_onnx, precision="bf16")
    guard = evaluate(bf16.detect, load_val(demo_val20), bf16.input_size, progress=False)
    assert metrics["AP"] == pytest.approx(guard["AP"], abs=1e-6) and metrics["AP"] > 0
    assert main([*args, "--precision", "int8"]) == 2
    assert "needs a calibrated model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="torch backend runs f32"):
        validate(DEMO, demo_val20, backend="torch", precision="bf16", progress=False)


def test_cli_refuses_bad_precision_requests(demo_onnx, tmp_path, capsys):
    code = main(
        [
            "export",
            str(demo_onnx),
            "--format",
            "openvino",
            "--precision",
            "int8",
            "--out",
            str(tmp_path / "x.xml"),
        ]
    )
    assert code == 2
    assert "needs --calibration" in capsys.readouterr().err
    code = main(["export", str(demo_onnx), "--format", "onnx", "--precision", "bf16"])
    assert code == 2
    assert "bf16 is a runtime choice" in capsys.readouterr().err


def test_benchmark_runs_precisions_and_throughput(tmp_path):
    import dfine
    from dfine.benchmark import _runner
    from dfine.cli import build_parser

    model = dfine.build_model("n").eval()
    x, sizes = torch.rand(2, 3, 256, 256), torch.tensor([[256, 256]] * 2)
    latency = _runner("openvino", model, (256, 256), 2, tmp_path, "bf16")
    assert latency(x, sizes).boxes.shape == (2, 300, 4)
    many = _runner("openvino", model, (256, 256), 2, tmp_path, "bf16", throughput=True)
    out = many([(x, sizes)] * 3)
    assert len(out) == 3 and all(o.scores.shape == (2, 300) for o in out)
    with pytest.raises(ValueError, match="openvino only"):
        _runner("onnxruntime", model, (256, 256), 2, tmp_path, "bf16")
    args = build_parser().parse_args(["benchmark", "--precision", "f32", "int8", "--throughput"])
    assert args.precision == ["f32", "int8"] and args.throughput


def test_app_model_tab_measures_precision_cost(tmp_path):
    pytest.importorskip("gradio")
    from app.models import ModelStore
    from app.state import AppState
    from app.tabs.model import precision_cost

    state = AppState(ModelStore(DEMO))
    key = state.store.get(None).entry.key
    text = precision_cost(state, key, progress=None)
    lines = text.splitlines()
    assert lines[2].startswith("| f32 |") and "exact (reference)" in lines[2]
    assert lines[3].startswith("| bf16 |") and "box p95" in lines[3] and "x |" in lines[3]
