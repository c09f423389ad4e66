"""What every detection dataset of ``dfine.data`` shares: the error type, the tally of
skipped records, image reading, and the ``(image, target)`` item format.

A dataset is validated once, when it is built; what remains is held in a few flat numpy
arrays (cheap to share with ``DataLoader`` workers), and ``__getitem__`` returns::

    image:  tv_tensors.Image, uint8 [3, H, W]
    target: {"boxes":     tv_tensors.BoundingBoxes, float32 [N, 4], XYXY pixels,
                          canvas_size=(H, W),
             "labels":    int64 [N]  (contiguous class indices),
             "image_id":  int64 []   (the id of the image in the annotation file),
             "orig_size": int64 [2]  (width, height),
             "area":      float32 [N] (annotation area, original pixels),
             "iscrowd":   int64 [N]  (all 0: crowd annotations are not training targets)}

before ``transforms`` are applied (see ``dfine.data.transforms`` for the format after).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from dfine.errors import InvalidArgumentError
from dfine.io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

__all__ = ["DatasetError", "DetectionDataset", "ImageRecord", "Invalid", "check_box", "read_image"]

logger = logging.getLogger("dfine.data")

ON_INVALID = ("skip", "error")
EXIF_POLICIES = ("auto", "apply", "ignore")
_ORIENTATION_TAG = 0x0112  # EXIF Orientation
_TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height


class DatasetError(InvalidArgumentError):
    """An annotation file, a record in it, or an image it lists is invalid. The message
    names the file, the record (annotation id, image id, line) and the problem."""


Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]


@dataclass
class ImageRecord:
    """One validated image and its training targets (crowd annotations excluded).

    ``boxes`` float32 [N, 4] XYXY pixels, ``labels`` int64 [N], ``areas`` float32 [N].
    """

    file_name: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))


class Problems:
    """Tally of invalid records found while validating one annotation source.

    ``add`` records one problem under a short reason key; ``finish`` raises
    ``DatasetError`` (on_invalid="error") or logs one summary line and returns the counts.
    """

    def __init__(self, source: str | Path, on_invalid: str) -> None:
        if on_invalid not in ON_INVALID:
            raise InvalidArgumentError(
                f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}"
            )
        self.source = str(source)
        self.on_invalid = on_invalid
        self.counts: Counter[str] = Counter()
        self.first: str | None = None

    def add(self, reason: str, where: str, problem: str) -> None:
        self.counts[reason] += 1
        if self.first is None:
            self.first = f"{self.source}: {where}: {problem}"

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))

    def finish(self) -> Counter[str]:
        """Raise or log; the per-reason counts of what was skipped."""
        if not self.counts:
            return Counter()
        total = sum(self.counts.values())
        if self.on_invalid == "error":
            more = f" ({total} problems in all: {self.summary()})" if total > 1 else ""
            raise DatasetError(
                f"{self.first}{more}. Fix the data, or pass on_invalid='skip' to drop the "
                "invalid records with a warning"
            )
        logger.warning(
            "%s: skipped %d invalid record(s): %s; first: %s",
            self.source,
            total,
            self.summary(),
            self.first,
        )
        return Counter(self.counts)


def _oriented_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    w, h = image.size
    return (h, w) if orientation in _TRANSPOSING else (w, h)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # a malformed EXIF block: treat as unrotated, as load_image does
        return 1


def _choose_exif(raw: tuple[int, int], oriented: tuple[int, int], expected, exif: str) -> bool:
    """Whether to apply the EXIF orientation. "auto": whichever frame matches the size
    recorded in the annotations; when both do (or neither), the stored pixel frame, as the
    reference implementation (PIL without ``exif_transpose``) and COCO's annotations use."""
    if exif != "auto":
        return exif == "apply"
    return expected is not None and tuple(expected) == oriented and tuple(expected) != raw


def image_size(path: str | Path, exif: str = "auto", expected: Sequence[int] | None = None):
    """``(width, height)`` of an image file from its header, in the frame ``read_image``
    returns it. Raises ``ImageLoadError`` when the file is missing or not an image."""
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            raw, oriented = image.size, _oriented_size(image, orientation)
    except FileNotFoundError as e:
        raise ImageLoadError(f"Cannot load image '{path}': file not found") from e
    except Exception as e:
        raise ImageLoadError(f"Cannot load image '{path}': not a readable image ({e})") from e
    return oriented if _choose_exif(raw, oriented, expected, exif) else raw


def read_image(
    path: str | Path,
    expected: Sequence[int] | None = None,
    exif: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an image file into an ``[H, W, 3]`` uint8 RGB array with ``dfine.io.load_image``.

    Args:
        path: image file.
        expected: ``(width, height)`` recorded in the annotations, or ``None``.
        exif: ``"apply"`` rotates by the EXIF orientation tag (as ``dfine.Detector`` does),
            ``"ignore"`` keeps the stored pixel frame (as the reference implementation),
            ``"auto"`` picks the frame that matches ``expected`` (stored frame if both do).

    Raises:
        ImageLoadError: missing, unreadable or too large.
    """
    if exif not in EXIF_POLICIES:
        raise InvalidArgumentError(f"exif must be one of {EXIF_POLICIES}, got {exif!r}")
    if exif == "apply":
        return load_image(path, max_pixels=max_pixels)
    try:
        image = Image.open(path)
    except Exception:  # let load_image produce its precise message
        return load_image(path, max_pixels=max_pixels)
    with image:
        orientation = _orientation(image)
        if orientation == 1:
            return load_image(path, max_pixels=max_pixels)
        raw, oriented = image.size, _oriented_size(image, orientation)
        if _choose_exif(raw, oriented, expected, exif):
            return load_image(path, max_pixels=max_pixels)
        del image.getexif()[_ORIENTATION_TAG]  # load_image reads the cached EXIF
        try:
            return load_image(image, max_pixels=max_pixels)
        except ImageLoadError as e:
            raise ImageLoadError(str(e).replace("<PIL image>", f"'{path}'")) from e


class DetectionDataset(torch.utils.data.Dataset):
    """Base class: validated records in flat arrays, ``(image, target)`` items.

    Subclasses parse and validate their annotation format, then call ``_set_records``.
    Attributes every dataset has: ``num_classes``, ``class_names`` (tuple, one name per
    label), ``label_to_category`` (label -> category id of the annotation file),
    ``skipped`` (Counter of dropped records per reason), ``transforms``, ``epoch``.
    """

    exif: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __init__(self, img_folder: str | Path, transforms: Transform | None = None) -> None:
        self.img_folder = Path(img_folder)
        self.transforms = transforms
        self.num_classes = 0
        self.class_names: tuple[str, ...] = ()
        self.label_to_category: dict[int, int] = {}
        self.skipped: Counter[str] = Counter()
        self._epoch = -1

    # ------------------------------------------------------------------ records
    def _set_records(self, records: Sequence[ImageRecord]) -> None:
        """Pack records into flat arrays: ``_files`` [N], ``_image_ids`` [N], ``_sizes``
        [N, 2] (w, h), ``_offsets`` [N+1], and ``_boxes`` [M, 4], ``_labels`` [M],
        ``_areas`` [M] for the M training targets of all images."""
        self._files = np.array([r.file_name for r in records], dtype=np.str_)
        self._image_ids = np.array([r.image_id for r in records], dtype=np.int64)
        self._sizes = np.array([(r.width, r.height) for r in records], dtype=np.int64).reshape(
            -1, 2
        )
        counts = [len(r.labels) for r in records]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._boxes = _concat([r.boxes for r in records], (0, 4), np.float32)
        self._labels = _concat([r.labels for r in records], (0,), np.int64)
        self._areas = _concat([r.areas for r in records], (0,), np.float32)

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def image_ids(self) -> list[int]:
        """Image id of every item, in item order."""
        return self._image_ids.tolist()

    @property
    def num_targets(self) -> int:
        """Number of training targets (boxes) over all images."""
        return len(self._labels)

    def image_path(self, index: int) -> Path:
        return self.img_folder / str(self._files[index])

    # ------------------------------------------------------------------ items
    def load_item(self, index: int) -> tuple[tv_tensors.Image, Target]:
        """The item before transforms: ``uint8 [3, H, W]`` image and pixel XYXY target."""
        width, height = (int(v) for v in self._sizes[index])
        path = self.image_path(index)
        image_id = int(self._image_ids[index])
        try:
            rgb = read_image(path, (width, height), self.exif, self.max_pixels)
        except ImageLoadError as e:
            raise DatasetError(f"{self._source()}: image id {image_id}: {e}") from e
        if rgb.shape[:2] != (height, width):
            raise DatasetError(
                f"{self._source()}: image id {image_id}: '{path}' is {rgb.shape[1]}x"
                f"{rgb.shape[0]} (width x height) but the annotations say {width}x{height}; "
                "build the dataset with check_files=True to find every such image"
            )
        lo, hi = int(self._offsets[index]), int(self._offsets[index + 1])
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
        n = hi - lo
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(self._boxes[lo:hi].copy()),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(height, width),
            ),
            "labels": torch.from_numpy(self._labels[lo:hi].copy()),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([width, height], dtype=torch.int64),
            "area": torch.from_numpy(self._areas[lo:hi].copy()),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image, target = self.load_item(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Record the epoch and pass it on to ``transforms`` (for their stop-epoch policy)."""
        self._epoch = int(epoch)
        if hasattr(self.transforms, "set_epoch"):
            self.transforms.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _source(self) -> str:
        return str(self.img_folder)

    def __repr__(self) -> str:
        skipped = f", skipped={dict(self.skipped)}" if self.skipped else ""
        return (
            f"{type(self).__name__}(source='{self._source()}', images={len(self)}, "
            f"targets={self.num_targets}, num_classes={self.num_classes}{skipped})"
        )


def _concat(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


class Invalid(Exception):
    """Raised by the record checks: ``reason`` (a ``skipped`` key) and ``problem`` (text)."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


def check_box(
    x: float, y: float, w: float, h: float, width: float, height: float, tolerance: float
) -> tuple[float, float, float, float]:
    """Validate one ``[x, y, w, h]`` box against a ``width x height`` image.

    Returns:
        The XYXY box, clipped to the image.

    Raises:
        Invalid: non-finite values (``invalid_bbox``), non-positive width or height
            (``non_positive_size``), or extending more than ``tolerance`` pixels past the
            image (``outside_image``; a smaller overshoot is clipped).
    """
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)):
        raise Invalid("invalid_bbox", f"box {[x, y, w, h]} has non-finite values")
    if w <= 0 or h <= 0:
        raise Invalid(
            "non_positive_size", f"box [x, y, w, h] = {_fmt((x, y, w, h))} has non-positive size"
        )
    x1, y1 = x + w, y + h
    if x < -tolerance or y < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        raise Invalid(
            "outside_image",
            f"box [x, y, w, h] = {_fmt((x, y, w, h))} lies outside the {width:g}x{height:g} "
            f"image (by more than {tolerance:g} px)",
        )
    box = (max(x, 0.0), max(y, 0.0), min(x1, width), min(y1, height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise Invalid("outside_image", f"box {_fmt((x, y, w, h))} has no area inside the image")
    return box


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
