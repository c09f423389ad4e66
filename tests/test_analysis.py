"""analysis/ against the reference fixtures: W(n), per-layer boxes, GO-LSD terms vs the
criterion, edge distributions."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import analysis as A
from analysis._common import xyxy_px_to_cxcywh
from dfine.detections import Detections
from dfine.loss import build_criterion
from dfine.loss.criterion import DFINECriterion
from tests.conftest import load_tensors, reference_file, reference_model

IMAGE_SIZE = (800, 600)  # not square, so width/height mix-ups show


@pytest.fixture(scope="module")
def trace(inputs):
    with torch.inference_mode():
        return reference_model("n_perturbed").trace(inputs["images"])


@pytest.fixture(scope="module")
def layer_ref():
    return load_tensors("dfine_n_perturbed_layer_outputs_trimmed.pt")


@pytest.fixture(scope="module")
def fixture_targets():
    fx = json.loads(reference_file("dfine_n_perturbed_train_losses.json").read_text())
    return [
        {"labels": torch.tensor(t["labels"]), "boxes": torch.tensor(t["boxes"])}
        for t in fx["targets"]
    ]


def _all_queries(trace) -> np.ndarray:
    return np.arange(trace.boxes.shape[2])


# ----------------------------------------------------------------------------- W(n)
def test_weighting_curve_equals_reference_project(layer_ref, trace):
    curve = A.weighting_curve(32, 0.5, 4)
    assert torch.equal(torch.from_numpy(curve.w), layer_ref["project"])
    assert np.array_equal(A.model_weighting(trace).w, curve.w)
    assert curve.source == "parameters" and A.model_weighting(trace).source == "model"


@pytest.mark.parametrize(
    ("reg_max", "up", "reg_scale"), [(32, 0.5, 4), (8, 2.0, 1.5), (128, 5, 32)]
)
def test_weighting_curve_geometry(reg_max, up, reg_scale):
    c = A.weighting_curve(reg_max, up, reg_scale)
    a = up * reg_scale
    assert c.n.tolist() == list(range(reg_max + 1))
    assert c.w[0] == pytest.approx(-2 * a, rel=1e-6) and c.w[-1] == pytest.approx(2 * a, rel=1e-6)
    assert c.w[reg_max // 2] == 0 and np.allclose(c.w, -c.w[::-1], atol=1e-5)
    assert c.step == pytest.approx((a + 1) ** (2 / (reg_max - 2)))
    # geometric growth away from 0: W(R/2 + i) = step^i - 1
    i = np.arange(1, reg_max // 2)
    np.testing.assert_allclose(c.w[reg_max // 2 + i], c.step**i - 1, rtol=1e-4)
    assert c.min_spacing == pytest.approx(c.step - 1, rel=1e-4)
    assert c.max_spacing == pytest.approx(a, rel=1e-4)  # the jump from W(R-1) = a to W(R) = 2a
    np.testing.assert_allclose(np.diff(c.uniform), (c.w[-1] - c.w[0]) / reg_max, rtol=1e-9)
    assert c.uniform[0] == c.w[0] and c.uniform[-1] == pytest.approx(c.w[-1])
    np.testing.assert_allclose(c.box_fraction, c.w / reg_scale, rtol=1e-6)
    assert len(c.to_table()) == reg_max + 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"reg_max": 31}, "reg_max"),
        ({"reg_max": 2}, "reg_max"),
        ({"reg_max": 130}, "reg_max"),
        ({"reg_max": 16.5}, "reg_max"),
        ({"up": 0}, "up"),
        ({"up": 5.01}, "up"),
        ({"up": float("nan")}, "up"),
        ({"reg_scale": 0}, "reg_scale"),
        ({"reg_scale": -1}, "reg_scale"),
        ({"reg_scale": 33}, "reg_scale"),
    ],
)
def test_weighting_curve_rejects_out_of_range(kwargs, name):
    with pytest.raises(ValueError, match=name):
        A.weighting_curve(**kwargs)


# ----------------------------------------------------------------------------- refinement
@pytest.mark.parametrize("image", [0, 1])
def test_refinement_boxes_equal_trace_and_reference(trace, layer_ref, image):
    tr = trace.select(image)
    ref = A.refinement(tr, _all_queries(tr), IMAGE_SIZE)
    assert ref.stages == ["encoder (b0)", "pre-head", "layer 1", "layer 2", "layer 3"]
    back = torch.from_numpy(xyxy_px_to_cxcywh(ref.boxes_xyxy, IMAGE_SIZE)).float()
    ours = torch.cat([tr.init_boxes, tr.pre_boxes, tr.boxes[:, 0]])
    torch.testing.assert_close(back, ours, rtol=0, atol=1e-6)
    # pair queries with the reference by encoder position (top-k order may differ)
    pos = {int(p): j for j, p in enumerate(layer_ref["enc_topk_indices"][image])}
    ours_idx = [i for i, p in enumerate(tr.enc_topk_indices[0].tolist()) if p in pos]
    theirs_idx = [pos[int(tr.enc_topk_indices[0, i])] for i in ours_idx]
    assert len(ours_idx) >= 297
    expected = torch.cat(
        [
            layer_ref["init_ref_boxes"][image][None],
            layer_ref["pre_boxes"][image][None],
            layer_ref["dec_boxes"][:, image],
        ]
    )
    torch.testing.assert_close(back[:, ours_idx], expected[:, theirs_idx], rtol=0, atol=1e-4)


def test_refinement_offsets_moves_and_iou(trace):
    tr = trace.select(1)
    q = np.array([0, 5, 77, 299])
    ref = A.refinement(tr, q, IMAGE_SIZE)
    pre, layers = ref.boxes_xyxy[1], ref.boxes_xyxy[2:]
    outward = np.array([-1, -1, 1, 1])
    # each layer's edge = pre-head edge moved outward by its FDR offset
    np.testing.assert_allclose(layers, pre + outward * ref.edge_offsets_px, atol=2e-3)
    # the moves from the pre-head telescope to the offsets; moves are outward-positive
    np.testing.assert_allclose(
        np.cumsum(ref.edge_moves_px[1:], axis=0), ref.edge_offsets_px, atol=2e-3
    )
    left_move = ref.boxes_xyxy[0, :, 0] - ref.boxes_xyxy[1, :, 0]
    np.testing.assert_allclose(ref.edge_moves_px[0, :, 0], left_move)
    assert np.all(ref.iou_to_final[-1] == 1.0) and np.all(ref.iou_to_final <= 1.0)
    assert ref.iou_to_final.shape == (5, 4) and ref.edge_moves_px.shape == (4, 4, 4)
    # default labels = final argmax; scores = sigmoid of that class at each stage
    labels = tr.logits[-1, 0, q].argmax(-1)
    assert ref.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(
        ref.scores[-1], tr.logits[-1, 0, torch.as_tensor(q), labels].sigmoid(), rtol=1e-6
    )
    rows = ref.to_table(class_names=[f"c{i}" for i in range(80)])
    assert len(rows) == 4 * 5 and rows[0]["stage"] == "encoder (b0)"
    assert rows[0]["move_left_px"] is None and rows[0]["offset_left_px"] is None
    assert rows[2]["offset_right_px"] == round(float(ref.edge_offsets_px[0, 0, 2]), 2)
    assert rows[0]["class"] == f"c{labels[0]}"


def test_refinement_rejects_bad_input(trace):
    tr = trace.select(0)
    with pytest.raises(ValueError, match="query"):
        A.refinement(tr, [300], IMAGE_SIZE)
    with pytest.raises(ValueError, match="image_size"):
        A.refinement(tr, [0], (0, 10))
    with pytest.raises(ValueError, match="labels"):
        A.refinement(tr, [0, 1], IMAGE_SIZE, labels=[1])


# ----------------------------------------------------------------------------- distributions
def test_edge_distributions_are_consistent(trace):
    tr = trace.select(0)
    q = 42
    d = A.edge_distributions(tr, q, IMAGE_SIZE)
    L, bins = tr.num_layers, tr.reg_max + 1
    assert d.probs.shape == (L, 4, bins) and d.offsets_px.shape == (4, bins)
    np.testing.assert_allclose(d.probs.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(d.expected_px, (d.probs * d.offsets_px).sum(-1), atol=1e-12)
    # the pixel axis is W(n) × (box width or height in px) / reg_scale, per edge
    w_px = float(tr.pre_boxes[0, q, 2]) * IMAGE_SIZE[0] / tr.reg_scale
    h_px = float(tr.pre_boxes[0, q, 3]) * IMAGE_SIZE[1] / tr.reg_scale
    np.testing.assert_allclose(d.offsets_px[0], d.project * w_px, rtol=1e-6)
    np.testing.assert_allclose(d.offsets_px[3], d.project * h_px, rtol=1e-6)
    # the expected offsets reproduce every layer's box in pixels
    ref = A.refinement(tr, [q], IMAGE_SIZE)
    np.testing.assert_allclose(d.edge_positions_px, ref.boxes_xyxy[2:, 0], atol=2e-3)
    np.testing.assert_allclose(d.expected_px, ref.edge_offsets_px[:, 0], atol=1e-9)
    # the two bins around the expectation enclose it
    lo, hi = d.neighbour_offsets_px[..., 0], d.neighbour_offsets_px[..., 1]
    assert np.all(lo <= d.expected_px) and np.all(d.expected_px < hi)
    assert np.all(d.neighbour_bins[..., 1] - d.neighbour_bins[..., 0] == 1)
    var = (d.probs * (d.offsets_px - d.expected_px[..., None]) ** 2).sum(-1)
    np.testing.assert_allclose(d.std_px, np.sqrt(var))
    assert np.all(d.entropy > 0) and np.all(d.entropy <= math.log(bins) + 1e-12)


def test_uniform_distribution_entropy_and_spread(trace):
    tr = dataclasses.replace(trace.select(0), corners=torch.zeros_like(trace.select(0).corners))
    d = A.edge_distributions(tr, 3, IMAGE_SIZE)
    np.testing.assert_allclose(d.entropy, math.log(33), rtol=0, atol=1e-12)
    assert d.max_entropy == pytest.approx(math.log(33))
    # uniform over a symmetric W: expectation 0 (the pre-head box), σ = RMS of the offsets
    np.testing.assert_allclose(d.expected_px, 0, atol=1e-9)
    np.testing.assert_allclose(
        d.std_px, np.broadcast_to(np.sqrt((d.offsets_px**2).mean(-1)), (3, 4))
    )
    assert np.isin(d.neighbour_bins[..., 0], [15, 16]).all()  # E = 0 ± rounding: W(15) < 0 = W(16)


# ----------------------------------------------------------------------------- GO-LSD
@pytest.mark.parametrize("image", [0, 1])
def test_golsd_terms_equal_criterion_loss(trace, fixture_targets, image):
    tr = trace.select(image)
    targets = [fixture_targets[image]]
    model = reference_model("n_perturbed")
    criterion = build_criterion(model)
    outputs = A.criterion_outputs(tr)
    losses = criterion(outputs, targets)
    report = A.golsd(tr, targets, criterion)
    weight = criterion.weight_dict["loss_ddf"]
    assert not report.targets_are_pseudo and "pseudo" not in report.note
    assert report.loss_ddf.shape == (tr.num_layers - 1,)
    for i, value in enumerate(report.loss_ddf):
        expected = losses[f"loss_ddf_aux_{i}"].item() / weight
        assert expected > 0
        assert value == pytest.approx(expected, rel=1e-6)
    # recombine the report's KL terms by the DDF formula: weighted T²·KL, group means, balance
    T = report.temperature
    assert T == criterion.temperature == 5.0
    mask = np.repeat(report.matched[:, None], 4, axis=1)
    for i in range(len(report.loss_ddf)):
        weighted = report.weights[i][:, None] * T**2 * report.kl_edges[i]
        pos, neg = weighted[mask].mean(), weighted[~mask].mean()
        recombined = (pos * report.num_pos + neg * report.num_neg) / (
            report.num_pos + report.num_neg
        )
        assert recombined == pytest.approx(losses[f"loss_ddf_aux_{i}"].item() / weight, rel=1e-5)
    np.testing.assert_allclose(report.contribution.sum(1), report.loss_ddf, rtol=1e-6)
    np.testing.assert_allclose(report.kl, report.kl_edges.sum(-1), rtol=1e-6)
    n_pos = 4 * int(report.matched.sum())
    assert report.num_pos == pytest.approx(math.sqrt(n_pos * 8), rel=1e-6)


def test_golsd_matches_and_softened_distributions(trace, fixture_targets):
    tr = trace.select(0)
    targets = [fixture_targets[0]]
    criterion = build_criterion(reference_model("n_perturbed"))
    report = A.golsd(tr, targets, criterion, image_size=IMAGE_SIZE)
    m = criterion.match_all(A.criterion_outputs(tr), targets)
    union_q, union_t = report.matches["union"]
    assert union_q.tolist() == m["union"][0][0].tolist()
    assert union_t.tolist() == m["union"][0][1].tolist()
    assert report.match_sets == ["encoder (b0)", "pre-head", "layer 1", "layer 2", "layer 3"]
    assert report.matches["layer 3"][0].tolist() == m["final"][0][0].tolist()
    assert report.matches["layer 1"][0].tolist() == m["aux"][0][0][0].tolist()
    assert report.matched.sum() == len(union_q) and set(np.flatnonzero(report.matched)) == set(
        union_q
    )
    assert np.all(report.union_target[union_q] == union_t) and np.all(
        report.match_count[union_q] >= 1
    )
    assert np.all(report.match_count[~report.matched] == 0)
    # every target is matched by each layer (3 targets, one-to-one)
    assert all(len(report.matches[s][0]) == 3 for s in report.match_sets)
    # softened distributions, and the KL between them (nats)
    soft = torch.softmax(tr.corners[:, 0].double() / 5.0, -1).numpy()
    np.testing.assert_allclose(report.teacher_probs, soft[-1], rtol=1e-9)
    np.testing.assert_allclose(report.student_probs, soft[:-1], rtol=1e-9)
    t, s = report.teacher_probs, report.student_probs
    kl = (t[None] * (np.log(t[None]) - np.log(s))).sum(-1)
    np.testing.assert_allclose(report.kl_edges, kl, atol=2e-6)
    # weights: IoU (of that layer's box with the union target) for matched, else confidence
    unmatched = ~report.matched
    np.testing.assert_allclose(
        report.weights[:, unmatched],
        np.broadcast_to(report.teacher_confidence[unmatched], (2, unmatched.sum())),
        rtol=1e-6,
    )
    assert np.all(report.weights[:, report.matched] <= 1.0)
    assert report.pixel_space == "original image" and report.target_boxes_xyxy.shape == (3, 4)
    np.testing.assert_allclose(report.target_boxes_xyxy[0], [160, 30, 640, 510], atol=1e-3)
    rows = report.to_table(top=5)
    assert len(rows) == 5 and rows[0]["query"] == int(report.ranked_queries()[0])
    shares = [r["loss share layer 1"] + r["loss share layer 2"] for r in rows]
    assert shares == sorted(shares, reverse=True)


def test_golsd_temperature_and_validation(trace, fixture_targets):
    tr = trace.select(0)
    targets = [fixture_targets[0]]
    criterion = build_criterion(reference_model("n_perturbed"))
    base = A.golsd(tr, targets, criterion)
    hot = A.golsd(tr, targets, criterion, temperature=1.0)
    assert hot.temperature == 1.0 and not np.allclose(hot.loss_ddf, base.loss_ddf)
    assert base.pixel_space == "network input" and base.image_size == (640, 640)
    with pytest.raises(ValueError, match="one image"):
        A.golsd(trace, fixture_targets, criterion)
    with pytest.raises(ValueError, match="labels"):
        A.golsd(tr, [{"labels": torch.tensor([80]), "boxes": torch.rand(1, 4)}], criterion)
    with pytest.raises(ValueError, match="temperature"):
        A.golsd(tr, targets, criterion, temperature=0)


def test_pseudo_targets_are_labelled(trace):
    tr = trace.select(0)
    dets = Detections(
        boxes=[[80, 60, 400, 300], [0, 0, 800, 600], [10, 10, 20, 20]],
        scores=[0.9, 0.6, 0.2],
        labels=[3, 7, 1],
        class_names=[f"c{i}" for i in range(80)],
        image_size=IMAGE_SIZE,
    )
    (pt,) = A.pseudo_targets(dets, IMAGE_SIZE, min_score=0.5)
    assert pt["pseudo"] is True and pt["labels"].tolist() == [3, 7]
    torch.testing.assert_close(
        pt["boxes"], torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]])
    )
    report = A.golsd(tr, [pt], DFINECriterion(build_criterion(num_classes=80).matcher, 80))
    assert (
        report.targets_are_pseudo
        and report.note == "pseudo ground truth: the model's own detections"
    )
    assert all(r["targets"] == report.note for r in report.to_table(3))
    assert not A.golsd(tr, [pt], build_criterion(num_classes=80), pseudo=False).targets_are_pseudo
    (empty,) = A.pseudo_targets(dets, min_score=0.95)
    assert empty["boxes"].shape == (0, 4)
    report = A.golsd(tr, [empty], build_criterion(num_classes=80))
    assert report.matched.sum() == 0 and np.isfinite(report.loss_ddf).all()


def test_detector_trace_end_to_end():
    import dfine

    model = reference_model("n_perturbed")
    det = dfine.Detector(model, deploy=False, threshold=0.0, max_detections=5)
    dets, tr, queries = det.trace("assets/examples/chelsea.jpg")
    ref = A.refinement(tr, queries, dets.image_size, dets.labels)
    w, h = dets.image_size
    final = ref.boxes_xyxy[-1].copy()
    final[:, 0::2] = final[:, 0::2].clip(0, w)
    final[:, 1::2] = final[:, 1::2].clip(0, h)
    np.testing.assert_allclose(final, dets.boxes, atol=1e-2)
    np.testing.assert_allclose(ref.scores[-1], dets.scores, rtol=1e-5)
    overlay = A.uncertainty_overlay(dets.image, dets, tr, queries)
    assert overlay.size == dets.image_size
    report = A.golsd(
        tr,
        A.pseudo_targets(dets, min_score=0.0),
        build_criterion(model),
        image_size=dets.image_size,
    )
    assert report.targets_are_pseudo and report.matched.sum() >= 1
