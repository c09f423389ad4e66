"""The bundled demo model (assets/dfine_n_synth.safetensors): its metadata, its accuracy on the
held-out synthetic validation split (regenerated here from the recorded seed), and refinement
measured per decoder layer. The card's figures (assets/README.md) are what these tests recompute.
"""

from __future__ import annotations

import json

import pytest
import torch

import dfine
from analysis import layer_stats
from app.paths import BUNDLED_WEIGHTS, SYNTH_ANNOTATIONS, SYNTH_DIR
from dfine.checkpoint import read_checkpoint
from dfine.data import CocoDetection, build_val_transforms
from dfine.data.synth import SYNTH_CLASSES, make_synthetic_dataset
from dfine.train.run import validate

NAMES = [c.name for c in SYNTH_CLASSES]


@pytest.fixture(scope="module")
def metadata() -> dict:
    assert BUNDLED_WEIGHTS.exists(), f"the demo model {BUNDLED_WEIGHTS} is missing"
    _, meta = read_checkpoint(BUNDLED_WEIGHTS)
    return meta


@pytest.fixture(scope="module")
def model():
    return dfine.load_model(BUNDLED_WEIGHTS)


@pytest.fixture(scope="module")
def val_data(tmp_path_factory, metadata):
    """The validation split the model was measured on: same generator, same seed."""
    ds = metadata["dataset"]
    out = tmp_path_factory.mktemp("synth_val")
    make_synthetic_dataset(
        out,
        num_train=0,
        num_val=ds["val"]["images"],
        image_size=tuple(ds["image_size"]),
        seed=ds["seed"],
        progress=False,
    )
    return out


def test_metadata_describes_the_model(metadata):
    assert metadata["size"] == "n"
    assert metadata["class_names"] == NAMES
    assert metadata["input_size"] == [320, 320]
    assert metadata["recipe"]["name"] == "synth"
    assert "dfine train" in metadata["command"] and "--recipe synth" in metadata["command"]
    assert metadata["training"]["train_seconds"] > 0
    assert BUNDLED_WEIGHTS.stat().st_size < 20e6


def test_loads_as_a_detector(model):
    assert model.num_classes == len(SYNTH_CLASSES)
    assert list(model.class_names) == NAMES
    assert not model.training


def test_meets_targets_on_the_validation_split(metadata, val_data):
    metrics = validate(BUNDLED_WEIGHTS, val_data, workers=0, progress=False)
    assert metrics["AP50"] >= 0.90
    assert metrics["AP"] >= 0.70
    # the card's figures are the trainer's evaluation; recomputing them gives the same numbers
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(metadata["metrics"][key], abs=2e-3), key


def test_later_layers_refine(model, val_data):
    dataset = CocoDetection(
        val_data / "val",
        val_data / "annotations" / "instances_val.json",
        transforms=build_val_transforms(320),
    )
    stats = layer_stats(model, dataset, limit=60)
    iou = stats["mean_iou_to_gt"]
    entropy = stats["mean_edge_entropy_nats"][1:]
    assert stats["objects"] > 100
    assert iou[-1] > iou[1] > 0.5, iou  # last layer better than the first
    assert iou[-1] > iou[0], iou  # and than the pre-head
    assert entropy[-1] < entropy[0] < stats["max_entropy_nats"], entropy
    # traced in batches (the default, 8) or one image at a time: the same statistics
    single = layer_stats(model, dataset, limit=12, batch_size=1)
    batched = layer_stats(model, dataset, limit=12, batch_size=5)
    assert single["objects"] == batched["objects"] and single["stages"] == batched["stages"]
    for key in ("mean_iou_to_gt", "mean_edge_entropy_nats"):
        assert batched[key][1:] == pytest.approx(single[key][1:], abs=1e-4), key


def _example_readings(weights) -> dict[str, list[str]]:
    """What the model gets wrong on each bundled synthetic example at threshold 0.5: a
    ground-truth object without a detection of its class at IoU ≥ 0.5, a detection that
    matches no object of its class, or two detections of one object (IoU ≥ 0.7)."""
    from torchvision.ops import box_iou

    coco = json.loads(SYNTH_ANNOTATIONS.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    detector = dfine.Detector(weights)
    wrong: dict[str, list[str]] = {}
    for image in coco["images"]:
        gts = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        gt_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in gts)])
        gt_names = [names[a["category_id"]] for a in gts]
        dets = detector(SYNTH_DIR / image["file_name"], threshold=0.5)
        det_names = [dets.class_names[i] for i in dets.labels]
        iou = box_iou(torch.as_tensor(dets.boxes, dtype=torch.float32), gt_boxes.float())
        same = torch.tensor([[d == g for g in gt_names] for d in det_names]).reshape(iou.shape)
        hit = (iou >= 0.5) & same
        problems = [f"missed {g}" for g, found in zip(gt_names, hit.any(0)) if not found]
        problems += [
            f"{d} {s:.2f} matches no {d}"
            for d, s, found in zip(det_names, dets.scores, hit.any(1))
            if not found
        ]
        pairwise = box_iou(*(torch.as_tensor(dets.boxes, dtype=torch.float32),) * 2)
        pairs = torch.triu(pairwise >= 0.7, diagonal=1).nonzero().tolist()
        problems += [
            f"duplicate {det_names[i]} ({dets.scores[i]:.2f}, {dets.scores[j]:.2f})"
            for i, j in pairs
        ]
        if problems:
            wrong[image["file_name"]] = problems
    return wrong


def test_names_nothing_wrong_and_nothing_twice_on_the_bundled_examples():
    """On the four annotated examples at 0.5: no detection that names an object wrongly or
    matches none, and no object twice (issue 25 item 7: the previous model called a star
    "orange cross" and doubled a triangle). An object the model is unsure of may stay under
    0.5 (assets/README.md says which)."""
    readings = _example_readings(BUNDLED_WEIGHTS)
    wrong = {k: [p for p in v if not p.startswith("missed")] for k, v in readings.items()}
    assert not any(wrong.values()), wrong
    missed = sum(len(v) for v in readings.values())
    assert missed <= 1, readings
