"""COCO-format datasets: item format, validation in both modes, category mappings, EXIF."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dfine import coco as coco80
from dfine.data import CocoDetection, DatasetError, build_train_transforms, build_val_transforms
from dfine.data.synth import make_synthetic_dataset

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        out, num_train=6, num_val=2, image_size=(96, 80), seed=3, image_format="png", workers=0
    )


def write_coco(
    root: Path,
    annotations: list[dict],
    images: list[dict] | None = None,
    categories: list[dict] | None = None,
    files: bool = True,
) -> Path:
    """A COCO json under ``root`` (default: image 1 = a.png 40x30, image 2 = b.png 40x30,
    categories 1 'cat', 2 'dog'), with the image files written unless ``files=False``."""
    images = (
        images
        if images is not None
        else [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ]
    )
    categories = (
        categories
        if categories is not None
        else [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    )
    if files:
        for img in images:
            size = (int(img.get("width", 8) or 8), int(img.get("height", 8) or 8))
            if isinstance(img.get("file_name"), str):
                Image.new("RGB", size, (10, 20, 30)).save(root / img["file_name"])
    path = root / "ann.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def ann(ann_id: int, image_id: int = 1, category_id: int = 1, bbox=(5, 5, 10, 10), **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "area": 100,
        "iscrowd": 0,
        **extra,
    }


# --------------------------------------------------------------------------- items


def test_item_before_transforms(synth):
    ds = CocoDetection(synth["train_images"], synth["train_annotations"])
    data = json.loads(synth["train_annotations"].read_text())
    assert len(ds) == 6 and ds.num_classes == 8 and ds.skipped == {}
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 80, 96)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (80, 96)
    anns = [a for a in data["annotations"] if a["image_id"] == 1]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    torch.testing.assert_close(boxes.as_subclass(torch.Tensor), expected.float())
    assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
    assert target["labels"].dtype == torch.int64
    assert target["image_id"].dtype == torch.int64 and target["image_id"].shape == ()
    assert target["image_id"].item() == 1
    assert target["orig_size"].tolist() == [96, 80] and target["orig_size"].dtype == torch.int64
    assert target["area"].tolist() == [a["area"] for a in anns]
    assert target["iscrowd"].tolist() == [0] * len(anns)


@pytest.mark.parametrize("train", [True, False])
def test_item_after_transforms(synth, train):
    transforms = build_train_transforms(64) if train else build_val_transforms(64)
    ds = CocoDetection(synth["train_images"], synth["train_annotations"], transforms=transforms)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert image.shape == (3, 64, 64) and image.min() >= 0 and image.max() <= 1
        boxes = target["boxes"]
        assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        n = len(boxes)
        assert target["labels"].shape == target["area"].shape == target["iscrowd"].shape == (n,)
        cx, cy, w, h = boxes.unbind(-1)
        assert (w > 0).all() and (h > 0).all()
        assert (cx - w / 2 >= -1e-5).all() and (cx + w / 2 <= 1 + 1e-5).all()
        assert (cy - h / 2 >= -1e-5).all() and (cy + h / 2 <= 1 + 1e-5).all()
        if not train:
            raw = ds.load_item(i)[1]["boxes"].as_subclass(torch.Tensor)
            scale = torch.tensor([96, 80, 96, 80])
            cxcywh = torch.cat([(raw[:, :2] + raw[:, 2:]) / 2, raw[:, 2:] - raw[:, :2]], 1)
            torch.testing.assert_close(boxes, cxcywh / scale)


def test_repr_and_image_ids(synth):
    ds = CocoDetection(synth["val_images"], synth["val_annotations"])
    assert ds.image_ids == [1, 2]
    assert "CocoDetection(" in repr(ds) and "images=2" in repr(ds)


# --------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize("on_invalid", ["skip", "error"])
@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"annotations": [], "categories": []}', "'images'"),
        ('{"images": [], "categories": []}', "'annotations'"),
        ('{"images": [], "annotations": []}', "'categories'"),
        ('{"images": {}, "annotations": [], "categories": []}', "must be a list"),
    ],
)
def test_file_level_errors(tmp_path, on_invalid, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        CocoDetection(tmp_path, path, on_invalid=on_invalid)
    assert "bad.json" in str(info.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_duplicate_category_is_a_file_error(tmp_path):
    path = write_coco(tmp_path, [], categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(DatasetError, match="listed twice"):
        CocoDetection(tmp_path, path)


# --------------------------------------------------------------------------- record-level problems

CASES = {
    "unknown_category_id": ([ann(7, category_id=3)], {}, "category_id 3"),
    "unknown_image_id": ([ann(7, image_id=99)], {}, "image_id 99"),
    "non_positive_size": (
        [ann(7, bbox=(5, 5, 0, 4)), ann(8, bbox=(5, 5, 4, -3))],
        {},
        "non-positive",
    ),
    "outside_image": ([ann(7, bbox=(30, 5, 12, 5)), ann(8, bbox=(-3, 5, 10, 5))], {}, "outside"),
    "label_out_of_range": ([ann(7, category_id=2)], {"num_classes": 1}, "outside 0..0"),
    "invalid_bbox": ([ann(7, bbox=(5, 5, 10)), ann(8, bbox=(5, "x", 1, 1))], {}, "bbox must be"),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_invalid_annotation_error_mode(tmp_path, reason):
    bad, kwargs, message = CASES[reason]
    path = write_coco(tmp_path, [ann(1), *bad])
    with pytest.raises(DatasetError, match=message) as info:
        CocoDetection(tmp_path, path, on_invalid="error", **kwargs)
    text = str(info.value)
    assert "ann.json" in text and "annotation id 7" in text
    if len(bad) > 1:
        assert f"{len(bad)} problems in all: {len(bad)} {reason}" in text


@pytest.mark.parametrize("reason", sorted(CASES))
def test_invalid_annotation_skip_mode(tmp_path, reason, caplog):
    bad, kwargs, _ = CASES[reason]
    path = write_coco(tmp_path, [ann(1), *bad])
    with caplog.at_level(logging.WARNING, logger="dfine.data"):
        ds = CocoDetection(tmp_path, path, on_invalid="skip", **kwargs)
    assert ds.skipped == {reason: len(bad)}
    assert len(ds) == 2 and ds.num_targets == 1
    assert ds[0][1]["labels"].tolist() == [0] and len(ds[1][1]["labels"]) == 0
    records = [r for r in caplog.records if r.name == "dfine.data"]
    assert len(records) == 1 and reason in records[0].getMessage()
    assert all(a["id"] != 7 for a in ds.to_coco_dict()["annotations"])


def test_non_finite_box(tmp_path):
    path = write_coco(tmp_path, [ann(1)])
    path.write_text(path.read_text().replace("[5, 5, 10, 10]", "[5, NaN, 10, 10]"))
    with pytest.raises(DatasetError, match="non-finite"):
        CocoDetection(tmp_path, path, on_invalid="error")
    assert CocoDetection(tmp_path, path).skipped == {"invalid_bbox": 1}


def test_small_overshoot_is_clipped(tmp_path):
    path = write_coco(tmp_path, [ann(1, bbox=(-0.5, 2, 10, 28.8)), ann(2, bbox=(30, 0, 10.9, 5))])
    ds = CocoDetection(tmp_path, path, on_invalid="error")
    boxes = ds[0][1]["boxes"].as_subclass(torch.Tensor)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 2.0, 9.5, 30.0], [30.0, 0.0, 40.0, 5.0]]))


def test_invalid_image_entries(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 0, "height": 30},
        {"id": 1, "file_name": "c.png", "width": 40, "height": 30},
        {"file_name": "d.png", "width": 40, "height": 30},
    ]
    path = write_coco(tmp_path, [ann(1), ann(2, image_id=2)], images=images)
    with pytest.raises(DatasetError, match=r"image id 2.*no positive 'width'"):
        CocoDetection(tmp_path, path, on_invalid="error")
    ds = CocoDetection(tmp_path, path)
    assert ds.skipped == {"invalid_image": 3}  # its annotation goes with image 2
    assert ds.image_ids == [1] and ds.num_targets == 1
    data = ds.to_coco_dict()
    assert [i["file_name"] for i in data["images"]] == ["a.png"]
    assert [a["id"] for a in data["annotations"]] == [1]


def test_missing_file_lazy_and_eager(tmp_path):
    path = write_coco(tmp_path, [ann(1), ann(2, image_id=2)])
    (tmp_path / "b.png").unlink()
    ds = CocoDetection(tmp_path, path, on_invalid="error")  # lazy: fine until loaded
    ds[0]
    with pytest.raises(DatasetError, match=r"image id 2.*b\.png.*not found"):
        ds[1]
    with pytest.raises(DatasetError, match=r"b\.png' not found"):
        CocoDetection(tmp_path, path, on_invalid="error", check_files=True)
    ds = CocoDetection(tmp_path, path, check_files=True)
    assert ds.skipped == {"missing_file": 1} and ds.image_ids == [1]
    assert ds.num_targets == 1 and [i["id"] for i in ds.to_coco_dict()["images"]] == [1]


def test_check_files_size_mismatch_and_unreadable(tmp_path):
    path = write_coco(tmp_path, [ann(1)])
    Image.new("RGB", (41, 30)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    ds = CocoDetection(tmp_path, path, check_files=True)
    assert ds.skipped == {"size_mismatch": 1, "unreadable_image": 1} and len(ds) == 0
    ds = CocoDetection(tmp_path, path)
    with pytest.raises(DatasetError, match=r"41x30.*40x30"):
        ds[0]


def test_no_annotations_and_crowd(tmp_path):
    path = write_coco(tmp_path, [ann(1), ann(2, iscrowd=1, bbox=(1, 1, 5, 5))])
    ds = CocoDetection(tmp_path, path, on_invalid="error")
    assert ds.num_targets == 1
    image, target = ds[1]  # image 2: no annotations at all
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert len(ds.to_coco_dict()["annotations"]) == 2  # the crowd one stays for evaluation
    image, target = build_train_transforms(64)(image, target)
    assert target["boxes"].shape == (0, 4) and image.shape == (3, 64, 64)


# --------------------------------------------------------------------------- category mappings


def test_contiguous_mapping(tmp_path):
    cats = [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}]
    anns = [ann(1, category_id=9), ann(2, category_id=2), ann(3, category_id=5)]
    ds = CocoDetection(tmp_path, write_coco(tmp_path, anns, categories=cats), on_invalid="error")
    assert ds.category_to_label == {2: 0, 5: 1, 9: 2}
    assert ds.label_to_category == {0: 2, 1: 5, 2: 9}
    assert ds.class_names == ("two", "five", "nine") and ds.num_classes == 3
    assert ds[0][1]["labels"].tolist() == [2, 0, 1]
    assert all(ds.category_to_label[c] == i for i, c in ds.label_to_category.items())


def test_identity_mapping(tmp_path):
    cats = [{"id": 0, "name": "zero"}, {"id": 3, "name": "three"}]
    path = write_coco(tmp_path, [ann(1, category_id=3), ann(2, category_id=0)], categories=cats)
    ds = CocoDetection(tmp_path, path, category_mapping="identity", on_invalid="error")
    assert ds.num_classes == 4 and ds[0][1]["labels"].tolist() == [3, 0]
    assert ds.class_names == ("zero", "class_1", "class_2", "three")
    assert ds.label_to_category == {0: 0, 3: 3}
    with pytest.raises(DatasetError, match=r"label 3, outside 0\.\.2"):
        CocoDetection(
            tmp_path, path, category_mapping="identity", num_classes=3, on_invalid="error"
        )


def test_coco80_mapping(tmp_path):
    cats = [{"id": c, "name": n} for c, n in ((1, "person"), (90, "toothbrush"), (12, "x"))]
    anns = [ann(1, category_id=90), ann(2, category_id=1), ann(3, category_id=12)]
    path = write_coco(tmp_path, anns, categories=cats)
    with pytest.raises(DatasetError, match="not one of the 80 COCO category ids"):
        CocoDetection(tmp_path, path, category_mapping="coco80", on_invalid="error")
    ds = CocoDetection(tmp_path, path, category_mapping="coco80")
    assert ds.skipped == {"unknown_category_id": 1}
    assert ds[0][1]["labels"].tolist() == [79, 0]
    assert ds.num_classes == 80 and ds.class_names == coco80.COCO_CLASSES
    assert ds.label_to_category == {0: 1, 79: 90}
    assert all(coco80.label_to_category[i] == c for i, c in ds.label_to_category.items())


def test_bad_arguments(tmp_path):
    path = write_coco(tmp_path, [])
    with pytest.raises(ValueError, match="category_mapping"):
        CocoDetection(tmp_path, path, category_mapping="sorted")
    with pytest.raises(ValueError, match="on_invalid"):
        CocoDetection(tmp_path, path, on_invalid="warn")
    with pytest.raises(ValueError, match="num_classes"):
        CocoDetection(tmp_path, path, num_classes=0)


# --------------------------------------------------------------------------- evaluation API


def needs_coco_api():
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        pytest.importorskip("pycocotools")


def test_coco_api(synth):
    needs_coco_api()
    ds = CocoDetection(synth["train_images"], synth["train_annotations"])
    api = ds.coco
    data = json.loads(synth["train_annotations"].read_text())
    assert sorted(api.getImgIds()) == [1, 2, 3, 4, 5, 6]
    assert len(api.getAnnIds()) == len(data["annotations"])
    state = ds.__getstate__()
    assert state["_coco"] is None  # workers do not carry the COCO object


# --------------------------------------------------------------------------- EXIF orientation


def _rotated_jpeg(path: Path) -> np.ndarray:
    """A 40x20 (w x h) JPEG tagged with orientation 6 (display rotated 90°: 20x40)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    path.write_bytes(buf.getvalue())
    return pixels


@pytest.mark.parametrize(
    "size, exif, expected",
    [((40, 20), "auto", (20, 40)), ((20, 40), "auto", (40, 20)), ((40, 20), "ignore", (20, 40))],
)
def test_exif_orientation_follows_annotation_size(tmp_path, size, exif, expected):
    _rotated_jpeg(tmp_path / "r.jpg")
    images = [{"id": 1, "file_name": "r.jpg", "width": size[0], "height": size[1]}]
    path = write_coco(tmp_path, [ann(1, bbox=(1, 1, 5, 5))], images=images, files=False)
    ds = CocoDetection(tmp_path, path, exif=exif, check_files=True, on_invalid="error")
    assert tuple(ds[0][0].shape[1:]) == expected


def test_exif_apply_against_raw_size_is_a_mismatch(tmp_path):
    _rotated_jpeg(tmp_path / "r.jpg")
    images = [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 20}]
    path = write_coco(tmp_path, [], images=images, files=False)
    ds = CocoDetection(tmp_path, path, exif="apply", check_files=True)
    assert ds.skipped == {"size_mismatch": 1}
