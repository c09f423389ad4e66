"""``dfine benchmark --weights``: a real model (the bundled demo checkpoint, and its ONNX
export) timed instead of random-init ones; few iterations, a small sgemm for the floor."""

from __future__ import annotations

from pathlib import Path

import pytest

import dfine
from dfine.benchmark import markdown, run_benchmark
from dfine.cli import build_parser, main
from dfine.export import export_onnx
from tests.app_util import DEMO

FAST = {"warmup": 0, "iters": 1, "progress": False, "matmul_sizes": (256,)}


@pytest.fixture(scope="module")
def onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "demo.onnx"
    export_onnx(dfine.load_model(DEMO), path, check_parity=False)
    return path


def test_checkpoint_is_timed_at_its_own_size():
    rows, peak = run_benchmark(weights=DEMO, backends=["torch"], **FAST)
    assert [(r.backend, r.size, r.batch, r.input_hw) for r in rows] == [
        ("torch", "N", 1, (320, 320))
    ]
    assert rows[0].median_ms > 0 and peak > 0
    assert rows[0].floor_ms == pytest.approx(7.2 * 0.25 / peak * 1000)  # N's FLOPs at 320²
    text = markdown(rows, peak, None, 2, 1, DEMO)
    assert "320x320" in text and str(DEMO) in text and "random-init" not in text
    sized = run_benchmark(weights=DEMO, backends=["torch"], input_size=256, **FAST)[0]
    assert sized[0].input_hw == (256, 256)


def test_exported_file_runs_on_its_runtime(onnx):
    rows, _ = run_benchmark(weights=onnx, batches=[1], **FAST)
    assert [(r.backend, r.size, r.input_hw) for r in rows] == [("onnxruntime", "N", (320, 320))]
    with pytest.raises(ValueError, match="exported model: it runs on onnxruntime"):
        run_benchmark(weights=onnx, backends=["torch"], **FAST)
    with pytest.raises(ValueError, match="exported at 320x320; its input size is fixed"):
        run_benchmark(weights=onnx, input_size=640, **FAST)


def test_cli(onnx, capsys):
    args = ["benchmark", "--warmup", "0", "--iters", "1"]
    parsed = build_parser().parse_args([*args, "--weights", str(onnx), "--backend", "openvino"])
    assert parsed.weights == str(onnx) and parsed.backends == ["openvino"]
    default = build_parser().parse_args(["benchmark"])
    assert default.weights is None and default.backends is None and default.input is None
    # bad weights: one line and exit 2, before anything is timed
    assert main([*args, "--weights", str(onnx), "--backends", "torch"]) == 2
    err = capsys.readouterr().err
    assert "not torch" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--weights", "no_such_model.pth"]) == 2
    assert "no_such_model.pth" in capsys.readouterr().err


def test_time_interleaved_runs_every_call_once_per_round():
    from dfine.benchmark import time_interleaved

    order: list[str] = []
    calls = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = time_interleaved(calls, warmup=2, rounds=3)
    assert order == list("aabbcc") + list("abc") * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    order.clear()
    time_interleaved(calls, warmup=0, rounds=3, rotate=True)
    assert order == list("abc") + list("bca") + list("cab")
