"""Training/validation transforms: boxes follow the pixels, stop-epoch policy, empty targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from torchvision import tv_tensors

from dfine.data.transforms import (
    Compose,
    RandomIoUCrop,
    ToModelFormat,
    build_train_transforms,
    build_val_transforms,
    per_box_fields,
)
from dfine.predict import to_input_tensor


def item(boxes_xyxy, height=60, width=80, fill_boxes=True):
    """Black image with white filled boxes; target as a dataset item."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    if fill_boxes:
        for x0, y0, x1, y1 in boxes.int().tolist():
            image[:, y0:y1, x0:x1] = 255
    n = len(boxes)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.arange(n, dtype=torch.int64),
        "image_id": torch.tensor(7),
        "orig_size": torch.tensor([width, height]),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
    }
    return tv_tensors.Image(image), target


def to_pixels(boxes: torch.Tensor, size: int) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size


def white_bbox(image: torch.Tensor) -> list[float] | None:
    mask = image.mean(0) > 0.5
    if not mask.any():
        return None
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]


def test_flip_maps_box_to_mirror():
    image, target = item([[10, 5, 30, 25]])
    out_image, out = Compose([T.RandomHorizontalFlip(p=1.0), ToModelFormat()])(image, target)
    scale = torch.tensor([80, 60, 80, 60])
    torch.testing.assert_close(
        to_pixels(out["boxes"], 1)[0] * scale, torch.tensor([50.0, 5, 70, 25])
    )
    assert white_bbox(out_image) == [50, 5, 70, 25]


def test_geometric_pipeline_keeps_boxes_on_their_pixels():
    """Zoom-out, IoU crop, flip and resize: the box still encloses its white rectangle."""
    size = 96
    geometric = Compose(
        [
            T.RandomZoomOut(fill=0, p=1.0),
            RandomIoUCrop(p=1.0),
            T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_fields),
            T.RandomHorizontalFlip(),
            T.Resize((size, size)),
            T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_fields),
            ToModelFormat(),
        ]
    )
    checked = 0
    for seed in range(30):
        torch.manual_seed(seed)
        image, target = geometric(*item([[20, 10, 60, 50]]))
        if len(target["boxes"]) == 0:
            continue
        found = white_bbox(image)
        box = to_pixels(target["boxes"], size)[0].tolist()
        assert found is not None and np.allclose(found, box, atol=1.5), (seed, found, box)
        checked += 1
    assert checked >= 15


def test_train_transforms_output_format_and_consistency():
    transforms = build_train_transforms(64, stop_epoch=10)
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = transforms(*item([[10, 5, 30, 25], [40, 30, 70, 55], [0, 0, 0.5, 60]]))
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert type(image) is torch.Tensor and type(target["boxes"]) is torch.Tensor
        n = len(target["boxes"])
        assert n <= 2  # the 0.5 px wide box is always sanitised away
        for key in ("labels", "area", "iscrowd"):
            assert target[key].shape == (n,)
        assert target["image_id"].item() == 7 and target["orig_size"].tolist() == [80, 60]
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


@pytest.mark.parametrize("transforms", [build_train_transforms(64), build_val_transforms(64)])
def test_empty_targets(transforms):
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = transforms(*item([]))
        assert image.shape == (3, 64, 64)
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_stop_epoch_switches_augmentations_off():
    transforms = build_train_transforms(64, stop_epoch=3)
    stopped = (T.RandomPhotometricDistort, T.RandomZoomOut, T.RandomIoUCrop)
    assert transforms.augmenting and len(transforms.active()) == 8
    transforms.set_epoch(2)
    assert transforms.augmenting
    transforms.set_epoch(3)
    assert not transforms.augmenting
    active = transforms.active()
    assert len(active) == 5 and not any(isinstance(t, stopped) for t in active)
    # what is left is sanitize, flip, resize: the output is the val output or its mirror
    image, target = item([[10, 5, 30, 25]])
    image = tv_tensors.Image(torch.randint(0, 256, image.shape, dtype=torch.uint8))
    val_image, val_target = build_val_transforms(64)(image, target)
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out = transforms(image, target)
        if torch.equal(out_image, val_image):
            torch.testing.assert_close(out["boxes"], val_target["boxes"])
        else:
            torch.testing.assert_close(out_image, val_image.flip(-1))
            mirrored = val_target["boxes"].clone()
            mirrored[:, 0] = 1 - mirrored[:, 0]
            torch.testing.assert_close(out["boxes"], mirrored)


def test_never_stops_without_stop_epoch():
    transforms = build_train_transforms(64)
    transforms.set_epoch(10_000)
    assert transforms.augmenting


def test_iou_crop_probability():
    image, target = item([[10, 5, 30, 25]])
    never = RandomIoUCrop(p=0.0)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out = never(image, target)
        assert torch.equal(out_image, image) and torch.equal(out["boxes"], target["boxes"])
    always = RandomIoUCrop(p=1.0)
    shapes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        shapes.add(tuple(always(image, target)[0].shape))
    assert len(shapes) > 1
    with pytest.raises(ValueError, match="p must be"):
        RandomIoUCrop(p=1.5)


def test_val_resize_matches_detector_preprocessing():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
    out, _ = build_val_transforms((64, 96))(image, item([])[1])
    expected = to_input_tensor(rgb, (64, 96))[0]
    assert out.shape == (3, 64, 96)
    assert (out - expected).abs().max() <= 1.01 / 255


def test_compose_repr():
    text = repr(build_train_transforms(64, stop_epoch=5))
    assert "stop_epoch=5" in text and "RandomIoUCrop" in text
