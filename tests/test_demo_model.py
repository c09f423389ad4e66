"""The bundled demo model (assets/dfine_n_synth.safetensors): its metadata, its accuracy on the
held-out synthetic validation split (regenerated here from the recorded seed), and refinement
measured per decoder layer. The card's figures (assets/README.md) are what these tests recompute.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import dfine
from analysis import layer_stats
from analysis._common import pairwise_iou
from app.paths import BUNDLED_WEIGHTS, SYNTH_DIR
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
    assert metrics["AP50"] >= 0.975
    assert metrics["AP"] >= 0.92
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


def test_reads_the_bundled_examples():
    """The app's four annotated examples (unseen in training) at threshold 0.5: every object has
    a box of its class at IoU >= 0.5, no box is of another class or on nothing, and no two boxes
    of one class overlap at IoU >= 0.7 (a doubled object)."""
    coco = json.loads((SYNTH_DIR / "instances_val.json").read_text())
    det = dfine.Detector(BUNDLED_WEIGHTS, threshold=0.5)
    problems = []
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64)
        truth = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([a["category_id"] - 1 for a in anns])
        found = det(SYNTH_DIR / image["file_name"])
        iou = pairwise_iou(truth[:, None], found.boxes[None])  # [truth, found]
        right = (iou >= 0.5) & (labels[:, None] == found.labels[None])
        for j in np.flatnonzero(~right.any(axis=1)):
            problems.append(f"{image['file_name']}: {NAMES[labels[j]]} not found")
        for i in np.flatnonzero(~right.any(axis=0)):
            problems.append(
                f"{image['file_name']}: stray {NAMES[found.labels[i]]} {found.scores[i]:.2f}"
            )
        same = pairwise_iou(found.boxes[:, None], found.boxes[None])
        same[found.labels[:, None] != found.labels[None]] = 0
        doubled = np.argwhere(np.triu(same >= 0.7, k=1))
        problems += [f"{image['file_name']}: {NAMES[found.labels[a]]} twice" for a, _ in doubled]
    assert len(coco["annotations"]) == 19 and not problems, problems
