"""Comparing two models on one image (analysis.compare and its figures): the demo D-FINE
against a model without distributions (``--ablate fdr``) on an annotated synthetic example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import analysis
import dfine
from analysis import figures
from analysis.refinement import STAGE_PRE
from tests.app_util import DEMO

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "assets" / "examples" / "synth"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    demo = dfine.load_model(DEMO)
    fdr = dfine.build_model("n", num_classes=8, ablation="fdr").eval()
    coco = json.loads((SYNTH / "instances_val.json").read_text())
    image = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64)
    objects = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    labels = np.array([a["category_id"] - 1 for a in anns], dtype=np.int64)
    size = (image["width"], image["height"])
    det = dfine.Detector(demo, threshold=0.0)
    _, trace_demo, _ = det.trace(SYNTH / image["file_name"])
    _, trace_fdr, _ = dfine.Detector(fdr, threshold=0.0, size=320).trace(SYNTH / image["file_name"])
    return trace_demo, trace_fdr, objects, labels, size


def test_refinement_comparison_scores_each_model_on_the_same_objects(setup):
    trace_demo, trace_fdr, objects, labels, size = setup
    cmp = analysis.compare_refinement(
        [trace_demo, trace_fdr], ["demo", "fdr"], objects, labels, size
    )
    demo, fdr = cmp.models
    assert demo.stages == [STAGE_PRE, "layer 1", "layer 2", "layer 3"]
    assert fdr.stages == ["layer 1", "layer 2", "layer 3"] and cmp.stages == demo.stages
    assert demo.iou.shape == (4, len(labels)) and fdr.iou.shape == (3, len(labels))
    # the trained demo model localises the annotated shapes; the random model does not
    assert demo.mean_iou[-1] > 0.8 and fdr.mean_iou[-1] < demo.mean_iou[-1] - 0.3
    # the IoU is that of the matched query's own box
    q = demo.queries[0]
    box = analysis._common.cxcywh_to_xyxy_px(trace_demo.boxes[-1, 0, q].double().numpy(), size)
    assert demo.iou[-1, 0] == pytest.approx(analysis._common.pairwise_iou(box, objects[0]))
    fig = figures.refinement_comparison_figure(cmp)
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert names == {f"demo: mean of {len(labels)}", f"fdr: mean of {len(labels)}"}
    assert "ground truth" in fig.layout.yaxis.title.text


def test_edge_comparison_places_both_models_on_the_image_axis(setup):
    trace_demo, trace_fdr, objects, labels, size = setup
    cmp = analysis.compare_edge(
        [trace_demo, trace_demo, trace_fdr], ["a", "b", "fdr"], objects[0], labels[0], size, "left"
    )
    a, b, fdr = cmp.models
    assert a.query == b.query and np.array_equal(a.probs, b.probs)
    assert a.probs.shape == (3, 33) and np.allclose(a.probs.sum(-1), 1.0)
    # the expectation of the distribution on the image axis is the layer's left edge
    assert np.allclose((a.probs * a.bin_positions_px).sum(-1), a.position_px, atol=1e-3)
    assert abs(a.position_px[-1] - objects[0, 0]) < 5.0  # the demo model finds the edge
    assert not fdr.has_distributions and fdr.position_px.shape == (3,)
    fig = figures.edge_comparison_figure(cmp)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 * 3  # two models with distributions × three layers
    assert any("box edge only" in (t.name or "") for t in fig.data)
    # zoomed to where the probability is (not W(n)'s whole span), every edge line inside
    lo, hi = fig.layout.xaxis.range
    span = a.bin_positions_px.max() - a.bin_positions_px.min()
    assert hi - lo < 0.8 * span
    for m in cmp.models:
        assert lo < m.position_px.min() and m.position_px.max() < hi
    assert lo < objects[0, 0] < hi
    order = np.argsort(a.bin_positions_px)
    inside = (a.bin_positions_px[order] > lo) & (a.bin_positions_px[order] < hi)
    assert (a.probs[:, order][:, inside].sum(-1) > 0.99).all()
    with pytest.raises(ValueError, match="edge"):
        analysis.compare_edge([trace_demo], ["a"], objects[0], labels[0], size, "middle")


def test_analysis_of_a_model_without_distributions_explains(setup):
    _, trace_fdr, _, _, size = setup
    from dfine.nn.decoder import NoDistributionsError

    with pytest.raises(NoDistributionsError, match="--ablate fdr"):
        analysis.edge_distributions(trace_fdr, 0, size)
    with pytest.raises(NoDistributionsError, match="--ablate fdr"):
        analysis.model_weighting(trace_fdr)
    ref = analysis.refinement(trace_fdr, [0, 1], size)  # boxes per layer need no distributions
    assert ref.stages == ["encoder (b0)", "layer 1", "layer 2", "layer 3"]
    assert ref.edge_offsets_px.shape == (3, 2, 4)
    assert ref.to_table()[1]["offset_left_px"] is not None  # layer 1 measured from b0
