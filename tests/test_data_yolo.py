"""The YOLO-format reader: same items as the COCO reader, same validation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfine.data import CocoDetection, DatasetError
from dfine.data.synth import SYNTH_CLASSES, make_synthetic_dataset
from dfine.data.yolo import YoloDetection, read_names


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same synthetic set as COCO json and as a YOLO tree (images/train, labels/train)."""
    root = tmp_path_factory.mktemp("yolo")
    paths = make_synthetic_dataset(root / "coco", 5, 0, image_size=(80, 64), workers=0)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    data = json.loads(paths["train_annotations"].read_text())
    for img in data["images"]:
        (images / img["file_name"]).write_bytes(
            (paths["train_images"] / img["file_name"]).read_bytes()
        )
        lines = []
        for a in data["annotations"]:
            if a["image_id"] == img["id"]:
                x, y, w, h = a["bbox"]
                W, H = img["width"], img["height"]
                lines.append(
                    f"{a['category_id'] - 1} {(x + w / 2) / W} {(y + h / 2) / H} {w / W} {h / H}"
                )
        if img["id"] != 5:  # image 5 has no label file: no objects
            (labels / (Path(img["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    names = "names:\n" + "".join(f"  {i}: {c.name}\n" for i, c in enumerate(SYNTH_CLASSES))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/train\n{names}")
    return paths, root


def test_same_items_as_coco(pair):
    pytest.importorskip("yaml")
    paths, root = pair
    coco = CocoDetection(paths["train_images"], paths["train_annotations"])
    yolo = YoloDetection.from_yaml(root / "data.yaml", "train", on_invalid="error")
    assert len(yolo) == len(coco) == 5 and yolo.num_classes == 8
    assert yolo.class_names == coco.class_names and yolo.skipped == {}
    assert yolo.label_dir == root / "labels" / "train"
    for i in range(4):
        (ci, ct), (yi, yt) = coco[i], yolo[i]
        assert torch.equal(ci, yi) and yt["boxes"].canvas_size == ct["boxes"].canvas_size
        torch.testing.assert_close(
            yt["boxes"].as_subclass(torch.Tensor),
            ct["boxes"].as_subclass(torch.Tensor),
            atol=1e-4,
            rtol=0,
        )
        assert torch.equal(yt["labels"], ct["labels"]) and yt["orig_size"].tolist() == [80, 64]
    assert yolo[4][1]["boxes"].shape == (0, 4)
    data = yolo.to_coco_dict()
    assert len(data["images"]) == 5 and data["categories"][0] == {"id": 1, "name": "red circle"}
    assert len(data["annotations"]) == yolo.num_targets
    if importlib.util.find_spec("faster_coco_eval") or importlib.util.find_spec("pycocotools"):
        assert yolo.coco.getImgIds() == [1, 2, 3, 4, 5]


def make_tree(tmp_path: Path, lines: list[str]) -> Path:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    Image.new("RGB", (100, 50)).save(images / "a.png")
    (labels / "a.txt").write_text("\n".join(lines) + "\n")
    return images


CASES = {
    "malformed_line": ["0 0.5 0.5 0.2", "x 0.5 0.5 0.2 0.2", "1.5 0.5 0.5 0.2 0.2"],
    "non_positive_size": ["0 0.5 0.5 0 0.2"],
    "outside_image": ["0 0.95 0.5 0.2 0.2"],
    "label_out_of_range": ["2 0.5 0.5 0.2 0.2", "-1 0.5 0.5 0.2 0.2"],
    "invalid_bbox": ["0 0.5 nan 0.2 0.2"],
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_validation(tmp_path, reason):
    images = make_tree(tmp_path, ["1 0.5 0.5 0.2 0.2", *CASES[reason]])
    with pytest.raises(DatasetError, match=r"'a\.txt' line 2"):
        YoloDetection(images, names=["a", "b"], on_invalid="error")
    ds = YoloDetection(images, names=["a", "b"])
    assert ds.skipped == {reason: len(CASES[reason])} and ds.num_targets == 1
    torch.testing.assert_close(
        ds[0][1]["boxes"].as_subclass(torch.Tensor), torch.tensor([[40.0, 20, 60, 30]])
    )


def test_polygon_line_and_small_overshoot(tmp_path):
    images = make_tree(tmp_path, ["0 0.1 0.2 0.3 0.2 0.2 0.6", "1 0.5 0.5 1.01 0.2"])
    ds = YoloDetection(images, names={0: "a", 1: "b"}, on_invalid="error")
    boxes = ds[0][1]["boxes"].as_subclass(torch.Tensor)
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 10, 30, 30], [0, 20, 100, 30]]))


def test_unreadable_image_and_names(tmp_path):
    images = make_tree(tmp_path, [])
    (images / "b.jpg").write_text("not an image")
    ds = YoloDetection(images, num_classes=3)
    assert ds.skipped == {"unreadable_image": 1} and len(ds) == 1
    assert ds.class_names == ("class_0", "class_1", "class_2")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert read_names(tmp_path / "names.txt") == ("cat", "dog")
    with pytest.raises(DatasetError, match="indices"):
        read_names({1: "a"})
    with pytest.raises(ValueError, match="names or num_classes"):
        YoloDetection(images)
    with pytest.raises(DatasetError, match="no 'images' folder"):
        YoloDetection(tmp_path / "labels", names=["a"])
