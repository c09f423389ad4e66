"""The 80 COCO detection classes and the map between contiguous labels and COCO ids.

Models trained on COCO predict a contiguous label ``0..79``; COCO annotation files and the
COCO results format use the official category ids, which run from 1 to 90 with gaps.
``COCO_CLASSES[i]`` is the name of label ``i`` and ``COCO_CATEGORY_IDS[i]`` its id.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from dfine.errors import InvalidArgumentError

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "category_to_label",
    "label_to_category",
    "remap_labels_to_coco",
]

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip
"""Name of every contiguous label, index 0 ``'person'`` .. 79 ``'toothbrush'``."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
"""Official COCO category id of every contiguous label, same order as ``COCO_CLASSES``."""

label_to_category: dict[int, int] = dict(enumerate(COCO_CATEGORY_IDS))
"""Contiguous label (0..79) -> COCO category id (1..90)."""

category_to_label: dict[int, int] = {c: i for i, c in enumerate(COCO_CATEGORY_IDS)}
"""COCO category id (1..90) -> contiguous label (0..79)."""

_LOOKUP = np.asarray(COCO_CATEGORY_IDS, dtype=np.int64)  # [80]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def remap_labels_to_coco(labels: ArrayT) -> ArrayT:
    """Map contiguous labels to COCO category ids, without a Python loop.

    Args:
        labels: integer tensor or array of any shape, values in ``0..79``.

    Returns:
        The category ids, same shape and type as ``labels`` (tensor on the same device,
        dtype int64).

    Raises:
        TypeError: ``labels`` is neither a tensor nor an array, or not of integer dtype.
        ValueError: a label is outside ``0..79``.
    """
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.numel():
            _check_range(int(labels.min()), int(labels.max()))
        lookup = torch.as_tensor(_LOOKUP, device=labels.device)
        return lookup[labels.long()]
    if isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
        if labels.size:
            _check_range(int(labels.min()), int(labels.max()))
        return _LOOKUP[labels]
    raise TypeError(f"labels must be a torch.Tensor or np.ndarray, got {type(labels).__name__}")


def _check_range(lo: int, hi: int) -> None:
    n = len(COCO_CATEGORY_IDS)
    if lo < 0 or hi >= n:
        raise InvalidArgumentError(f"COCO labels must lie in 0..{n - 1}, got values in {lo}..{hi}")
