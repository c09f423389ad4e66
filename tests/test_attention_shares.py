"""The dataset statistic of where the attention falls (analysis.attention) on constructed
traces with known points and weights, and its place in the dataset report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dfine
from analysis.attention import (
    DISTANCE_BINS,
    AttentionShares,
    attention_mass,
    attention_shares,
    edge_distance,
)
from dfine.nn.decoder import DecoderTrace

BOX = torch.tensor([0.5, 0.5, 0.4, 0.2])  # x 0.3..0.7, y 0.4..0.6


def _trace(points: torch.Tensor, weights: torch.Tensor) -> DecoderTrace:
    """A trace of 1 image whose only content is the given attention ``[L, Q, H, P, ...]``."""
    layers, q = points.shape[:2]
    boxes = BOX.expand(layers, 1, q, 4).clone()
    logits = torch.zeros(layers, 1, q, 3)
    return DecoderTrace(
        enc_topk_indices=torch.arange(q)[None],
        enc_topk_logits=logits[0],
        init_boxes=boxes[0],
        pre_boxes=None,
        pre_logits=None,
        boxes=boxes,
        logits=logits,
        logits_raw=logits,
        corners=None,
        project=None,
        reg_scale=None,
        up=None,
        spatial_shapes=[(4, 4)],
        input_size=(64, 64),
        ablation="fdr",
        num_points=(points.shape[-2],),
        sampling_locations=points[:, None],
        attention_weights=weights[:, None],
        self_attention=torch.full((layers, 1, q, q), 1 / q),
        enc_objectness=torch.zeros(1, 16),
    )


def test_edge_distance_in_box_units():
    pts = torch.tensor(
        [
            [0.5, 0.5],  # centre: 0.5 of the box from every edge
            [0.3, 0.5],  # on the left edge
            [0.34, 0.5],  # inside, 10 % of the width from the left edge
            [0.5, 0.62],  # below the bottom edge by 10 % of the height
            [0.78, 0.64],  # outside a corner: (0.2, 0.2) box units
            [0.5, 0.45],  # inside: 25 % of the height from the top
        ]
    )
    d = edge_distance(pts, BOX)
    expected = torch.tensor([-0.5, 0.0, -0.1, 0.1, np.hypot(0.2, 0.2), -0.25])
    torch.testing.assert_close(d, expected.float(), rtol=0, atol=1e-6)


def test_all_weight_on_one_edge_is_all_near_an_edge():
    """Two heads, three points; every head puts all its weight on a point of the right edge
    (layer 0), at the centre (layer 1) or far outside (layer 2); the other points are
    elsewhere with no weight."""
    elsewhere = torch.tensor([[0.5, 0.5], [0.9, 0.9]])
    target = torch.tensor([[0.7, 0.55], [0.5, 0.5], [0.1, 0.1]])  # right edge, centre, outside
    points = torch.stack([torch.cat([t[None], elsewhere]) for t in target])  # [L, P, 2]
    points = points[:, None, None].expand(3, 1, 2, 3, 2).clone()  # [L, Q, H, P, 2]
    points[0, 0, 1, 0] = torch.tensor([0.4, 0.6])  # head 2 of layer 0: on the bottom edge
    weights = torch.zeros(3, 1, 2, 3)
    weights[..., 0] = 1.0
    trace = _trace(points, weights)
    shares = attention_shares(trace, torch.tensor([0]), torch.tensor([True]))
    tp = shares.true_positives
    assert tp.count == 1 and shares.false_positives.count == 0
    assert tp.near_edge[0] == 1.0 and tp.inside[0] == 0.0 and tp.outside[0] == 0.0
    assert (tp.inside[1], tp.near_edge[1], tp.outside[1]) == (1.0, 0.0, 0.0)
    assert (tp.inside[2], tp.near_edge[2], tp.outside[2]) == (0.0, 0.0, 1.0)
    hist = np.array(tp.histogram)
    np.testing.assert_allclose(hist.sum(1), 1.0)
    zero_bin = np.searchsorted(DISTANCE_BINS, 0.0, side="right") - 1
    # distance 0 (up to float32 rounding of the points): the two bins either side of 0
    assert hist[0, zero_bin - 1 : zero_bin + 1].sum() == 1.0
    assert hist[1, 0] == 1.0 and hist[2, -1] == 1.0  # centre: first bin; far: last (clipped)
    assert shares.false_positives.near_edge == [0.0, 0.0, 0.0]


def test_true_and_false_positives_are_averaged_apart():
    """Query 0 (TP) looks at an edge, queries 1 and 2 (FP) split half inside, half outside
    and all inside; a second TP query repeats query 0."""
    pts = torch.tensor([[0.3, 0.5], [0.5, 0.5], [0.95, 0.5]])  # edge, centre, outside
    points = pts[None, None, None].expand(1, 4, 1, 3, 2).clone()
    weights = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5], [0, 1.0, 0], [1.0, 0, 0]])
    trace = _trace(points, weights[None, :, None])
    queries = torch.tensor([0, 1, 2, 3])
    shares = attention_shares(trace, queries, torch.tensor([True, False, False, True]))
    tp, fp = shares.true_positives, shares.false_positives
    assert (tp.count, fp.count) == (2, 2)
    assert (tp.inside, tp.near_edge, tp.outside) == ([0.0], [1.0], [0.0])
    assert (fp.inside, fp.near_edge, fp.outside) == ([0.75], [0.0], [0.25])
    mass = attention_mass(trace, queries, BOX.expand(4, 4))
    torch.testing.assert_close(mass[..., :3].sum(-1), torch.ones(1, 4, dtype=torch.float64))
    again = AttentionShares.from_dict(json.loads(json.dumps(shares.to_dict())))
    assert again == shares


def test_shares_of_a_real_trace_sum_to_one():
    torch.manual_seed(0)
    model = dfine.build_model("n", ablation="fdr")  # ablation models have attention too
    trace = model.trace(torch.rand(1, 3, 320, 320))
    q = torch.arange(0, 300, 7)
    shares = attention_shares(trace, q, q % 2 == 0)
    for g in (shares.true_positives, shares.false_positives):
        total = np.array(g.inside) + np.array(g.near_edge) + np.array(g.outside)
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        np.testing.assert_allclose(np.array(g.histogram).sum(1), 1.0, atol=1e-5)
    assert shares.layers == ["layer 1", "layer 2", "layer 3"]
    assert shares.true_positives.count == len(q[q % 2 == 0])
    with pytest.raises(ValueError, match="attention=False"):
        attention_shares(model.trace(torch.rand(1, 3, 320, 320), attention=False), q, q > 0)
