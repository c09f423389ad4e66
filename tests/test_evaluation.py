"""Dataset-scale analysis (analysis.evaluation): per-stage AP, calibration, confusion matrix,
best-F1 thresholds, matching — on constructed cases with known answers, and on the demo model
over a small seeded synthetic split (the last stage must score exactly as ``dfine val``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.evaluation import EvalSettings, build_report, evaluate_dataset
from analysis.evaluation.calibration import edge_calibration, score_calibration
from analysis.evaluation.collect import image_results, stage_names
from analysis.evaluation.errors import best_f1, confusion_matrix, image_errors
from analysis.evaluation.matching import greedy_match, iou_matrix
from dfine.nn.decoder import DecoderTrace
from tests.app_util import DEMO


# ------------------------------------------------------------------------------ matching
def test_greedy_match_takes_highest_score_first_and_one_to_one():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [21, 21, 30, 30], [50, 50, 60, 60]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    gt_of, iou = greedy_match(det, scores, np.zeros(4), gt, np.zeros(2), 0.5)
    # the 0.9 detection takes gt 0 although the 0.5 one fits it better; the 0.5 one is left
    assert gt_of.tolist() == [-1, 0, 1, -1]
    assert iou[1] == pytest.approx(0.9) and iou[0] == 0
    gt_of, _ = greedy_match(det, scores, np.array([1, 1, 0, 0]), gt, np.zeros(2), 0.5)
    assert gt_of.tolist() == [-1, -1, 1, -1]  # same class only
    gt_of, _ = greedy_match(
        det, scores, np.array([1, 1, 0, 0]), gt, np.zeros(2), 0.5, same_class=False
    )
    assert gt_of.tolist() == [-1, 0, 1, -1]
    assert iou_matrix(det, gt).shape == (4, 2)


# ------------------------------------------------------------------------------ per stage
def _hand_built_trace(shifts: list[float], own_right: list[bool]) -> tuple[DecoderTrace, dict]:
    """One 100x100 image with two ground-truth boxes; S = len(shifts) stages (encoder,
    pre-head, layers). Stage s's boxes are the ground truth moved right by shifts[s] * width;
    its own scores name the right class when own_right[s]; the final layer's always do."""
    gt = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])  # cxcywh normalised
    labels = torch.tensor([0, 1])
    num_q, num_c, reg = 6, 2, 4

    def boxes(shift: float) -> torch.Tensor:
        b = torch.full((1, num_q, 4), 0.05)
        b[0, :, :2] = 0.9  # unused queries: a small box in a corner
        b[0, :2] = gt.clone()
        b[0, :2, 0] += shift * gt[:, 2]
        return b

    def logits(right: bool) -> torch.Tensor:
        lg = torch.full((1, num_q, num_c), -8.0)
        lg[0, 0, 0 if right else 1] = 4.0
        lg[0, 1, 1 if right else 0] = 3.0
        return lg

    stages = [boxes(s) for s in shifts]
    scores = [logits(r) for r in own_right]
    num_layers = len(shifts) - 2
    trace = DecoderTrace(
        enc_topk_indices=torch.zeros(1, num_q, dtype=torch.long),
        enc_topk_logits=scores[0],
        init_boxes=stages[0],
        pre_boxes=stages[1],
        pre_logits=scores[1],
        boxes=torch.stack(stages[2:]),
        logits=torch.stack(scores[2:]),
        logits_raw=torch.stack(scores[2:]),
        corners=torch.zeros(num_layers, 1, num_q, 4, reg + 1),
        project=torch.linspace(-2, 2, reg + 1),
        reg_scale=4.0,
        up=0.5,
        spatial_shapes=[(10, 10)],
        input_size=(100, 100),
    )
    target = {"boxes": gt, "labels": labels, "image_id": 1, "orig_size": torch.tensor([100, 100])}
    return trace, target


def _coco_gt(target: dict) -> dict:
    w, h = (int(v) for v in target["orig_size"])
    anns = []
    for i, (b, lab) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
        cx, cy, bw, bh = b[0] * w, b[1] * h, b[2] * w, b[3] * h
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": lab + 1,
                "bbox": [cx - bw / 2, cy - bh / 2, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
            }
        )
    return {
        "images": [{"id": 1, "width": w, "height": h, "file_name": "x.png"}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_per_stage_ap_follows_known_layer_boxes():
    # IoU of a box shifted by f of its width: (1 - f) / (1 + f)
    shifts = [0.45, 0.3, 0.2, 0.1, 0.0]  # encoder, pre-head, layers 1..3
    own_right = [False, True, True, True, True]  # the encoder's own classes are wrong
    trace, target = _hand_built_trace(shifts, own_right)
    settings = EvalSettings(threshold=0.5)
    results = image_results(trace, [target], [0], settings)
    report = build_report(results, _coco_gt(target), ["a", "b"], {0: 1, 1: 2}, 3, settings)
    names = [s.name for s in report.stages]
    assert names == stage_names(3) == ["encoder", "pre-head", "layer 1", "layer 2", "layer 3"]
    own = [s.AP for s in report.stages]
    final = [s.AP_final_scores for s in report.stages]
    assert own[0] == 0.0  # wrong classes under its own scores
    assert final[0] == 0.0  # IoU 0.38 < 0.5: nothing matches
    assert final[1] < final[2] < final[3] < final[4] == pytest.approx(1.0)
    assert own[1:] == pytest.approx(final[1:])  # right classes: the same detector
    assert report.metrics["AP"] == pytest.approx(own[-1])
    ious = [s.mean_iou for s in report.stages]
    expected = [(1 - f) / (1 + f) for f in shifts]
    assert ious == pytest.approx(expected, abs=1e-6)
    # uniform distributions: every layer's σ is the W(n) spread times the box size
    sigma = results[0].match_sigma
    assert sigma.shape == (3, 2, 4) and np.all(sigma > 0)
    # without per-layer scoring: only the last stage is scored, calibration still per layer
    lean = EvalSettings(threshold=0.5, per_layer=False)
    res = image_results(trace, [target], [0], lean)
    rep = build_report(res, _coco_gt(target), ["a", "b"], {0: 1, 1: 2}, 3, lean)
    assert rep.stages == [] and [c.stage for c in rep.calibration] == stage_names(3)[2:]
    assert rep.metrics["AP"] == pytest.approx(report.metrics["AP"])
    errs = [c.mean_abs_error_px for c in rep.calibration]
    assert errs[0] > errs[1] > errs[2] == pytest.approx(0.0, abs=1e-4)  # shifts 0.2, 0.1, 0


def test_model_without_fdr_has_no_pre_head_stage_and_no_calibration():
    import dataclasses

    trace, target = _hand_built_trace([0.45, 0.3, 0.2, 0.1, 0.0], [True] * 5)
    trace = dataclasses.replace(
        trace, pre_boxes=None, pre_logits=None, corners=None, project=None, reg_scale=None,
        up=None, ablation="fdr",
    )  # fmt: skip
    settings = EvalSettings(threshold=0.5)
    results = image_results(trace, [target], [0], settings)
    report = build_report(results, _coco_gt(target), ["a", "b"], {0: 1, 1: 2}, 3, settings)
    assert [s.name for s in report.stages] == ["encoder", "layer 1", "layer 2", "layer 3"]
    assert report.calibration == [] and "no calibration" in report.info["notes"][0]
    assert [s.mean_iou for s in report.stages] == pytest.approx(
        [(1 - f) / (1 + f) for f in (0.45, 0.2, 0.1, 0.0)], abs=1e-6
    )


# ------------------------------------------------------------------------------ calibration
def test_calibration_of_gaussian_errors_covers_68_and_95_percent():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 5.0, size=40000)
    errors = rng.normal(0.0, sigma)
    cal = edge_calibration(errors, sigma, stage="layer 1")
    assert cal.coverage_1sigma == pytest.approx(0.6827, abs=0.01)
    assert cal.coverage_2sigma == pytest.approx(0.9545, abs=0.005)
    assert cal.spearman > 0.3  # larger σ, larger |error|
    # reliability: RMS error ≈ σ in every bin
    assert np.allclose(cal.bins_rms_error_px, cal.bins_sigma_px, rtol=0.06)
    over = edge_calibration(errors, sigma * 3)  # overconfident σ → coverage near 1
    under = edge_calibration(errors, sigma / 3)
    assert over.coverage_1sigma > 0.99 and under.coverage_1sigma < 0.3
    flat = edge_calibration(rng.normal(0, 1, 5000), np.ones(5000))
    assert flat.spearman is None  # constant σ: no ranking


def test_score_calibration_bins():
    scores = np.array([0.05, 0.15, 0.95, 0.96, 0.97, 0.99])
    tp50 = np.array([False, False, True, True, True, False])
    tp75 = np.array([False, False, True, False, False, False])
    sc = score_calibration(scores, tp50, tp75)
    assert sc.count[0] == 1 and sc.count[1] == 1 and sc.count[9] == 4
    assert sc.precision50[9] == pytest.approx(0.75) and sc.precision75[9] == pytest.approx(0.25)
    assert sc.precision50[5] is None


# ------------------------------------------------------------------------------ errors
def _result(gt_boxes, gt_labels, det_boxes, det_labels, det_scores):
    from analysis.evaluation.collect import ImageResult, StageDetections

    d = StageDetections(
        labels=np.asarray([det_labels], np.int64),
        boxes=np.asarray([det_boxes], np.float32).reshape(1, -1, 4),
        scores=np.asarray([det_scores], np.float32),
    )
    return ImageResult(
        image_id=1, index=0, size=(100, 100),
        gt_boxes=np.asarray(gt_boxes, float).reshape(-1, 4), gt_labels=np.asarray(gt_labels),
        own=d, final=None, match_gt=np.zeros(0, int), match_score=np.zeros(0),
        match_boxes=np.zeros((1, 0, 4)), match_sigma=None, match_unit=np.zeros((0, 4)),
    )  # fmt: skip


def test_confusion_matrix_constructed_case():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    gt_labels = [0, 1, 1, 2]
    dets = [
        [0, 0, 10, 10],  # class 0 on gt 0 → TP (0, 0)
        [0, 0, 10, 10],  # duplicate of gt 0 → false positive (background row, col 0)
        [20, 20, 30, 30],  # class 2 on the class-1 gt → confusion (1, 2)
        [40, 40, 50, 50],  # class 1 on gt 2 → TP (1, 1)
        [80, 80, 90, 90],  # nothing there, class 1 → background row, col 1
        [60, 60, 70, 70],  # below the threshold: ignored; gt 3 (class 2) is missed
    ]
    r = _result(gt, gt_labels, dets, [0, 0, 2, 1, 1, 2], [0.9, 0.8, 0.7, 0.6, 0.55, 0.1])
    err = image_errors(r, threshold=0.5, iou=0.5)
    m = confusion_matrix([err], [r.gt_labels], num_classes=3)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1
    expected[3, 0] = 1
    expected[1, 2] = 1
    expected[1, 1] = 1
    expected[3, 1] = 1
    expected[2, 3] = 1
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 6  # 5 kept detections + 1 missed box


def test_best_f1_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    tps = np.array([1, 1, 0, 1, 0, 0], bool)
    labels = np.array([0, 0, 0, 0, 0, 1])
    f1 = best_f1(scores, tps, labels, gt_counts=[3, 2])
    # keeping >= 0.6: P = 3/4, R = 3/3, F1 = 6/7 beats >= 0.8 (P 1, R 2/3, F1 0.8)
    assert f1[0]["threshold"] == pytest.approx(0.6)
    assert f1[0]["f1"] == pytest.approx(6 / 7)
    assert f1[1]["f1"] == 0.0 and f1[1]["recall"] == 0.0


# ------------------------------------------------------------------------------ demo model
@pytest.fixture(scope="module")
def synth_val(tmp_path_factory) -> Path:
    from dfine.data.synth import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_train=0, num_val=24, seed=7, workers=0)
    return out


@pytest.fixture(scope="module")
def dfine_home(tmp_path_factory):
    """A private DFINE_HOME, so the report cache of these tests is their own."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("dfine_home")
        mp.setenv("DFINE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def demo_report(synth_val, dfine_home):
    return evaluate_dataset(DEMO, synth_val, settings=EvalSettings(batch_size=8))


def test_last_stage_ap_equals_plain_validate_and_is_cached(synth_val, demo_report):
    from dfine.train.run import validate

    report = demo_report
    plain = validate(DEMO, synth_val, workers=0, progress=False)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert report.metrics[key] == pytest.approx(plain[key], abs=1e-4), key
    last = report.stages[-1]
    assert last.name == "layer 3"
    assert pytest.approx(plain["AP"], abs=1e-4) == last.AP
    assert len(report.stages) == 5 and len(report.calibration) == 3
    for cal in report.calibration:
        assert cal.edges > 0 and 0 <= cal.coverage_1sigma <= cal.coverage_2sigma <= 1
    d = report.to_dict()
    assert {"AP", "AP50", "AP75", "stages", "calibration", "per_class", "confusion"} <= set(d)
    assert set(d["stages"][0]) >= {"name", "AP", "AP50", "AP75", "mean_iou"}
    assert set(d["calibration"][0]) >= {"stage", "coverage_1sigma", "coverage_2sigma", "spearman"}
    json.dumps(d)  # JSON-serialisable as written to metrics.json
    m = np.array(report.confusion["matrix"])
    assert m.shape == (9, 9) and m[:8, 8].sum() + m[:8, :8].sum() == sum(
        c.gt_count for c in report.per_class
    )
    cached = evaluate_dataset(DEMO, synth_val, settings=EvalSettings(batch_size=8))
    assert cached.info["cached"] and cached.metrics == report.metrics
    assert cached.to_dict()["stages"] == d["stages"]
    from analysis.evaluation.report import cache_key

    other = EvalSettings(batch_size=8, threshold=0.3)  # another setting: another key
    assert cache_key("w", "d", 320, EvalSettings(batch_size=8)) != cache_key("w", "d", 320, other)


def test_a_cached_report_points_at_the_dataset_evaluated_now(synth_val, demo_report, tmp_path):
    """Issue 21 item 9: the same dataset at another place (an uploaded zip unpacked into a new
    folder) hits the cache, and the report then names this copy's images *and* annotations
    (the app draws the ground truth from ``info["annotations"]``), not the first copy's."""
    import shutil

    copy = shutil.copytree(synth_val, tmp_path / "unpacked_again")
    cached = evaluate_dataset(DEMO, copy, settings=EvalSettings(batch_size=8))
    assert cached.info["cached"] and cached.metrics == demo_report.metrics
    assert all(Path(f).is_relative_to(copy) for f in cached.info["files"])
    annotations = Path(cached.info["annotations"])
    assert annotations.is_relative_to(copy) and annotations.is_file(), annotations


def _cli_report(synth_val, demo_report, out, capsys) -> str:
    """``dfine val --report out`` (the cached pass of demo_report): exit 0, metrics.json, the
    offline index.html and the gallery; returns what it printed."""
    from dfine.cli import main

    argv = ["val", "-w", str(DEMO), "-d", str(synth_val), "--report", str(out), "-q", "-b", "8"]
    assert main([*argv, "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "per-stage AP" in printed and "| layer 3 |" in printed and "inside ±1σ" in printed
    assert "attention mass relative to the detected boxes" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    attention = metrics["attention"]  # per layer, shares of true and false positives
    assert attention["layers"] == ["layer 1", "layer 2", "layer 3"]
    tp = attention["true_positives"]
    assert tp["count"] > 0 and tp == vars(demo_report.attention.true_positives)
    shares = np.array([tp["inside"], tp["near_edge"], tp["outside"]]).sum(0)
    np.testing.assert_allclose(shares, 1.0, atol=1e-5)
    assert metrics["AP"] == pytest.approx(demo_report.metrics["AP"])
    assert [s["name"] for s in metrics["stages"]][-1] == "layer 3"
    page = (out / "index.html").read_text()
    assert "Per-stage AP" in page and "Plotly" in page
    assert "<script src" not in page and "<link" not in page  # offline: plotly.js inside
    assert list((out / "gallery").glob("*.png"))
    return printed


FIGURES = ("stage_ap", "edge_reliability", "edge_coverage", "confusion", "pr_iou50")


@pytest.mark.chromium
def test_cli_report_writes_metrics_figures_and_offline_html(
    synth_val, demo_report, tmp_path, capsys
):
    out = tmp_path / "report"
    printed = _cli_report(synth_val, demo_report, out, capsys)
    assert "skipped" not in printed
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:400]
    assert "figures/stage_ap.png" in (out / "index.html").read_text()


def test_cli_report_without_a_browser_completes_and_says_what_it_skipped(
    synth_val, demo_report, tmp_path, capsys, no_chromium
):
    """No Chromium (DFINE_CHROMIUM=none, whatever is installed): exit 0, metrics.json and the
    interactive index.html all the same, and one line saying the PNG/SVG were skipped, why
    and how to get them."""
    out = tmp_path / "report"
    printed = _cli_report(synth_val, demo_report, out, capsys)
    notes = [line for line in printed.splitlines() if "skipped" in line]
    assert len(notes) == 1, printed
    assert notes[0].startswith("note: PNG/SVG figures skipped")
    assert "DFINE_CHROMIUM=none" in notes[0] and "apt-get install chromium" in notes[0]
    assert "plotly_get_chrome" in notes[0]
    assert not (out / "figures").exists()
    page = (out / "index.html").read_text()
    assert "figures/" not in page and page.count("js-plotly-plot") + page.count(
        "Plotly.newPlot"
    ) >= len(FIGURES)


def test_cli_report_on_another_backend_says_it_needs_pytorch(synth_val, capsys):
    from dfine.cli import main

    argv = ["val", "-w", "m.onnx", "-d", str(synth_val), "--backend", "onnxruntime", "--per-layer"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "need the PyTorch model" in err and err.count("\n") == 1


def test_plain_ap_on_onnxruntime_matches_torch(synth_val, demo_report, dfine_home):
    pytest.importorskip("onnxruntime")
    from dfine.train.run import validate

    ort = validate(DEMO, synth_val, workers=0, progress=False, backend="onnxruntime")
    assert ort["AP"] == pytest.approx(demo_report.metrics["AP"], abs=2e-3)


def test_onnx_weights_need_the_pytorch_model(synth_val):
    with pytest.raises(ValueError, match="need the PyTorch model"):
        evaluate_dataset("model.onnx", synth_val, cache=False)
