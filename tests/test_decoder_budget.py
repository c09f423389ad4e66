"""Decoder depth and query budget (issue 24): ``set_decoder_budget``, ``load_model``,
``Detector`` and exports run the first K decoder layers on the top Q encoder proposals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dfine
from dfine.errors import InvalidArgumentError
from dfine.export import export_onnx, read_metadata
from tests.app_util import DEMO


@pytest.fixture(scope="module")
def demo():
    return dfine.load_model(DEMO)


@pytest.fixture(scope="module")
def images(demo):
    torch.manual_seed(0)
    return torch.rand(2, 3, *demo.config.eval_size)


def _limited(model, k=None, q=None):
    import copy

    return copy.deepcopy(model).set_decoder_budget(k, q)


def test_default_is_the_reference_budget(demo):
    cfg = demo.config.decoder
    assert (demo.decoder_layers, demo.num_queries) == (cfg.num_layers, 300)
    assert not demo.budget_limited


@pytest.mark.parametrize("deploy", [False, True])
def test_depth_k_equals_trace_layer_k_exactly(demo, images, deploy):
    model = _limited(demo)
    if deploy:
        model.deploy()
    full = model.trace(images)
    assert full.num_layers == demo.config.decoder.num_layers
    for k in range(1, full.num_layers + 1):
        model.set_decoder_budget(k)
        with torch.inference_mode():
            out = model(images)
        assert torch.equal(out["pred_boxes"], full.boxes[k - 1]), k
        assert torch.equal(out["pred_logits"], full.logits[k - 1]), k
        part = model.trace(images)  # the trace records the K layers that ran
        assert part.num_layers == k
        assert torch.equal(part.boxes, full.boxes[:k])
        assert torch.equal(part.logits, full.logits[:k])


def test_fewer_queries_keep_the_best_scoring_proposals(demo, images):
    scores = []
    hook = demo.decoder.enc_score_head.register_forward_hook(
        lambda m, i, out: scores.append(out.max(-1).values)
    )
    try:
        for q in (1, 37, 100):
            scores.clear()
            trace = _limited(demo, q=q).trace(images)
            (encoder_scores,) = scores  # [B, S]: one score per memory position
            order = encoder_scores.argsort(dim=-1, descending=True)
            assert trace.enc_topk_indices.shape == (2, q)
            assert torch.equal(trace.enc_topk_indices, order[:, :q])
            assert trace.boxes.shape[2] == q and trace.logits.shape[2] == q
    finally:
        hook.remove()


def test_budget_is_for_inference_only(demo):
    model = _limited(demo, 2, 100)
    with pytest.raises(InvalidArgumentError, match="training needs every layer"):
        model.train()
    model.set_decoder_budget()  # lifted: trainable again
    model.train()
    with pytest.raises(InvalidArgumentError, match="eval mode"):
        model.set_decoder_budget(1)
    model.set_decoder_budget()  # the full budget is allowed in train mode (a no-op)


@pytest.mark.parametrize(
    "k, q, match",
    [(0, None, "decoder_layers must be"), (4, None, "decoder_layers must be"),
     (None, 0, "num_queries must be"), (None, 301, "num_queries must be"),
     (1.5, None, "decoder_layers must be"), (None, True, "num_queries must be")],
)  # fmt: skip
def test_bad_budget_is_one_line(demo, k, q, match):
    with pytest.raises(InvalidArgumentError, match=match) as e:
        _limited(demo).set_decoder_budget(k, q)
    assert "\n" not in str(e.value)


def test_load_model_and_detector_take_the_budget(demo, images):
    model = dfine.load_model(DEMO, decoder_layers=1, num_queries=50)
    assert (model.decoder_layers, model.num_queries) == (1, 50)
    det = dfine.Detector(DEMO, decoder_layers=2, num_queries=100, threshold=0.0)
    assert (det.backend.decoder_layers, det.backend.num_queries) == (2, 100)
    assert (det.model.decoder_layers, det.model.num_queries) == (2, 100)
    det = dfine.Detector(demo, decoder_layers=1)  # a model passed in is not changed
    assert det.model.decoder_layers == 1 and demo.decoder_layers == 3


def _nodes(path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def test_onnx_export_records_budget_is_smaller_and_matches_the_trace(demo, images, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    full = demo.trace(images)
    full_path = export_onnx(demo, tmp_path / "full.onnx", postprocess=False, check_parity=False)
    meta = read_metadata(full_path.path)
    assert (meta["decoder_layers"], meta["num_queries"]) == (3, 300)
    counts = {3: _nodes(full_path.path)}
    for k in (1, 2):
        path = tmp_path / f"k{k}.onnx"
        export_onnx(demo, path, postprocess=False, check_parity=False, decoder_layers=k)
        assert read_metadata(path)["decoder_layers"] == k
        counts[k] = _nodes(path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, boxes = session.run(None, {"images": images.numpy()})
        np.testing.assert_allclose(boxes, full.boxes[k - 1].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(logits, full.logits[k - 1].numpy(), atol=1e-4, rtol=0)
    assert counts[1] < counts[2] < counts[3]
    path = tmp_path / "q.onnx"
    export_onnx(demo, path, check_parity=False, decoder_layers=1, num_queries=100, num_top=300)
    meta = read_metadata(path)
    assert (meta["decoder_layers"], meta["num_queries"]) == (1, 100)
    det = dfine.Detector(path, threshold=0.0)
    assert (det.backend.decoder_layers, det.backend.num_queries) == (1, 100)
    with pytest.raises(InvalidArgumentError, match="exported with decoder_layers=1, not 2"):
        dfine.Detector(path, decoder_layers=2)


def test_openvino_ir_records_the_budget(tmp_path):
    pytest.importorskip("openvino")
    from dfine.quantize import export_reduced

    path = tmp_path / "k1.xml"
    export_reduced(DEMO, path, precision="f32", decoder_layers=1, num_queries=64, progress=False)
    meta = read_metadata(path)
    assert (meta["decoder_layers"], meta["num_queries"]) == (1, 64)
    det = dfine.Detector(path, backend="openvino")
    assert (det.backend.decoder_layers, det.backend.num_queries) == (1, 64)


def test_onnxruntime_detector_with_a_budget_equals_torch(demo, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DFINE_HOME", str(tmp_path))  # the cached export lands here
    from dfine.resources import example_photos

    photo = example_photos()[0]
    kw = {"threshold": 0.3, "decoder_layers": 1, "num_queries": 100}
    a = dfine.Detector(DEMO, backend="onnxruntime", **kw)(photo)
    b = dfine.Detector(DEMO, backend="torch", **kw)(photo)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


# --------------------------------------------------------------------------- the sweep
def test_pareto_front_on_constructed_numbers():
    from dfine.budget import pareto_front

    latency = [10.0, 20.0, 15.0, 30.0, 20.0, 10.0]
    ap = [0.30, 0.50, 0.30, 0.50, 0.45, 0.20]
    # 0: fastest with the best AP among the fastest; 1: best AP, fastest such;
    # 2: dominated by 0 (slower, equal AP); 3: dominated by 1; 4: dominated by 1; 5: by 0
    assert pareto_front(latency, ap) == [True, True, False, False, False, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties dominate neither
    assert pareto_front([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]) == [True, True, True]
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    from dfine.data import make_synthetic_dataset
    from dfine.guard import load_val

    root = tmp_path_factory.mktemp("budget_val")
    make_synthetic_dataset(root, num_train=0, num_val=3, image_size=(320, 320), seed=5,
                           photo_fraction=0.0, workers=0)  # fmt: skip
    return load_val(root)


def test_sweep_table_on_a_tiny_split(tiny_val):
    from dfine.budget import BudgetSweep, pareto_front, sweep_budgets

    sweep = sweep_budgets(DEMO, tiny_val, layers=(1, 3), queries=(50, 300), warmup=1,
                          progress=False)  # fmt: skip
    assert sweep.images == 3 and sweep.input_size == (320, 320)
    keys = [(p.runtime, p.decoder_layers, p.num_queries) for p in sweep.points]
    assert keys == [("torch", 1, 50), ("torch", 1, 300), ("torch", 3, 50), ("torch", 3, 300)]
    for p in sweep.points:
        assert 0.0 <= p.AP50 <= 1.0 and 0.0 <= p.AP <= p.AP50 + 1e-9 and p.median_ms > 0
    lat, ap = [p.median_ms for p in sweep.points], [p.AP for p in sweep.points]
    assert [p.pareto for p in sweep.points] == pareto_front(lat, ap)
    assert any(p.pareto for p in sweep.points)
    table = sweep.markdown().splitlines()
    assert len(table) == 2 + 4 and table[0].count("|") == 9
    assert BudgetSweep.from_dict(sweep.to_dict()) == sweep


def test_sweep_at_full_budget_equals_plain_evaluation(tiny_val):
    from dfine.budget import sweep_budgets
    from dfine.guard import evaluate

    sweep = sweep_budgets(DEMO, tiny_val, layers=(3,), queries=(300,), warmup=0,
                          progress=False)  # fmt: skip
    det = dfine.Detector(DEMO, threshold=0.0)
    m = evaluate(det.backend.detect, tiny_val, (320, 320), progress=False)
    assert abs(sweep.points[0].AP - m["AP"]) <= 1e-9
    with pytest.raises(InvalidArgumentError, match="decoder_layers must be"):
        sweep_budgets(DEMO, tiny_val, layers=(4,), progress=False)


def test_benchmark_sweeps_the_budget():
    from dfine.benchmark import markdown, run_benchmark
    from dfine.cli import build_parser

    args = build_parser().parse_args(
        ["benchmark", "--decoder-layers", "1", "3", "--num-queries", "50", "300"]
    )
    assert (args.decoder_layers, args.num_queries) == ([1, 3], [50, 300])
    rows, peak = run_benchmark(
        weights=DEMO, backends=["torch"], warmup=0, iters=1, progress=False,
        decoder_layers=args.decoder_layers, num_queries=args.num_queries, matmul_sizes=(64,),
    )  # fmt: skip
    assert [r.budget for r in rows] == [(1, 50), (1, 300), (3, 50), (3, 300)]
    table = [line for line in markdown(rows, peak, None, 2, 1, DEMO).splitlines() if "|" in line]
    assert "| size | K | Q |" in table[0]
    assert [tuple(c.strip() for c in r.split("|")[3:5]) for r in table[2:]] == [
        ("1", "50"), ("1", "300"), ("3", "50"), ("3", "300")
    ]  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="decoder_layers must be"):
        run_benchmark(weights=DEMO, backends=["torch"], decoder_layers=[4], progress=False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--decoder-layers", "0"])


def test_cli_predict_and_export_take_the_budget(tmp_path):
    from dfine.cli import main
    from dfine.resources import example_photos

    out = tmp_path / "k1.onnx"
    assert main(["export", str(DEMO), "--out", str(out), "--no-check", "--decoder-layers", "1",
                 "--num-queries", "64"]) == 0  # fmt: skip
    assert (read_metadata(out)["decoder_layers"], read_metadata(out)["num_queries"]) == (1, 64)
    photo = str(example_photos()[0])
    assert main(["predict", photo, "--out", str(tmp_path / "p"), "--decoder-layers", "2",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["predict", photo, "--out", str(tmp_path / "p"), "--decoder-layers", "9"]) == 2


def test_report_holds_the_sweep_table_and_figure(tiny_val, tmp_path):
    from analysis.evaluation import EvalSettings, evaluate_dataset
    from analysis.evaluation.figures import accuracy_latency_figure
    from analysis.evaluation.html import write_report
    from dfine.budget import sweep_budgets

    sweep = sweep_budgets(DEMO, tiny_val, layers=(1, 3), queries=(300,), warmup=0,
                          progress=False)  # fmt: skip
    report = evaluate_dataset(DEMO, tiny_val.source, settings=EvalSettings(calibration=False),
                              cache=False)  # fmt: skip
    paths = write_report(report, tmp_path / "r", static=False, budget=sweep)
    import json

    data = json.loads(paths.metrics.read_text())["budget_sweep"]
    assert [(p["decoder_layers"], p["num_queries"]) for p in data["points"]] == [(1, 300), (3, 300)]
    page = paths.index.read_text()
    assert "Accuracy vs latency" in page and "id='accuracy_latency'" in page
    fig = accuracy_latency_figure(sweep)
    stars = [s for t in fig.data if t.name == "torch" for s in t.marker.symbol]
    assert stars == ["star" if p.pareto else "circle" for p in sweep.points]
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert list(front.x) == sorted(p.median_ms for p in sweep.points if p.pareto)


def test_cli_val_takes_the_budget_and_refuses_it_with_a_report(tiny_val, tmp_path, capsys):
    from dfine.cli import main

    base = ["val", "-w", str(DEMO), "-d", tiny_val.source, "--workers", "0", "-q"]
    assert main([*base, "--decoder-layers", "1", "--num-queries", "100", "--json"]) == 0
    assert "AP50" in capsys.readouterr().out
    assert main([*base, "--report", str(tmp_path / "r"), "--decoder-layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "drop --decoder-layers" in err and err.count("\n") == 1
