"""The per-image attention view's data (analysis.attention_view) on hand-built traces with known
points, weights and self-attention: the heat map equals what grid_sample reads, points and
cells land on original-image pixels (stretched and letterboxed), the query origin and the
self-attention neighbours are the ones built in."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.attention_view import (
    InputMap,
    attention_view,
    query_origin,
    self_attention_neighbours,
    splat,
    unflatten_positions,
)
from dfine import Detector
from dfine.io import load_image
from dfine.nn.decoder import DecoderTrace
from dfine.preprocess import letterbox_tensor, to_input_tensor
from tests.app_util import DEMO, SYNTH_EXAMPLE

SHAPES = [(8, 8), (4, 4)]  # strides 8 and 16 of a 64 x 64 input
NUM_POINTS = (2, 3)
L, Q, HEADS, C = 3, 6, 2, 4


def hand_trace(seed: int = 0) -> DecoderTrace:
    """A one-image trace with random boxes, points and weights (softmax over P), objectness
    and self-attention (softmax over keys)."""
    g = torch.Generator().manual_seed(seed)
    P = sum(NUM_POINTS)
    centres = torch.rand(L + 1, 1, Q, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(L + 1, 1, Q, 2, generator=g) * 0.2 + 0.05
    boxes = torch.cat([centres, sizes], -1)
    trace = DecoderTrace(
        enc_topk_indices=torch.tensor([[70, 3, 64 + 5, 10, 79, 0]]),
        enc_topk_logits=torch.randn(1, Q, C, generator=g),
        init_boxes=boxes[0],
        pre_boxes=None,
        pre_logits=None,
        boxes=boxes[1:],
        logits=torch.randn(L, 1, Q, C, generator=g),
        logits_raw=torch.randn(L, 1, Q, C, generator=g),
        corners=None,
        project=None,
        reg_scale=None,
        up=None,
        spatial_shapes=SHAPES,
        input_size=(64, 64),
        ablation="fdr",
        num_points=NUM_POINTS,
        sampling_locations=torch.rand(L, 1, Q, HEADS, P, 2, generator=g) * 0.7 + 0.15,
        attention_weights=torch.randn(L, 1, Q, HEADS, P, generator=g).softmax(-1),
        self_attention=torch.randn(L, 1, Q, Q, generator=g).softmax(-1),
        enc_objectness=torch.rand(1, 64 + 16, generator=g),
    )
    return trace


def test_splat_is_what_grid_sample_reads():
    """Mixing one-hot value maps sampled at the points gives the heat map, cell by cell,
    including points near and beyond the border (their off-grid share is lost)."""
    g = torch.Generator().manual_seed(1)
    h, w = 5, 7
    loc = torch.rand(3, 9, 2, generator=g) * 1.2 - 0.1  # some off the map
    wt = torch.rand(3, 9, generator=g).softmax(-1)
    onehot = torch.eye(h * w, dtype=torch.float64).reshape(1, h * w, h, w).expand(3, -1, -1, -1)
    read = F.grid_sample(
        onehot, 2 * loc.double()[:, None] - 1, mode="bilinear", align_corners=False
    )  # [3, h*w, 1, 9]
    expected = (read[:, :, 0] * wt.double()[:, None]).sum(-1).reshape(3, h, w)
    heat = splat(loc, wt, (h, w))
    torch.testing.assert_close(heat, expected, rtol=0, atol=1e-12)
    assert heat.sum() < 3  # some mass fell off the grid


def test_splat_at_a_cell_centre_puts_all_mass_on_the_cell():
    loc = torch.tensor([[(2.5 / 4, 1.5 / 3)]])  # column 2, row 1 of a 3 x 4 grid
    heat = splat(loc, torch.tensor([[0.7]]), (3, 4))
    assert heat[0, 1, 2] == pytest.approx(0.7) and heat.sum() == pytest.approx(0.7)


def test_input_map_of_a_letterbox():
    """A 300 x 200 image letterboxed into 64 x 64: 43 rows of image, 10 rows of padding above;
    the input's extent in the image's normalised coordinates maps input points to pixels."""
    _, lb = letterbox_tensor(np.zeros((200, 300, 3), np.uint8), (64, 64))
    assert (lb.pad_x, lb.pad_y) == (0, 10)
    extent = (0.0, -10 / 43, 1.0, 54 / 43)
    imap = InputMap((300, 200), extent)
    uv = np.array([[0.5, 10 / 64], [0.25, 53 / 64]])
    px = torch.tensor(np.concatenate([uv, uv], -1) * 64)
    np.testing.assert_allclose(imap.to_image(uv), lb.to_original(px)[:, :2].numpy(), atol=1e-9)
    xy = torch.tensor(imap.to_image(uv) / [300, 200])
    np.testing.assert_allclose(imap.to_input(xy).numpy(), uv, atol=1e-12)
    x, y = imap.cells((4, 4))
    np.testing.assert_allclose(x, (np.arange(4) + 0.5) * 75)
    assert y[0] == pytest.approx((8 - 10) / lb.scale_y)  # the first row's centre: padding


def test_attention_view_points_weights_and_heat():
    trace = hand_trace()
    view = attention_view(trace, 2, (128, 96))
    loc = trace.sampling_locations[:, 0, 2].double().numpy()
    np.testing.assert_allclose(view.points_px, loc * [128, 96])
    assert view.strides == (8, 16) and view.num_points == (2, 3)
    assert view.point_level.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_allclose(view.weights.sum(-1), 1.0, atol=1e-6)
    # layer 1 samples around b0, layer l around layer l-1's box
    b0 = trace.init_boxes[0, 2].double().numpy()
    x1 = (b0[0] - b0[2] / 2) * 128
    assert view.reference_xyxy[0, 0] == pytest.approx(x1)
    np.testing.assert_allclose(view.reference_xyxy[1:], view.boxes_xyxy[:-1])
    # the points lie well inside the maps: the heat maps of a head sum to 1 over the levels
    total = sum(h.sum((-1, -2)) for h in view.heat)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    shares = view.level_shares(1, heads=[1])
    w = trace.attention_weights[1, 0, 2, 1].double().numpy()
    np.testing.assert_allclose(shares, [w[:2].sum(), w[2:].sum()])
    np.testing.assert_allclose(view.heat_map(1, 1, [1]).sum(), w[2:].sum(), atol=1e-6)
    np.testing.assert_allclose(view.cell_x[1], (np.arange(4) + 0.5) * 32)
    with pytest.raises(ValueError, match="at least one"):
        view.heat_map(0, 0, [])
    with pytest.raises(ValueError, match=r"heads must lie in \[0, 2\)"):
        view.level_shares(0, [2])


@pytest.mark.parametrize("letterbox", [False, True])
def test_attention_view_of_a_detector_trace(letterbox):
    """The demo model on a non-square image: the view's points are the model's own sampling
    locations (network input) mapped like the boxes (stretched, or out of the letterbox), and
    its heat maps are splatted from those input locations."""
    det = Detector(DEMO, size=320, letterbox=letterbox)
    rgb = load_image(SYNTH_EXAMPLE)[:, :200]  # 200 wide, 320 high
    dets, trace, queries = det.trace(rgb, threshold=0.0)
    if letterbox:
        x, lb = letterbox_tensor(rgb, (320, 320))
    else:
        x, lb = to_input_tensor(rgb, (320, 320)), None
    raw = det.model.trace(x)
    q = int(queries[0])
    view = attention_view(trace, q, dets.image_size)
    loc = raw.sampling_locations[:, 0, q].double()  # [L, H, P, 2], input
    if lb is None:
        expected = loc.numpy() * [200, 320]
    else:
        expected = lb.to_original(torch.cat([loc, loc], -1) * 320)[..., :2].numpy()
    np.testing.assert_allclose(view.points_px, expected, atol=1e-3)
    strides = raw.level_strides
    for v, part in enumerate(loc.split(list(raw.num_points), dim=-2)):
        weights = raw.attention_weights[:, 0, q].split(list(raw.num_points), dim=-1)[v]
        heat = splat(part, weights, (320 // strides[v], 320 // strides[v])).numpy()
        np.testing.assert_allclose(view.heat[v], heat, atol=1e-5)


def test_attention_view_needs_an_attention_trace():
    trace = hand_trace()
    trace.sampling_locations = None
    with pytest.raises(ValueError, match="needs the decoder's attention"):
        attention_view(trace, 0, (64, 64))


def test_unflatten_positions():
    level, cell = unflatten_positions(np.array([0, 9, 63, 64, 79]), SHAPES)
    assert level.tolist() == [0, 0, 0, 1, 1]
    assert cell.tolist() == [[0, 0], [1, 1], [7, 7], [0, 0], [3, 3]]
    with pytest.raises(ValueError, match="positions must lie"):
        unflatten_positions(np.array([80]), SHAPES)


def test_query_origin():
    trace = hand_trace()
    origin = query_origin(trace, 2, (128, 64))
    # query 2 was position 64 + 5 = level 1 (stride 16), row 1, column 1
    assert (origin.level, origin.cell) == (1, (1, 1))
    assert origin.objectness_value == pytest.approx(float(trace.enc_objectness[0, 69]))
    assert origin.objectness[0].shape == (8, 8) and origin.objectness[1].shape == (4, 4)
    assert origin.objectness[0][8 // 8, 10 % 8] == pytest.approx(float(trace.enc_objectness[0, 10]))
    assert origin.num_selected == Q
    np.testing.assert_allclose(origin.selected_px[2], [1.5 / 4 * 128, 1.5 / 4 * 64])
    np.testing.assert_allclose(
        origin.selected_px[0], [2.5 / 4 * 128, 1.5 / 4 * 64]
    )  # 70: 1, (1, 2)
    b0 = trace.init_boxes[0, 2].double().numpy()
    assert origin.init_box_xyxy[3] == pytest.approx((b0[1] + b0[3] / 2) * 64)


def test_self_attention_neighbours():
    trace = hand_trace()
    attn = torch.full((L, 1, Q, Q), 0.01)
    attn[:, 0, 3, 3] = 0.5  # itself: left out
    attn[0, 0, 3, [1, 4]] = torch.tensor([0.3, 0.2])
    attn[1, 0, 3, [5, 0]] = torch.tensor([0.4, 0.1])
    attn[2, 0, 3, [2, 1]] = torch.tensor([0.25, 0.2])
    trace.self_attention = attn
    trace.boxes[0, 0, 5] = trace.boxes[0, 0, 3]  # layer 2 sees query 5 on top of query 3
    nb = self_attention_neighbours(trace, 3, (100, 100), k=2)
    assert nb.neighbours.tolist() == [[1, 4], [5, 0], [2, 1]]
    np.testing.assert_allclose(nb.weights, [[0.3, 0.2], [0.4, 0.1], [0.25, 0.2]])
    np.testing.assert_allclose(nb.self_weight, 0.5)
    # layer 1 saw b0 and the encoder's scores, layer 2 saw layer 1's boxes and scores
    b = trace.init_boxes[0, 1].double().numpy()
    assert nb.boxes_xyxy[0, 0, 0] == pytest.approx((b[0] - b[2] / 2) * 100)
    b = trace.boxes[0, 0, 5].double().numpy()
    assert nb.boxes_xyxy[1, 0, 2] == pytest.approx((b[0] + b[2] / 2) * 100)
    enc = trace.enc_topk_logits[0, 4].sigmoid()
    assert nb.scores[0, 1] == pytest.approx(float(enc.max()))
    assert nb.labels[0, 1] == int(enc.argmax())
    assert nb.final_scores[2, 0] == pytest.approx(float(trace.logits[-1, 0, 2].sigmoid().max()))
    assert nb.iou[1, 0] == pytest.approx(1.0) and nb.iou[0, 0] < 1
    with pytest.raises(ValueError, match="k must be"):
        self_attention_neighbours(trace, 3, (100, 100), k=Q)


def test_dataset_attention_figures():
    """The Evaluate tab's / report's attention figures on constructed sums: every true
    positive's mass near an edge, every false positive's outside."""
    from analysis.attention import DISTANCE_BINS, AttentionShares
    from analysis.evaluation.figures import attention_distance_figure, attention_shares_figure

    k = len(DISTANCE_BINS) - 1
    sums = np.zeros((2, 2, 4 + k))
    sums[0, :, 1], sums[0, :, 3 + k // 3], sums[0, :, -1] = 3, 3, 3  # 3 TPs, near an edge
    sums[1, :, 2], sums[1, :, 3 + k - 1], sums[1, :, -1] = 2, 2, 2  # 2 FPs, outside
    report = SimpleNamespace(attention=AttentionShares.from_sums(sums, ["layer 1", "layer 2"]))
    fig = attention_shares_figure(report)
    bars = {t.name.split(" (")[0]: list(t.y) for t in fig.data}
    assert bars == {"inside": [0, 0, 0, 0], "near an edge": [1, 0, 1, 0], "outside": [0, 1, 0, 1]}
    assert list(fig.data[0].x[1]) == ["TP", "FP", "TP", "FP"]
    assert "3 true vs 2 false positives" in fig.layout.title.text.replace("<br>", " ")
    lines = attention_distance_figure(report).data
    assert [t.name for t in lines] == ["layer 1 TP", "layer 2 TP", "layer 1 FP", "layer 2 FP"]
    assert lines[0].y[k // 3] == 1 and lines[3].y[-1] == 1
    empty = SimpleNamespace(attention=None)
    assert attention_shares_figure(empty) is None and attention_distance_figure(empty) is None
