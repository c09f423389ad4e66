"""INT8 of the decoder layers with FDR in f32 (``reduced_parts=INT8_DECODER_PARTS``): what the
export records, which nodes are quantized (IR) and which run INT8 (the compiled runtime
model), the f32 FDR tail, grid_sample's f32 inputs, and the guard's refusal."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino")
if importlib.util.find_spec("nncf") is None:  # not imported here: it sets the logger class
    pytest.skip("INT8 needs nncf (pip install nncf)", allow_module_level=True)

from dfine.backends.openvino import OpenVINOBackend
from dfine.cli import main
from dfine.export import read_metadata
from dfine.guard import PrecisionGuardError
from dfine.precision import (
    FDR_PARTS,
    HEAD_PARTS,
    INT8_DECODER_PARTS,
    compile_plan,
    graph_parts,
    part_of,
)
from dfine.predict import Detector
from dfine.quantize import export_reduced, int8_ignored_scope

# CPU plugin layer types that compute on floats (a quantized one reports i8/u8)
COMPUTE = {"FullyConnected", "MatMul", "Convolution", "Eltwise", "Softmax", "Reduce", "MVN"}


@pytest.fixture(scope="module")
def int8_decoder(tmp_path_factory, demo_onnx, demo_val20):
    """The decoder variant through the CLI: calibrated on the 20 images, guarded on them."""
    out = tmp_path_factory.mktemp("int8d") / "demo_int8d.xml"
    code = main(
        [
            "export", str(demo_onnx), "--format", "openvino", "--precision", "int8",
            "--calibration", str(demo_val20), "--calibration-size", "20", "--val", str(demo_val20),
            "--reduce", "backbone", "encoder", "decoder_layers", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_compile_plan_keeps_fdr_f32():
    assert compile_plan("int8", HEAD_PARTS) == ("split", "bf16")
    assert compile_plan("int8", INT8_DECODER_PARTS) == ("split", "bf16")
    assert compile_plan("int8", ("decoder_layers",)) == ("none", "f32")
    assert compile_plan("bf16", HEAD_PARTS) == ("split", "bf16")
    # a bf16 decoder is only a hint on the whole graph (FDR included): no split
    assert compile_plan("bf16", INT8_DECODER_PARTS) == ("none", "bf16")


def test_export_records_the_parts_and_the_guard(int8_decoder):
    meta = read_metadata(int8_decoder)
    assert meta["reduced_parts"] == list(INT8_DECODER_PARTS)
    assert meta["mixed"] == "split" and meta["head_precision"] == "bf16"
    assert meta["precision"] == "int8" and "backbone+encoder+decoder_layers" in meta["method"]
    guard = meta["guard"]
    assert guard["ok"] and guard["mode"] == "val" and guard["images"] == 20
    assert 100 * (guard["reference"]["AP"] - guard["reduced"]["AP"]) <= 0.5
    assert [a["reduced_parts"] for a in meta["attempts"]] == [list(INT8_DECODER_PARTS)]


def _fake_quantized(model) -> dict[str, set[str]]:
    """``consumer name -> {input indices}`` of the operations fed by a FakeQuantize."""
    fed: dict[str, set[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        for target in op.output(0).get_target_inputs():
            fed.setdefault(target.get_node().get_friendly_name(), set()).add(target.get_index())
    return fed


def test_ir_quantizes_decoder_linears_only(int8_decoder, demo_onnx):
    import openvino as ov

    model = ov.Core().read_model(str(int8_decoder))
    parts = graph_parts(model)
    fed = _fake_quantized(model)
    by_part: dict[str, int] = {}
    for name in fed:
        by_part[parts[name]] = by_part.get(parts[name], 0) + 1
    assert set(by_part) == set(INT8_DECODER_PARTS), by_part
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    layers = {n.split("/")[3] for n in fed if parts[n] == "decoder_layers"}
    assert layers == {"layers.0", "layers.1", "layers.2"}
    for layer in sorted(layers):  # every linear of the layer has an INT8 weight
        for linear in ("sampling_offsets", "attention_weights", "linear1", "linear2", "gate"):
            assert any(f"{layer}/" in n and f"/{linear}/" in n for n in fed), (layer, linear)
    # the self-attention's activation products and grid_sample's inputs are not quantized
    base = ov.Core().read_model(str(demo_onnx))
    base_parts = graph_parts(base)
    ignored = int8_ignored_scope(base, INT8_DECODER_PARTS)
    act = {n for n in ignored if base_parts[n] == "decoder_layers"}
    assert len(act) == 2 * 3 and all("self_attn/MatMul" in n for n in act), act
    assert act <= set(ops) and not act & set(fed)
    for op in ops.values():
        if op.get_type_name() == "GridSample":
            for i in op.inputs():
                src = i.get_source_output().get_node()
                while src.get_type_name() in ("Reshape", "VariadicSplit", "Transpose", "Concat"):
                    src = src.input_value(0).get_node()
                assert src.get_type_name() != "FakeQuantize", op.get_friendly_name()


def test_runtime_runs_decoder_int8_and_fdr_f32(int8_decoder):
    backend = OpenVINOBackend(int8_decoder)
    assert backend.mixed == "split" and len(backend.stages) == 2
    runtime: dict[str, dict[str, int]] = {}
    for op in backend.stages[1].get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        out = info["outputPrecisions"].astype(str)
        if kind not in COMPUTE or not out.startswith(("f", "bf", "i8", "u8")):
            continue
        part = part_of(info["originalLayersNames"].astype(str).split(",")[0])
        precision = info["runtimePrecision"].astype(str)
        runtime.setdefault(part, {}).setdefault(precision, 0)
        runtime[part][precision] += 1
    quantized = sum(runtime["decoder_layers"].get(p, 0) for p in ("i8", "u8"))
    assert quantized >= 3 * 5, runtime["decoder_layers"]
    for part in FDR_PARTS:
        if part in runtime:
            assert set(runtime[part]) == {"f32"}, (part, runtime[part])
    assert set(runtime["distribution_heads"]) == {"f32"}


def test_detections_follow_f32(int8_decoder, demo_onnx, demo_val20):
    image = sorted((demo_val20 / "val").glob("*.jpg"))[0]
    f32 = Detector(demo_onnx, backend="openvino", precision="f32", threshold=0.3)(image)
    int8 = Detector(int8_decoder, backend="openvino", threshold=0.3)(image)
    assert len(f32) > 0 and abs(len(int8) - len(f32)) <= 1
    np.testing.assert_allclose(int8.boxes[:1], f32.boxes[:1], atol=3.0)


def test_guard_refusal_writes_nothing(tmp_path, demo_onnx, demo_val20):
    """Calibrated on one black image, the INT8 ranges clip every real activation: the guard
    refuses the decoder variant with one line and nothing is written."""
    calib = tmp_path / "black"
    calib.mkdir()
    Image.new("RGB", (320, 320)).save(calib / "black.jpg")
    out = tmp_path / "refused.xml"
    with pytest.raises(PrecisionGuardError) as err:
        export_reduced(
            demo_onnx, out, precision="int8", calibration=calib, calibration_size=1,
            val=demo_val20, val_size=8, reduced_parts=INT8_DECODER_PARTS, progress=False,
        )  # fmt: skip
    message = str(err.value)
    assert "\n" not in message and message.startswith("accuracy guard refused the int8 export")
    assert not out.exists() and not out.with_suffix(".bin").exists()
    assert not list(tmp_path.glob("*.xml"))


def test_importing_nncf_leaves_the_process_logger_class():
    """NNCF sets its logger class when imported; kaleido's logistro, imported earlier, then
    makes loggers without ``debug2`` and a later PNG export fails (seen in CI's phase 2)."""
    import logging

    from dfine.quantize import _import_nncf

    class Mine(logging.Logger):
        pass

    before = logging.getLoggerClass()
    logging.setLoggerClass(Mine)
    try:
        _import_nncf()
        assert logging.getLoggerClass() is Mine
    finally:
        logging.setLoggerClass(before)
