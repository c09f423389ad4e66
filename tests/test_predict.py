"""Detector: image in, Detections out; trace alignment; speed breakdown."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dfine
from dfine.io import ImageLoadError
from tests.app_util import DEMO, SYNTH_EXAMPLE
from tests.conftest import reference_file

EXAMPLE = "assets/examples/astronaut.jpg"
SYNTH_IMAGE = SYNTH_EXAMPLE  # 6 shapes
SYNTH_WEIGHTS = DEMO


@pytest.fixture(scope="module")
def detector():
    # random-init weights give low scores; a low threshold still returns detections
    return dfine.Detector(reference_file("dfine_n_perturbed_random_official.pth"), threshold=0.005)


def test_detections_in_original_pixels(detector):
    dets = detector(EXAMPLE)
    w, h = Image.open(EXAMPLE).size
    assert dets.image_size == (w, h) and len(dets) > 0
    assert (dets.boxes[:, [0, 2]] >= 0).all() and (dets.boxes[:, [0, 2]] <= w).all()
    assert (dets.boxes[:, [1, 3]] >= 0).all() and (dets.boxes[:, [1, 3]] <= h).all()
    assert (np.diff(dets.scores) <= 0).all() and (dets.scores > 0.005).all()
    assert set(dets.speed) == {"preprocess", "inference", "postprocess"}
    assert all(v > 0 for v in dets.speed.values())
    assert dets.names[0] in dfine.coco.COCO_CLASSES


def test_matches_model_plus_postprocess(detector):
    """The detector is model → postprocess in original pixels, nothing more (before clipping)."""
    rgb, x = detector.preprocess(EXAMPLE)
    with torch.inference_mode():
        out = detector.model(x)
    res = dfine.postprocess(out, torch.tensor([[rgb.shape[1], rgb.shape[0]]]))[0]
    keep = res["scores"] > 0.005
    dets = detector(EXAMPLE)
    np.testing.assert_allclose(dets.scores, res["scores"][keep].numpy())
    ref_boxes = res["boxes"][keep].numpy()
    ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clip(0, rgb.shape[1])
    ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clip(0, rgb.shape[0])
    np.testing.assert_allclose(dets.boxes, ref_boxes, rtol=0, atol=1e-3)


def test_same_result_for_every_source_kind(detector):
    ref = detector(EXAMPLE)
    data = Path(EXAMPLE).read_bytes()
    pil = Image.open(EXAMPLE)
    rgb = np.asarray(pil.convert("RGB"))
    for source, order in [
        (data, "RGB"),
        (io.BytesIO(data), "RGB"),
        (pil, "RGB"),
        (rgb, "RGB"),
        (rgb[..., ::-1].copy(), "BGR"),
    ]:
        dets = detector(source, color_order=order)
        np.testing.assert_array_equal(dets.labels, ref.labels)
        np.testing.assert_allclose(dets.boxes, ref.boxes, atol=1e-4)


def test_trace_is_aligned_with_detections(detector):
    dets, trace, queries = detector.trace(EXAMPLE)
    assert len(queries) == len(dets) and trace.boxes.shape[:3] == (3, 1, 300)
    w, _h = dets.image_size
    last = trace.boxes[-1, 0, queries]  # cxcywh normalized
    x1 = (last[:, 0] - last[:, 2] / 2).clamp(0, 1) * w
    np.testing.assert_allclose(dets.boxes[:, 0], x1.numpy(), atol=1e-3)
    scores = trace.logits[-1, 0, queries].sigmoid().max(-1).values
    assert (scores.numpy() >= dets.scores - 1e-6).all()


def test_threshold_size_and_errors(detector):
    assert len(detector(EXAMPLE, threshold=1.0)) == 0
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        detector(EXAMPLE, threshold=1.5)
    with pytest.raises(ValueError, match="multiples of 32"):
        dfine.Detector(detector.model, size=300)
    with pytest.raises(ValueError, match="unknown backend"):
        dfine.Detector(detector.model, backend="nope")
    with pytest.raises(ImageLoadError):
        detector(b"not an image")
    small = dfine.Detector(detector.model, size=(320, 480), threshold=0.005)
    dets = small(EXAMPLE)
    assert dets.image_size == (512, 512) and len(dets) > 0


def test_batch_predict_equals_single(detector):
    single = [detector(p) for p in (EXAMPLE, "assets/examples/coffee.jpg")]
    batch = detector.predict([EXAMPLE, "assets/examples/coffee.jpg"])
    for a, b in zip(single, batch):
        assert a.image_size == b.image_size
        np.testing.assert_allclose(a.scores[:20], b.scores[:20], atol=1e-4)
    assert detector.predict([]) == []


def test_exact_mode_is_not_deployed():
    model = dfine.load_model(reference_file("dfine_n_random_official.pth"))
    exact = dfine.Detector(model, deploy=False)
    fast = dfine.Detector(model)
    assert not exact.model.deployed and fast.model.deployed
    assert not model.deployed  # the caller's model is never modified


def test_letterbox_maps_boxes_back_exactly():
    """A non-square image letterboxed into the input: the inverse map is exact, and the
    detections come back in the original image's pixels."""
    from dfine.preprocess import letterbox_tensor

    square = np.asarray(Image.open(SYNTH_IMAGE).convert("RGB"))
    wide = np.full((320, 560, 3), 114, np.uint8)  # the example pasted into a wide canvas
    wide[:, 120:440] = square
    x, lb = letterbox_tensor(wide, (320, 320))
    assert x.shape == (1, 3, 320, 320) and (lb.pad_x, lb.pad_y) == (0, 68)  # 183 rows of image
    corners = torch.tensor([[0.0, 0.0, 560.0, 320.0], [120.0, 10.0, 440.0, 300.0]])
    in_input = lb.to_input(corners)
    torch.testing.assert_close(in_input[0], torch.tensor([0.0, 68.0, 320.0, 251.0]))  # full width
    torch.testing.assert_close(lb.to_original(in_input), corners)  # original → input → back
    inside = torch.tensor([[10.0, 70.0, 200.0, 250.0]])  # input pixels → original → back
    torch.testing.assert_close(lb.to_input(lb.to_original(inside)), inside)
    # the normalised form is the same map: input-normalised cxcywh → original-normalised
    cxcywh = torch.tensor([[0.5, (68 + 183 / 2) / 320, 1.0, 183 / 320]])  # the whole image
    torch.testing.assert_close(
        lb.to_original_normalized(cxcywh, (320, 320), (560, 320)),
        torch.tensor([[0.5, 0.5, 1.0, 1.0]]),
    )

    # a non-square input: the wide image fits 320x576 at scale 1 with 8 px of grey each side
    x2, lb2 = letterbox_tensor(wide, (320, 576))
    assert x2.shape == (1, 3, 320, 576) and (lb2.pad_x, lb2.pad_y) == (8, 0)
    torch.testing.assert_close(
        lb2.to_original(torch.tensor([[8.0, 0.0, 568.0, 320.0]])),
        torch.tensor([[0.0, 0.0, 560.0, 320.0]]),
    )
    torch.testing.assert_close(x2[0, :, :, 8:568], x2.new_tensor(wide).permute(2, 0, 1) / 255)

    # end to end, at the model's own square input (the app's letterbox): an image 280 rows
    # high goes in at scale 1 with 20 rows of grey above and below, which is the stretch
    # resize (here none) of the image padded by hand, so the boxes differ by the pad only
    short = square[20:300]
    boxed = dfine.Detector(SYNTH_WEIGHTS, threshold=0.3, letterbox=True)
    found = boxed(short)
    padded = np.pad(short, ((20, 20), (0, 0), (0, 0)), constant_values=114)
    ref = dfine.Detector(SYNTH_WEIGHTS, threshold=0.3)(padded)
    assert boxed.letterbox and len(found) == len(ref) >= 6
    expected = np.clip(ref.boxes - np.array([0, 20, 0, 20]), 0, [320, 280, 320, 280])
    np.testing.assert_allclose(found.boxes, expected, atol=1e-3)
    np.testing.assert_array_equal(found.labels, ref.labels)


def _truth_xyxy(image_id: int) -> np.ndarray:
    coco = json.loads((SYNTH_IMAGE.parent / "instances_val.json").read_text())
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id]
    xywh = np.array(boxes, dtype=np.float64)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def test_letterbox_finds_known_boxes_in_a_scaled_padded_image():
    """The example scaled ×2 and padded to 640×704 (32 px of grey left and right),
    letterboxed into the model's 320² input (scale 320/704, grey above and below): the
    network sees the example at 0.91×, so the true boxes, in the big image's pixels, are found
    where they are (a wrong scale or offset would move the 14-32 px ones off their truth). The
    input stays the square the model was trained on: a non-square input such as 320×576 also
    shows the encoder positions it never saw, which tests the model, not the letterbox."""
    from analysis._common import pairwise_iou

    big = np.asarray(Image.open(SYNTH_IMAGE).convert("RGB").resize((640, 640), Image.NEAREST))
    wide = np.full((640, 704, 3), 114, np.uint8)
    wide[:, 32:672] = big
    truth = (_truth_xyxy(1) * 2) + np.array([32, 0, 32, 0])
    det = dfine.Detector(SYNTH_WEIGHTS, threshold=0.5, letterbox=True)
    found = det(wide)
    assert found.image_size == (704, 640) and len(found) >= 6
    best = pairwise_iou(truth[:, None], found.boxes[None]).max(axis=1)  # per true box
    assert (best > 0.8).all(), best


@pytest.mark.parametrize("size", [320, (320, 576)])
def test_letterbox_trace_equals_predict(size):
    """Under letterbox the trace's final-layer boxes (mapped out of the padding by the same
    map) are the detections' boxes, and every layer's boxes are in original pixels."""
    import analysis

    square = np.asarray(Image.open(SYNTH_IMAGE).convert("RGB"))
    tall = np.full((560, 320, 3), 114, np.uint8)  # non-square, the padding goes left/right
    tall[100:420] = square
    det = dfine.Detector(SYNTH_WEIGHTS, threshold=0.2, size=size, letterbox=True)
    found = det.predict([tall])[0]
    traced, trace, queries = det.trace(tall)
    assert len(found) == len(traced) >= 4 and traced.image_size == (320, 560)
    np.testing.assert_allclose(traced.boxes, found.boxes, atol=1e-3)
    np.testing.assert_allclose(traced.scores, found.scores, atol=1e-5)
    ref = analysis.refinement(trace, queries, traced.image_size, traced.labels)
    last = np.clip(ref.boxes_xyxy[-1], 0, [320, 560, 320, 560])
    np.testing.assert_allclose(last, found.boxes, atol=1e-3)
    # the edge distributions' pixel scale is the original image's: their expected edge is the
    # final box edge
    dist = analysis.edge_distributions(trace, int(queries[0]), traced.image_size)
    np.testing.assert_allclose(
        np.clip(dist.edge_positions_px[-1], 0, [320, 560, 320, 560]), found.boxes[0], atol=1e-2
    )
    # no box lies wholly in the padding, and the stretch default is unchanged
    assert (found.boxes[:, 2] > found.boxes[:, 0]).all()
    assert not dfine.Detector(SYNTH_WEIGHTS).letterbox


def test_postprocess_threshold():
    torch.manual_seed(0)
    out = {"pred_logits": torch.randn(2, 10, 3) * 3, "pred_boxes": torch.rand(2, 10, 4) * 0.5}
    sizes = torch.tensor([[640, 480], [320, 320]])
    every = dfine.postprocess(out, sizes, num_top=30)
    kept = dfine.postprocess(out, sizes, num_top=30, threshold=0.5)
    for a, b in zip(every, kept):
        assert len(a["scores"]) == 30  # the reference's behaviour: no threshold
        mask = a["scores"] > 0.5
        assert 0 < int(mask.sum()) < 30
        for key in ("labels", "boxes", "scores", "queries"):
            torch.testing.assert_close(b[key], a[key][mask])
    with pytest.raises(ValueError, match="threshold"):
        dfine.postprocess(out, sizes, threshold=2)


def test_no_weights_means_the_bundled_demo_model_as_in_the_cli():
    from dfine.resources import demo_weights

    det = dfine.Detector()
    assert det.weights == dfine.Detector(demo_weights()).weights
    assert Path(str(demo_weights())).name in repr(det)
