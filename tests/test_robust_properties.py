"""Issue #7: property tests (hypothesis) of the box math the detector's outputs rest on.

Fixed example counts, no deadline, derandomized: the same examples on every run and in CI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfine.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from dfine.nn.fdr import bbox2distance, distance2bbox, integral, translate_gt, weighting_function
from dfine.postprocess import postprocess, topk_detections

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

coords = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)
sizes = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False, width=64)
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
reg_maxes = st.integers(2, 64).map(lambda n: 2 * n)  # even, 4..128
ups = st.floats(0.01, 10.0, allow_nan=False)
reg_scales = st.floats(0.1, 100.0, allow_nan=False)
signs = st.sampled_from([1.0, -1.0])


def _close(a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * max(1.0, scale))


# ------------------------------------------------------------------ xyxy <-> cxcywh
@SETTINGS
@given(st.lists(st.tuples(coords, coords, sizes, sizes), min_size=1, max_size=16))
def test_cxcywh_to_xyxy_and_back(boxes):
    cxcywh = torch.tensor(boxes, dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert (xyxy[:, 2] >= xyxy[:, 0]).all() and (xyxy[:, 3] >= xyxy[:, 1]).all()
    _close(box_xyxy_to_cxcywh(xyxy), cxcywh, cxcywh.abs().max().item())


@SETTINGS
@given(st.lists(st.tuples(coords, coords, sizes, sizes), min_size=1, max_size=16))
def test_xyxy_to_cxcywh_and_back(boxes):
    x1, y1, w, h = torch.tensor(boxes, dtype=torch.float64).unbind(-1)
    xyxy = torch.stack([x1, y1, x1 + w, y1 + h], -1)
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    assert (cxcywh[:, 2:] >= 0).all()
    _close(box_cxcywh_to_xyxy(cxcywh), xyxy, xyxy.abs().max().item())


@SETTINGS
@given(coords, coords, st.floats(-1e4, -1e-6), st.floats(-1e4, 0.0))
def test_negative_sizes_become_empty_boxes(cx, cy, w, h):
    xyxy = box_cxcywh_to_xyxy(torch.tensor([cx, cy, w, h], dtype=torch.float64))
    assert xyxy.tolist() == [cx, cy, cx, cy]


# ------------------------------------------------------------------ W(n)
@SETTINGS
@given(reg_maxes, ups, reg_scales, signs, signs)
def test_weighting_function_is_symmetric_and_increasing(reg_max, up, reg_scale, s_up, s_scale):
    w = weighting_function(reg_max, s_up * up, s_scale * reg_scale).double()
    a = abs(float(torch.tensor(up, dtype=torch.float32))) * float(
        torch.tensor(reg_scale, dtype=torch.float32)
    )
    assert w.shape == (reg_max + 1,) and torch.isfinite(w).all()
    assert torch.equal(w, -w.flip(0))  # W(reg_max - n) = -W(n), exactly
    assert w[reg_max // 2] == 0
    assert (w[1:] > w[:-1]).all()  # strictly increasing
    assert w[0].item() == pytest.approx(-2 * a, rel=1e-5)
    assert w[-1].item() == pytest.approx(2 * a, rel=1e-5)
    assert w[1].item() == pytest.approx(
        -a, rel=1e-4, abs=1e-5
    )  # the first step is a, the rest finer
    # the signs of up and reg_scale do not matter
    assert torch.equal(w, weighting_function(reg_max, up, reg_scale).double())


@SETTINGS
@given(st.integers(-4, 3) | st.integers(2, 40).map(lambda n: 2 * n + 1), ups, reg_scales)
def test_weighting_function_refuses_odd_or_tiny_reg_max(reg_max, up, reg_scale):
    with pytest.raises(ValueError, match="even whole number >= 4"):
        weighting_function(reg_max, up, reg_scale)


@SETTINGS
@given(
    reg_maxes,
    ups,
    reg_scales,
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=4, max_size=4 * 129),
)
def test_integral_stays_inside_the_w_range(reg_max, up, reg_scale, values):
    bins = reg_max + 1
    logits = torch.tensor((values * (4 * bins))[: 4 * bins], dtype=torch.float32).reshape(1, -1)
    w = weighting_function(reg_max, up, reg_scale)
    offsets = integral(logits, w)
    assert offsets.shape == (1, 4) and torch.isfinite(offsets).all()
    slack = 1e-5 * float(w[-1])
    assert (offsets >= w[0] - slack).all() and (offsets <= w[-1] + slack).all()


# ------------------------------------------------------------------ translate_gt
@SETTINGS
@given(reg_maxes, ups, reg_scales, st.lists(finite32, min_size=1, max_size=64))
def test_translate_gt_weights_are_a_split_of_one(reg_max, up, reg_scale, values):
    for dtype in (torch.float32, torch.float64):
        gt = torch.tensor(values, dtype=dtype)
        index, right, left = translate_gt(gt, reg_max, reg_scale, up)
        for t in (index, right, left):
            assert t.shape == gt.shape and torch.isfinite(t).all()
        assert ((right >= 0) & (right <= 1) & (left >= 0) & (left <= 1)).all()
        torch.testing.assert_close(right + left, torch.ones_like(gt), rtol=0, atol=1e-6)
        assert ((index >= 0) & (index <= reg_max - 0.1 + 1e-6)).all()


@SETTINGS
@given(reg_maxes, ups, reg_scales, st.lists(finite32, min_size=1, max_size=32))
def test_translate_gt_outside_the_range_puts_all_weight_on_the_end_bin(
    reg_max, up, reg_scale, values
):
    w = weighting_function(reg_max, up, reg_scale).double()
    gt = torch.tensor(values, dtype=torch.float64)
    index, right, left = translate_gt(gt, reg_max, reg_scale, up)
    below, above = gt < w[0], gt >= w[-1]
    assert (index[below] == 0).all() and (left[below] == 1).all() and (right[below] == 0).all()
    assert (right[above] == 1).all() and (left[above] == 0).all()
    assert torch.allclose(index[above], torch.full_like(index[above], reg_max - 0.1))


# ------------------------------------------------------------------ distance2bbox / bbox2distance
@st.composite
def fdr_problems(draw):
    reg_max, up, reg_scale = draw(reg_maxes), draw(ups), draw(reg_scales)
    n = draw(st.integers(1, 8))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    points = [
        (draw(unit), draw(unit), draw(st.floats(1e-3, 1.0)), draw(st.floats(1e-3, 1.0)))
        for _ in range(n)
    ]
    fractions = [[draw(unit) for _ in range(4)] for _ in range(n)]
    return reg_max, up, reg_scale, points, fractions


@SETTINGS
@given(fdr_problems())
def test_distance2bbox_then_bbox2distance_gives_back_the_offsets(problem):
    reg_max, up, reg_scale, points, fractions = problem
    w = weighting_function(reg_max, up, reg_scale).double()
    points = torch.tensor(points, dtype=torch.float64)
    # offsets anywhere inside the W(n) range [W(0), W(reg_max)]
    offsets = w[0] + torch.tensor(fractions, dtype=torch.float64) * (w[-1] - w[0])
    cx, cy, w_, h_ = distance2bbox(points, offsets, reg_scale).unbind(-1)
    # no clamping: offsets below -reg_scale / 2 move an edge past the centre (inverted box)
    boxes = torch.stack([cx - w_ / 2, cy - h_ / 2, cx + w_ / 2, cy + h_ / 2], -1)
    index, right, left = bbox2distance(points, boxes, reg_max, reg_scale, up)
    assert ((index >= 0) & (index <= reg_max - 0.1 + 1e-9)).all()
    low = index.floor().long()
    recovered = (w[low] * left + w[low + 1] * right).reshape(-1, 4)
    span = float(w[-1] - w[0])
    torch.testing.assert_close(recovered, offsets, rtol=0, atol=1e-6 * max(1.0, span))


# ------------------------------------------------------------------ postprocess and clipping
@st.composite
def raw_outputs(draw, inside: bool):
    batch, queries, classes = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 40)),
        draw(st.integers(1, 6)),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g) * draw(st.floats(0.1, 20.0))
    if inside:  # boxes inside the unit square, as a sigmoid head predicts
        x1y1 = torch.rand(batch, queries, 2, generator=g)
        x2y2 = x1y1 + torch.rand(batch, queries, 2, generator=g) * (1 - x1y1)
        boxes = box_xyxy_to_cxcywh(torch.cat([x1y1, x2y2], -1))
    else:  # centres and sizes past the image (an extrapolating refinement)
        centres = torch.rand(batch, queries, 2, generator=g) * 2 - 0.5
        boxes = torch.cat([centres, torch.rand(batch, queries, 2, generator=g) * 2], -1)
    widths = draw(st.lists(st.integers(1, 10000), min_size=batch, max_size=batch))
    heights = draw(st.lists(st.integers(1, 10000), min_size=batch, max_size=batch))
    num_top = draw(st.integers(1, 300))
    return logits, boxes, torch.tensor(list(zip(widths, heights))), num_top


@SETTINGS
@given(raw_outputs(inside=True))
def test_postprocess_keeps_boxes_of_the_image_inside_it(raw):
    logits, boxes, sizes, num_top = raw
    results = postprocess({"pred_logits": logits, "pred_boxes": boxes}, sizes, num_top)
    queries, classes = logits.shape[1:]
    for result, (w, h) in zip(results, sizes.tolist()):
        k = min(num_top, queries * classes)
        assert result["boxes"].shape == (k, 4) and result["scores"].shape == (k,)
        b = result["boxes"].double()
        tol = 1e-6 * max(w, h)
        assert (b[:, 0] >= -tol).all() and (b[:, 2] <= w + tol).all()
        assert (b[:, 1] >= -tol).all() and (b[:, 3] <= h + tol).all()
        assert (b[:, 0] <= b[:, 2] + tol).all() and (b[:, 1] <= b[:, 3] + tol).all()
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        assert ((result["labels"] >= 0) & (result["labels"] < classes)).all()


@pytest.fixture(scope="module")
def detector():
    import dfine

    torch.manual_seed(0)
    return dfine.Detector(dfine.build_model("n", num_classes=6).eval(), threshold=0.0)


@SETTINGS
@given(raw=raw_outputs(inside=False), threshold=st.floats(0.0, 1.0))
def test_detector_clipping_keeps_any_box_inside_the_image(detector, raw, threshold):
    """``Detector._detection`` (the step after ``postprocess``) on boxes that overshoot."""
    logits, boxes, sizes, num_top = raw
    top = topk_detections(logits, boxes, sizes, num_top)
    images = [np.broadcast_to(np.zeros(1, np.uint8), (h, w, 3)) for w, h in sizes.tolist()]
    dets = [
        detector._detection(top, n, im, threshold, False, None)[0] for n, im in enumerate(images)
    ]
    for det, (w, h) in zip(dets, sizes.tolist()):
        assert det.image_size == (w, h)
        b = det.boxes.astype(np.float64)
        assert np.isfinite(b).all()
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all()
        assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= h).all()
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert (det.scores >= threshold).all() and len(det) <= detector.max_detections
