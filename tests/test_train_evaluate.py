"""COCO evaluation (dfine.train.evaluate) against hand-made predictions and pycocotools."""

from __future__ import annotations

import random

import pytest
import torch

from dfine.train.evaluate import (
    METRIC_NAMES,
    _merge_ranks,
    coco_metrics,
    evaluate,
    to_coco_detections,
)


def _gt() -> dict:
    """3 images, 2 categories with non-contiguous ids; a small, a medium and a large box."""
    boxes = [
        (1, 3, [100, 100, 100, 100]),  # large (area 10000 > 96^2)
        (1, 7, [300, 50, 50, 40]),  # medium
        (2, 7, [10, 10, 20, 20]),  # small
        (3, 3, [200, 200, 80, 120]),  # large
    ]
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"id": k + 1, "image_id": img, "category_id": cat, "bbox": box,
             "area": box[2] * box[3], "iscrowd": 0}
            for k, (img, cat, box) in enumerate(boxes)
        ],
    }  # fmt: skip


def _perfect(gt: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in gt["annotations"]
    ]


@pytest.mark.parametrize("coco_lib", ["faster_coco_eval", "pycocotools"])
def test_perfect_predictions_score_one(coco_lib):
    pytest.importorskip(coco_lib)
    m = coco_metrics(_gt(), _perfect(_gt()), coco_lib=coco_lib)
    assert list(m) == list(METRIC_NAMES)
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert m[k] == pytest.approx(1.0, abs=1e-9), k


@pytest.mark.parametrize("coco_lib", ["faster_coco_eval", "pycocotools"])
def test_empty_predictions_score_zero(coco_lib):
    pytest.importorskip(coco_lib)
    m = coco_metrics(_gt(), [], coco_lib=coco_lib)
    assert all(v == 0.0 for v in m.values())


def test_shifted_box_known_values():
    """One box, shifted so that IoU = 0.72: a hit at IoU thresholds .50..0.70 (5 of 10)."""
    gt = {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100],
             "area": 10000, "iscrowd": 0}
        ],
    }  # fmt: skip
    # shift by s along x: IoU = (100 - s) / (100 + s) = 0.72 -> s = 28 / 1.72
    s = 28 / 1.72
    det = [{"image_id": 1, "category_id": 1, "bbox": [100 + s, 100, 100, 100], "score": 0.5}]
    m = coco_metrics(gt, det)
    assert m["AP"] == pytest.approx(0.5)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)
    assert m["APl"] == pytest.approx(0.5) and m["APs"] == -1.0 and m["APm"] == -1.0
    assert m["AR100"] == pytest.approx(0.5)
    # a higher-scoring false positive of the same class halves the precision at every recall
    fp = {"image_id": 1, "category_id": 1, "bbox": [400, 300, 50, 50], "score": 0.9}
    m2 = coco_metrics(gt, [*det, fp])
    assert m2["AP50"] == pytest.approx(0.5, abs=1e-9)


def _random_case(seed: int) -> tuple[dict, list[dict]]:
    rng = random.Random(seed)
    images = [{"id": i, "width": 640, "height": 480} for i in range(1, 9)]
    cats = [{"id": c, "name": str(c)} for c in (1, 2, 5)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(4, 200), rng.uniform(4, 200)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = rng.choice(cats)["id"]
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            if rng.random() < 0.8:  # a jittered detection
                j = [v + rng.gauss(0, 6) for v in (x, y)] + [
                    w * rng.uniform(0.8, 1.2),
                    h * rng.uniform(0.8, 1.2),
                ]
                dets.append(
                    {"image_id": img["id"], "category_id": cat, "bbox": j, "score": rng.random()}
                )
        for _ in range(rng.randint(0, 3)):  # false positives
            dets.append({"image_id": img["id"], "category_id": rng.choice(cats)["id"],
                         "bbox": [rng.uniform(0, 500), rng.uniform(0, 400), 30, 30], "score": rng.random()})  # fmt: skip
    return {"images": images, "categories": cats, "annotations": anns}, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    pytest.importorskip("faster_coco_eval")
    gt, dets = _random_case(seed)
    fast = coco_metrics(gt, dets, coco_lib="faster_coco_eval")
    ref = coco_metrics(gt, dets, coco_lib="pycocotools")
    assert 0.05 < ref["AP"] < 0.95
    for k in METRIC_NAMES:
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k


def test_image_subset_and_rank_merge():
    gt = _gt()
    dets = _perfect(gt)
    only_1 = coco_metrics(gt, [d for d in dets if d["image_id"] == 1], image_ids=[1])
    assert only_1["AP"] == pytest.approx(1.0)
    all_images = coco_metrics(gt, [d for d in dets if d["image_id"] == 1])
    assert all_images["AP"] < 1.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_metrics(gt, dets, image_ids=[99])
    # DistributedSampler padding repeats an image on another rank: counted once
    ids, merged = _merge_ranks([([1, 2], dets[:3]), ([3, 1], [dets[3], dets[0]])])
    assert ids == [1, 2, 3] and len(merged) == 4


class _Model(torch.nn.Module):
    """Outputs fixed queries: each image's GT boxes as confident predictions."""

    def __init__(self, boxes: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int):
        super().__init__()
        self.boxes, self.labels, self.num_classes = boxes, labels, num_classes
        self.calls = 0

    def forward(self, images):
        b = images.shape[0]
        logits = torch.full((b, 5, self.num_classes), -10.0)
        boxes = torch.full((b, 5, 4), 0.5)
        for i in range(b):
            k = self.calls + i
            n = len(self.labels[k])
            boxes[i, :n] = self.boxes[k]
            logits[i, torch.arange(n), self.labels[k]] = 10.0
        self.calls += b
        return {"pred_logits": logits, "pred_boxes": boxes}


def test_evaluate_model_maps_labels_back():
    gt = _gt()
    label_to_category = {0: 3, 1: 7}
    boxes, labels, batches = [], [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        cxcywh = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1)
        boxes.append((cxcywh / torch.tensor([640, 480, 640, 480])).float())
        labels.append(torch.tensor([0 if a["category_id"] == 3 else 1 for a in anns]))
        target = {"image_id": torch.tensor(img["id"]), "orig_size": torch.tensor([640, 480])}
        batches.append((torch.zeros(1, 3, 64, 64), [target]))
    model = _Model(boxes, labels, num_classes=2)
    m = evaluate(model, batches, ground_truth=gt, label_to_category=label_to_category,
                 progress=False)  # fmt: skip
    assert m["AP"] == pytest.approx(1.0, abs=1e-4)
    dets = to_coco_detections(
        [{"boxes": torch.tensor([[1.0, 2.0, 4.0, 8.0]]), "labels": torch.tensor([1]),
          "scores": torch.tensor([0.5])}], [5], label_to_category)  # fmt: skip
    assert dets == [{"image_id": 5, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]
