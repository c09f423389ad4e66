"""COCO class names, category ids and the label -> category remap."""

import numpy as np
import pytest
import torch

from dfine.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    category_to_label,
    label_to_category,
    remap_labels_to_coco,
)


def test_eighty_unique_classes_in_standard_order():
    assert len(COCO_CLASSES) == 80
    assert len(set(COCO_CLASSES)) == 80
    assert COCO_CLASSES[0] == "person"
    assert COCO_CLASSES[15] == "cat"
    assert COCO_CLASSES[41] == "cup"
    assert COCO_CLASSES[62] == "tv"
    assert COCO_CLASSES[79] == "toothbrush"


def test_category_ids_are_the_official_ones():
    assert len(COCO_CATEGORY_IDS) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    missing = sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))
    assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("person", 1),
        ("stop sign", 13),
        ("backpack", 27),
        ("wine glass", 46),
        ("dining table", 67),
        ("toilet", 70),
        ("tv", 72),
        ("book", 84),
        ("toothbrush", 90),
    ],
)
def test_name_and_category_agree(name, category):
    label = COCO_CLASSES.index(name)
    assert label_to_category[label] == category
    assert category_to_label[category] == label


def test_dicts_are_inverse():
    assert len(label_to_category) == len(category_to_label) == 80
    for label, category in label_to_category.items():
        assert category_to_label[category] == label


def test_remap_numpy_keeps_shape_and_maps_every_label():
    labels = np.arange(80, dtype=np.int32).reshape(8, 10)[::-1]
    out = remap_labels_to_coco(labels)
    assert isinstance(out, np.ndarray)
    assert out.shape == (8, 10)
    assert out.dtype == np.int64
    expected = np.vectorize(label_to_category.get)(labels)
    np.testing.assert_array_equal(out, expected)


def test_remap_torch_returns_tensor_on_same_device():
    labels = torch.tensor([[0, 11, 79], [62, 0, 1]])
    out = remap_labels_to_coco(labels)
    assert isinstance(out, torch.Tensor)
    assert out.device == labels.device
    assert out.dtype == torch.int64
    assert out.tolist() == [[1, 13, 90], [72, 1, 2]]


def test_remap_empty():
    assert remap_labels_to_coco(np.zeros(0, dtype=np.int64)).shape == (0,)
    assert remap_labels_to_coco(torch.zeros(0, dtype=torch.long)).shape == (0,)


@pytest.mark.parametrize("bad", [80, -1])
def test_remap_out_of_range(bad):
    with pytest.raises(ValueError, match=r"0\.\.79"):
        remap_labels_to_coco(np.array([0, bad]))
    with pytest.raises(ValueError, match=r"0\.\.79"):
        remap_labels_to_coco(torch.tensor([0, bad]))


def test_remap_rejects_float_and_other_types():
    with pytest.raises(TypeError, match="integer"):
        remap_labels_to_coco(np.array([1.0]))
    with pytest.raises(TypeError, match="integer"):
        remap_labels_to_coco(torch.tensor([1.0]))
    with pytest.raises(TypeError, match=r"Tensor or np\.ndarray"):
        remap_labels_to_coco([1, 2])
