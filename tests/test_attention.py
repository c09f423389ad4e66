"""Deformable-attention tracing: the sampling geometry on a hand-built module, the trace
fields (shapes, normalisation, batch selection, ablation models), and letterbox mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dfine
from dfine.nn.attention import MSDeformableAttention, deformable_attention
from dfine.preprocess import Letterbox, letterbox_tensor
from tests.app_util import DEMO, SYNTH_EXAMPLE

HEADS, POINTS = 2, (2, 1)  # 2 levels: 2 points on the first, 1 on the second


def _hand_built() -> MSDeformableAttention:
    """Offsets and weights independent of the query: weight matrices zero, biases known."""
    attn = MSDeformableAttention(embed_dim=4, num_heads=HEADS, num_levels=2, num_points=POINTS)
    offsets = torch.tensor(
        [  # [heads, P, 2] (dx, dy)
            [[1.0, 0.0], [0.0, -2.0], [4.0, 4.0]],
            [[-1.0, 1.0], [2.0, 0.0], [0.0, 0.0]],
        ]
    )
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, float(np.log(2.0)), float(np.log(5.0))]])
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(offsets.flatten())
        attn.attention_weights.weight.zero_()
        attn.attention_weights.bias.copy_(logits.flatten())
    return attn


def test_sampling_geometry_is_exact():
    """location = centre + offset / points_of_its_level × box size × 0.5 (offset_scale)."""
    attn = _hand_built()
    box = torch.tensor([0.5, 0.25, 0.4, 0.2])  # cx, cy, w, h
    ref = box.reshape(1, 1, 1, 4)
    locations, weights = attn.sampling(torch.randn(1, 1, 4), ref)
    expected = torch.tensor(
        [
            [[0.5 + 1 / 2 * 0.4 * 0.5, 0.25], [0.5, 0.25 - 2 / 2 * 0.2 * 0.5], [1.3, 0.65]],
            [[0.5 - 0.1, 0.25 + 1 / 2 * 0.2 * 0.5], [0.5 + 2 / 2 * 0.4 * 0.5, 0.25], [0.5, 0.25]],
        ]
    )
    torch.testing.assert_close(locations[0, 0], expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(weights[0, 0, 0], torch.full((3,), 1 / 3))
    torch.testing.assert_close(weights[0, 0, 1], torch.tensor([1 / 8, 2 / 8, 5 / 8]))


def test_sampling_location_is_a_position_in_the_input():
    """A location (x, y) in [0, 1] samples the value map at pixel (x·W − ½, y·H − ½): with all
    the weight on one point and a map whose value is its column (or row) index, the output is
    that coordinate, at every level and whatever the map's size."""
    shapes = [(8, 12), (4, 6)]
    loc = torch.tensor([0.30, 0.70])
    for level, (h, w) in enumerate(shapes):
        cols = torch.arange(w, dtype=torch.float32).expand(h, w)
        rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        values = []
        for lh, lw in shapes:  # 2 channels: column, row (zero on the other level)
            hit = (lh, lw) == (h, w)
            v = torch.stack([cols, rows]) if hit else torch.zeros(2, lh, lw)
            values.append(v.reshape(1, 1, 2, lh * lw))
        locations = loc.expand(1, 1, 1, 3, 2).clone()
        weights = torch.zeros(1, 1, 1, 3)
        weights[..., 0 if level == 0 else 2] = 1.0
        out = deformable_attention(values, shapes, locations, weights, list(POINTS))
        torch.testing.assert_close(out[0, 0], torch.tensor([0.30 * w - 0.5, 0.70 * h - 0.5]))


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = dfine.build_model("n").eval()
    with torch.no_grad():  # give the attention heads something to do
        for layer in model.decoder.decoder.layers:
            layer.cross_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.cross_attn.attention_weights.weight.normal_(0, 0.05)
    x = torch.rand(2, 3, 320, 256)
    return model, x, model.trace(x), model.trace(x, attention=False)


def test_trace_attention_fields(traced):
    model, _, t, _ = traced
    layers, q = model.decoder.num_layers, model.decoder.num_queries
    assert t.num_points == (6, 6) and t.point_levels.tolist() == [0] * 6 + [1] * 6
    assert t.level_strides == [16, 32] and t.has_attention
    assert t.sampling_locations.shape == (layers, 2, q, 8, 12, 2)
    assert t.attention_weights.shape == (layers, 2, q, 8, 12)
    assert t.self_attention.shape == (layers, 2, q, q)
    s = t.attention_weights.sum(-1)
    torch.testing.assert_close(s, torch.ones_like(s))
    s = t.self_attention.sum(-1)
    torch.testing.assert_close(s, torch.ones_like(s))
    assert (t.attention_weights.std(-1) > 0).all()  # not the uniform init
    # the points lie around their layer's reference box: layer l samples around box l-1
    centre = torch.cat([t.init_boxes[None], t.boxes[:-1]])[..., None, None, :2]
    half = torch.cat([t.init_boxes[None], t.boxes[:-1]])[..., None, None, 2:]
    assert ((t.sampling_locations - centre).abs() <= half * 6 * 0.5 + 1e-6).all()
    # objectness: the sigmoid of the logit query selection ranked by, on the memory grid
    assert t.enc_objectness.shape == (2, 20 * 16 + 10 * 8)
    chosen = t.enc_objectness.gather(1, t.enc_topk_indices)
    torch.testing.assert_close(chosen, t.enc_topk_logits.max(-1).values.sigmoid())
    maps = t.objectness_maps()
    assert [tuple(m.shape) for m in maps] == [(2, 20, 16), (2, 10, 8)]
    assert torch.equal(maps[1].flatten(1), t.enc_objectness[:, 320:])
    kth = t.enc_objectness.sort(-1, descending=True).values[:, q - 1]  # the top-q are chosen
    assert torch.equal(chosen.min(-1).values, kth)


def test_attention_recording_changes_nothing_else(traced):
    model, x, t, plain = traced
    assert plain.sampling_locations is None and plain.enc_objectness is None
    assert not plain.has_attention and plain.num_points == (6, 6)
    for name in ("boxes", "logits", "corners", "pre_boxes", "enc_topk_indices"):
        assert torch.equal(getattr(t, name), getattr(plain, name)), name
    with torch.inference_mode():
        out = model(x)
    assert torch.equal(out["pred_boxes"], t.boxes[-1])
    with pytest.raises(ValueError, match="attention=False"):
        plain.objectness_maps()


def test_select_keeps_attention_of_one_image(traced):
    _, _, t, _ = traced
    one = t.select(1)
    assert torch.equal(one.sampling_locations[:, 0], t.sampling_locations[:, 1])
    assert torch.equal(one.attention_weights[:, 0], t.attention_weights[:, 1])
    assert torch.equal(one.self_attention[:, 0], t.self_attention[:, 1])
    assert torch.equal(one.enc_objectness[0], t.enc_objectness[1])
    assert one.num_points == t.num_points


def test_training_keeps_no_attention():
    """Training takes the plain path: the layers get no record list."""
    model = dfine.build_model("n", ablation="fdr")
    model.decoder.num_denoising = 0
    seen = []
    for layer in model.decoder.decoder.layers:
        layer.register_forward_pre_hook(lambda m, args: seen.append(args[6]))
    model(torch.rand(1, 3, 320, 320))
    assert seen == [None] * 3


@pytest.mark.parametrize("ablation", ["fdr", "golsd"])
def test_ablation_models_have_attention(ablation):
    torch.manual_seed(1)
    model = dfine.build_model("n", ablation=ablation)
    t = model.trace(torch.rand(1, 3, 320, 320))
    assert t.sampling_locations.shape == (3, 1, 300, 8, 12, 2)
    assert t.self_attention.shape == (3, 1, 300, 300)
    assert t.enc_objectness.shape == (1, 500)
    assert t.has_distributions == (ablation != "fdr")


def test_points_map_out_of_the_letterbox_like_boxes():
    lb = Letterbox(scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=40)  # 640×480 → 320×240 + 40 px
    pts = torch.tensor([[0.25, 0.125], [0.5, 0.5], [1.0, 1.0], [0.0, 0.0]])
    out = lb.points_to_original_normalized(pts, (320, 320), (640, 480))
    # x: 0.25·320 px → /0.5 → 160 px of 640; y: 0.125·320 = 40 px → (40 − 40)/0.5 = 0
    expected = torch.tensor([[0.25, 0.0], [0.5, 0.5], [1.0, 560 / 480], [0.0, -80 / 480]])
    torch.testing.assert_close(out, expected)
    boxes = torch.tensor([[0.3, 0.6, 0.2, 0.1]])
    mapped = lb.to_original_normalized(boxes, (320, 320), (640, 480))
    torch.testing.assert_close(
        lb.points_to_original_normalized(boxes[:, :2], (320, 320), (640, 480)), mapped[:, :2]
    )


def test_letterboxed_trace_maps_points_to_original_pixels():
    """``Detector.trace`` with letterbox: every point of the raw trace (in the padded input)
    is mapped by the letterbox's own inverse, and ``input_extent`` is the input's rectangle."""
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    square = np.asarray(Image.open(SYNTH_EXAMPLE).convert("RGB"))
    tall = np.full((560, 320, 3), 114, np.uint8)
    tall[100:420] = square
    det = dfine.Detector(DEMO, threshold=0.2, size=320, letterbox=True)
    _, trace, _ = det.trace(tall)
    x, lb = letterbox_tensor(tall, (320, 320))
    raw = det.model.trace(x)
    px = raw.sampling_locations * 320  # input pixels
    orig_x = (px[..., 0] - lb.pad_x) / lb.scale_x / 320
    orig_y = (px[..., 1] - lb.pad_y) / lb.scale_y / 560
    torch.testing.assert_close(trace.sampling_locations, torch.stack([orig_x, orig_y], -1))
    assert torch.equal(trace.attention_weights, raw.attention_weights)
    x0, y0, x1, y1 = trace.input_extent
    assert (x0, y0) == pytest.approx((-lb.pad_x / lb.scale_x / 320, 0.0), abs=1e-6)
    assert (x1, y1) == pytest.approx(((320 - lb.pad_x) / lb.scale_x / 320, 1.0), abs=1e-6)
    assert det.model.trace(x).input_extent == (0.0, 0.0, 1.0, 1.0)
