"""analysis/ renderings on a small synthetic trace with known distributions: the overlays,
the plotly figures and their static (PNG/SVG) export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import analysis as A
from analysis import export as EX
from analysis import figures as F
from dfine.detections import Detections
from dfine.errors import MissingDependencyError
from dfine.loss import build_criterion
from dfine.nn.decoder import DecoderTrace
from dfine.nn.fdr import distance2bbox, integral, weighting_function

SIZE = (320, 240)  # width, height of the synthetic image
NUM_LAYERS, NUM_QUERIES, NUM_CLASSES = 3, 6, 4
# two well-separated large boxes (normalised cxcywh) with known edge distributions:
# per query and edge the target offset (W units) and the spread of the last layer (W units)
PRE = [[0.3, 0.45, 0.4, 0.5], [0.75, 0.5, 0.3, 0.6]]
MEANS = [[0.3, -0.2, 0.8, 0.1], [0.0, 0.1, -0.2, 0.3]]
SPREADS = [[0.15, 0.3, 0.05, 0.6], [0.1, 0.1, 0.1, 0.1]]


def synthetic_trace(seed: int = 0) -> DecoderTrace:
    """A one-image trace whose boxes follow from its corners exactly as in the decoder."""
    g = torch.Generator().manual_seed(seed)
    w = weighting_function(32, 0.5, 4.0)
    pre = torch.rand(1, NUM_QUERIES, 4, generator=g) * 0.2 + 0.3
    pre[0, : len(PRE)] = torch.tensor(PRE)
    corners = torch.randn(NUM_LAYERS, 1, NUM_QUERIES, 4, 33, generator=g)
    for i in range(len(PRE)):
        for layer in range(NUM_LAYERS):  # sharper and closer to the target layer by layer
            mu = torch.tensor(MEANS[i]) * (layer + 1) / NUM_LAYERS
            s = torch.tensor(SPREADS[i]) * (NUM_LAYERS - layer)
            corners[layer, 0, i] = -((w[None] - mu[:, None]) ** 2) / (2 * s[:, None] ** 2)
    refs = pre[None].expand(NUM_LAYERS, -1, -1, -1)
    boxes = distance2bbox(refs, integral(corners.flatten(-2), w), 4.0)
    logits = torch.randn(NUM_LAYERS, 1, NUM_QUERIES, NUM_CLASSES, generator=g)
    return DecoderTrace(
        enc_topk_indices=torch.arange(NUM_QUERIES)[None],
        enc_topk_logits=torch.randn(1, NUM_QUERIES, NUM_CLASSES, generator=g),
        init_boxes=pre * 0.9,
        pre_boxes=pre,
        pre_logits=torch.randn(1, NUM_QUERIES, NUM_CLASSES, generator=g),
        boxes=boxes,
        logits=logits,
        logits_raw=logits,
        corners=corners,
        project=w,
        reg_scale=4.0,
        up=0.5,
        spatial_shapes=[(8, 8)],
        input_size=(256, 256),
    )


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return (rng.integers(90, 110, (SIZE[1], SIZE[0], 3))).astype(np.uint8)


@pytest.fixture(scope="module")
def detections(trace, image):
    ref = A.refinement(trace, [0, 1], SIZE, labels=[1, 2])
    return Detections(
        boxes=ref.boxes_xyxy[-1],
        scores=[0.9, 0.8],
        labels=[1, 2],
        class_names=("a", "cat", "dog", "b"),
        image_size=SIZE,
        image=image,
    )


@pytest.fixture(scope="module")
def report(trace, detections):
    targets = A.pseudo_targets(detections, min_score=0.5)
    return A.golsd(trace, targets, build_criterion(num_classes=NUM_CLASSES), image_size=SIZE)


def _changed(a: Image.Image, b: np.ndarray) -> np.ndarray:
    return np.any(np.asarray(a) != b, axis=-1)


# ----------------------------------------------------------------------------- overlays
def test_uncertainty_overlay_draws_sigma_bands(trace, image, detections):
    out = A.uncertainty_overlay(image, detections, trace, [0, 1])
    assert isinstance(out, Image.Image) and out.size == SIZE and out.mode == "RGB"
    changed = _changed(out, image)
    d = A.edge_distributions(trace, 0, SIZE)
    x1, y1, _, y2 = d.edge_positions_px[-1]
    s_left = d.std_px[-1, 0]
    assert s_left > 4  # the synthetic left edge is wide enough to measure its band
    row = int((y1 + y2) / 2)
    assert changed[row, round(x1 - 0.6 * s_left)] and changed[row, round(x1 + 0.6 * s_left)]
    assert not changed[row, round(x1 + s_left + 4)]  # inside the box, outside the band
    assert not changed[row, round(x1 - s_left - 4)]  # outside the box, outside the band
    assert not changed[2, SIZE[0] // 2 - 30]  # away from boxes, tags and legend (top middle)
    assert changed[SIZE[1] - 12, 12]  # the legend, bottom left
    assert changed.mean() < 0.6


def test_uncertainty_overlay_scale_layer_and_checks(trace, image, detections):
    one = _changed(A.uncertainty_overlay(image, detections, trace, [0, 1]), image).sum()
    three = _changed(A.uncertainty_overlay(image, detections, trace, [0, 1], scale=3.0), image)
    assert three.sum() > one  # wider bands
    first = A.uncertainty_overlay(Image.fromarray(image), detections, trace, [0, 1], layer=0)
    assert _changed(first, image).sum() > one  # layer 1 is more uncertain in the synthetic trace
    with pytest.raises(ValueError, match="scale"):
        A.uncertainty_overlay(image, detections, trace, [0, 1], scale=0)
    with pytest.raises(ValueError, match="layer"):
        A.uncertainty_overlay(image, detections, trace, [0, 1], layer=3)
    with pytest.raises(ValueError, match="queries"):
        A.uncertainty_overlay(image, detections, trace, [0])
    with pytest.raises(ValueError, match="320x240"):
        A.uncertainty_overlay(image[:100], detections, trace, [0, 1])


def test_refinement_overlay(trace, image):
    ref = A.refinement(trace, [0, 1], SIZE, labels=[1, 2])
    out = A.refinement_overlay(image, ref, "layer 2", class_names=("a", "cat", "dog", "b"))
    assert out.size == SIZE
    changed = _changed(out, image)
    x1, y1, _, y2 = ref.boxes_xyxy[3, 0]
    assert changed[int((y1 + y2) / 2), round(x1)]  # the left edge of the chosen stage
    plain = _changed(A.refinement_overlay(image, ref, 3, ghost_previous=False), image)
    assert changed.sum() > plain.sum()  # the ghosted previous stage adds pixels
    with pytest.raises(ValueError, match="stage"):
        A.refinement_overlay(image, ref, "layer 9")


# ----------------------------------------------------------------------------- plotly
def _axis_titles(fig, prefix: str) -> list[str]:
    layout = fig.layout.to_plotly_json()
    return [
        v["title"]["text"]
        for k, v in layout.items()
        if k.startswith(prefix) and "text" in v.get("title", {})
    ]


def test_refinement_figure(trace):
    ref = A.refinement(trace, [0, 1, 4], SIZE)
    fig = F.refinement_figure(ref, detection=1)
    assert len(fig.data) == 3 + 4
    assert [t.type for t in fig.data] == ["scatter"] * 3 + ["bar"] * 4
    np.testing.assert_allclose(fig.data[4].y, ref.edge_moves_px[:, 1, 1])
    ys, xs = _axis_titles(fig, "yaxis"), _axis_titles(fig, "xaxis")
    assert any("IoU" in t and "(0–1)" in t for t in ys) and any("(px" in t for t in ys)
    assert "stage" in xs and "stage transition" in xs
    empty = F.refinement_figure(A.refinement(trace, [], SIZE))
    assert len(empty.data) == 0
    with pytest.raises(ValueError, match="detection"):
        F.refinement_figure(ref, detection=3)


def test_distribution_figure(trace):
    d = A.edge_distributions(trace, 1, SIZE)
    fig = F.distribution_figure(d)
    # per cell: bars and the expectation; from the second layer on, the previous as outline
    assert len(fig.data) == 2 * NUM_LAYERS * 4 + 4 * (NUM_LAYERS - 1)
    bars = [t for t in fig.data if t.type == "bar"]
    np.testing.assert_allclose(bars[0].x, d.offsets_px[0])  # pixels, not bin index
    np.testing.assert_allclose(bars[-1].y, d.probs[-1, 3])
    marks = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert marks[5].x[0] == pytest.approx(d.expected_px[1, 1])
    assert marks[5].error_x.value == pytest.approx(d.std_px[1, 1])
    xs = _axis_titles(fig, "xaxis")
    assert len(xs) == 4 and all("(px, + = outward)" in t for t in xs)
    assert all(t.endswith(": p") for t in _axis_titles(fig, "yaxis"))


def test_distribution_windows():
    x = np.array([-8.0, -2.0, 0.0, 1.0, 4.0])
    np.testing.assert_allclose(A.distributions.cell_bounds(x), [-11, -5, -1, 0.5, 2.5, 5.5])
    probs = np.zeros((2, 4, 5))
    probs[:, :, 2] = 0.9995  # one confident layer ...
    probs[:, :, 3] = 0.0005
    probs[1, 0] = [0.0, 0.2, 0.6, 0.2, 0.0]  # ... and a spread one
    d = A.EdgeDistributions(
        query=0, image_size=(100, 100), layers=["layer 1", "layer 2"], edges=A.EDGES,
        project=x, probs=probs, offsets_px=np.tile(x, (4, 1)), expected_px=np.zeros((2, 4)),
        neighbour_bins=np.tile([2, 3], (2, 4, 1)), neighbour_offsets_px=np.tile([0.0, 1.0], (2, 4, 1)),
        entropy=np.zeros((2, 4)), std_px=np.full((2, 4), 0.1), reference_edges_px=np.zeros(4),
        edge_positions_px=np.zeros((2, 4)),
    )  # fmt: skip
    assert d.mass_window(1) == (2, 2)  # the 0.05 % tail is cut
    assert d.mass_window(0) == (1, 3)  # the union over layers
    lo, hi = d.x_window(1)
    assert -1 > lo > -1.5 and 0.5 < hi < 1.0  # bin 2's span (-1..0.5) plus 15 %
    assert d.x_window(1, x_range="full") == (-11.0, 5.5)
    assert d.x_window(0, axis="bin", x_range="full") == (-0.5, 4.5)
    assert d.expected_bin(0, 0) == 2.0


def test_weighting_figure(trace):
    curve = A.weighting_curve(16, 1.0, 8.0)
    fig = F.weighting_figure(curve)
    assert len(fig.data) == 4
    np.testing.assert_allclose(fig.data[0].y, curve.w / 8.0, rtol=1e-6)
    with_model = F.weighting_figure(curve, A.model_weighting(trace))
    assert len(with_model.data) == 6 and "model" in with_model.data[2].name
    ys = _axis_titles(fig, "yaxis")
    assert any("× box width or height" in t for t in ys)
    assert all("bin index n" in t for t in _axis_titles(fig, "xaxis"))
    notes = " ".join(a.text for a in fig.layout.annotations)
    assert "evenly spaced" in notes and "GFocal" in notes


def test_golsd_figures(report):
    q = int(report.ranked_queries()[0])
    dist = F.golsd_distribution_figure(report, q, "top")
    assert len(dist.data) == 1 + (NUM_LAYERS - 1)
    np.testing.assert_allclose(dist.data[0].y, report.teacher_probs[q, 1])
    np.testing.assert_allclose(dist.data[0].x, report.offsets_px[q, 1])
    assert "px" in dist.layout.xaxis.title.text and "T = 5" in dist.layout.yaxis.title.text
    assert "pseudo ground truth" in dist.layout.title.text
    kl = F.golsd_kl_figure(report, q)
    assert len(kl.data) == 4 and "nats" in kl.layout.yaxis.title.text
    assert "pseudo ground truth" in kl.layout.title.text
    loss = F.golsd_loss_figure(report)
    assert len(loss.data) == 2
    np.testing.assert_allclose(np.add(loss.data[0].y, loss.data[1].y), report.loss_ddf, rtol=1e-6)
    assert "DDF loss" in loss.layout.yaxis.title.text
    table = F.golsd_weights_figure(report, top=4)
    assert len(table.data) == 1 and table.data[0].type == "table"
    assert "KL layer 1 (nats)" in table.data[0].header.values
    assert len(table.data[0].cells.values[0]) == 4
    assert "pseudo ground truth" in table.layout.title.text
    with pytest.raises(ValueError, match="edge"):
        F.golsd_distribution_figure(report, q, "middle")
    with pytest.raises(ValueError, match="query"):
        F.golsd_kl_figure(report, NUM_QUERIES)


# ----------------------------------------------------------------------------- static export
@pytest.mark.chromium
def test_static_export_is_the_plotly_figure(trace, report, tmp_path):
    """PNG and SVG come from the plotly figure objects themselves (one kaleido session, ~3 s):
    the SVG carries the figure's own title and axis titles."""
    ref = A.refinement(trace, [0, 1], SIZE)
    figs = {
        "refinement": F.refinement_figure(ref, 1),
        "golsd_weights": F.golsd_weights_figure(report, top=4),
    }
    items = [
        (fig, tmp_path / ext / f"{n}.{ext}") for n, fig in figs.items() for ext in ("png", "svg")
    ]
    paths = EX.save_figures(items)
    assert [p.name for p in paths] == [
        "refinement.png", "refinement.svg", "golsd_weights.png", "golsd_weights.svg"
    ]  # fmt: skip
    png = Image.open(paths[0])
    assert png.format == "PNG" and png.size == (EX.WIDTH * EX.SCALE, 760 * EX.SCALE)
    svg = paths[1].read_text()
    assert svg.lstrip().startswith("<svg") and "Layer-by-layer box refinement" in svg
    assert "IoU" in svg and "(px" in svg
    assert "DDF weights" in paths[3].read_text()


def test_static_export_without_a_browser_is_one_user_error(trace, tmp_path, no_chromium):
    """No Chromium: the user-error type with one line (why, how to get one), nothing written
    and no browser started; the interactive HTML needs none."""
    fig = F.refinement_figure(A.refinement(trace, [0, 1], SIZE), 1)
    with pytest.raises(MissingDependencyError) as err:
        EX.save_figures([(fig, tmp_path / "a.png"), (fig, tmp_path / "a.svg")])
    text = str(err.value)
    assert "\n" not in text and "DFINE_CHROMIUM=none" in text and "apt-get install" in text
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="png or svg"):
        EX.save_figure(fig, tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()
    page = EX.save_html(fig, tmp_path / "fig.html").read_text()
    assert "Layer-by-layer box refinement" in page and "<script src" not in page


def test_wrap_breaks_at_spaces_and_keeps_line_breaks():
    assert F.wrap("aaa bbb ccc", 7) == "aaa bbb<br>ccc"
    assert F.wrap("one<br>two three", 5) == "one<br>two<br>three"
    assert F.wrap("a verylongword b", 4) == "a<br>verylongword<br>b"  # words stay whole
    assert F.wrap("", 5) == "" and F.wrap("a<br><br>b", 5) == "a<br><br>b"
    text = "per-edge distributions of the decoder layers, σ in pixels of the original image"
    lines = F.wrap(text, 20).split("<br>")
    assert " ".join(lines) == text and all(len(line) <= 20 for line in lines)
