"""DEIM's Dense O2O augmentation on ``torchvision.transforms.v2``: the mosaic transform and
the training pipeline that switches it by epoch (the batch mixup is in
:mod:`dfine.data.collate`; the epoch windows in :mod:`dfine.data.policy`).

Training pipeline (DEIM's ``configs/base/deim.yml``)::

    Mosaic                     only in the mosaic window, with probability mosaic_prob
    RandomPhotometricDistort(p=0.5)
    RandomZoomOut(fill=0)      \\ skipped when the sample is a mosaic
    RandomIoUCrop(p=0.8)       /
    SanitizeBoundingBoxes(min_size=1)
    RandomHorizontalFlip()
    Resize((S, S))
    SanitizeBoundingBoxes(min_size=1)
    ToModelFormat()

The first four are the strong augmentation: off before ``mosaic_epochs[0]`` and from the
recipe's ``stop_epoch`` on (see :class:`dfine.data.policy.DenseO2OPolicy`).

Mosaic (DEIM's ``engine/data/transforms/mosaic.py`` with ``use_cache: False``, as every DEIM
config sets it): the sample and three items drawn uniformly with replacement from the
dataset (before their transforms) are each resized so that their shorter side is
``mosaic_size``; they fill the four quadrants (top-left, top-right, bottom-left,
bottom-right) of a zero canvas of twice the largest height and width, each at its quadrant's
top-left corner; the boxes are shifted with them and the per-box fields concatenated. A
``v2.RandomAffine`` (rotation, translation, scale, ``fill``) then moves the whole mosaic;
torchvision moves the boxes (enclosing box of the moved corners, clamped to the canvas) and
the pipeline's ``SanitizeBoundingBoxes`` drops those left under 1 px, as in DEIM.
DEIM's mosaic image cache (``use_cache``) is not implemented: no DEIM config turns it on.

Randomness comes from torch's global generator (seeded per ``DataLoader`` worker by PyTorch),
as the other transforms of :mod:`dfine.data.transforms`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

from dfine.data.policy import DenseO2OPolicy
from dfine.data.transforms import (
    PER_BOX_FIELDS,
    STOP_EPOCH_OPS,
    Compose,
    build_train_transforms,
)

__all__ = ["DenseO2OCompose", "ItemSource", "Mosaic", "build_dense_o2o_transforms"]

Target = dict[str, Any]


class ItemSource(Protocol):
    """What the mosaic draws its other images from: a dataset's untransformed items
    (``DetectionDataset.load_item``: ``uint8 [3, H, W]`` image, XYXY pixel boxes)."""

    def __len__(self) -> int: ...

    def load_item(self, index: int) -> tuple[tv_tensors.Image, Target]: ...


class Mosaic:
    """DEIM's mosaic of the sample and three random items of ``source`` (see the module).

    Args:
        source: the dataset, passed explicitly (its ``load_item`` gives the other images).
        size: the shorter side of each of the four images.
        degrees, translate, scale, fill: ``v2.RandomAffine`` of the mosaic.
    """

    def __init__(
        self,
        source: ItemSource,
        size: int = 320,
        degrees: float = 10.0,
        translate: Sequence[float] = (0.1, 0.1),
        scale: Sequence[float] = (0.5, 1.5),
        fill: int = 0,
    ) -> None:
        self.source = source
        self.resize = T.Resize(size)
        self.affine = T.RandomAffine(
            degrees=degrees, translate=tuple(translate), scale=tuple(scale), fill=fill
        )

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        others = torch.randint(len(self.source), (3,)).tolist()
        tiles = [self.resize(image, target)]
        tiles += [self.resize(*self.source.load_item(i)) for i in others]
        canvas, merged = paste_mosaic(tiles)
        return self.affine(canvas, merged)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.resize.size}, affine={self.affine!r})"


def paste_mosaic(tiles: Sequence[tuple[torch.Tensor, Target]]) -> tuple[tv_tensors.Image, Target]:
    """Four ``(image [C, h_i, w_i], target)`` into one ``[C, 2·max h, 2·max w]`` image (zero
    where no tile lies), tile ``i`` at ``(x, y) = ((i % 2)·max w, (i // 2)·max h)``.

    The boxes (any format in, XYXY pixels out) are shifted with their tile; ``labels``,
    ``area`` and ``iscrowd`` are concatenated in tile order; the other fields (``image_id``,
    ``orig_size``) are the first tile's.
    """
    if len(tiles) != 4:
        raise ValueError(f"a mosaic has 4 tiles, got {len(tiles)}")
    height = max(img.shape[-2] for img, _ in tiles)
    width = max(img.shape[-1] for img, _ in tiles)
    first = tiles[0][0]
    canvas = torch.zeros((first.shape[0], 2 * height, 2 * width), dtype=first.dtype)
    boxes = []
    for i, (img, target) in enumerate(tiles):
        x, y = (i % 2) * width, (i // 2) * height
        canvas[:, y : y + img.shape[-2], x : x + img.shape[-1]] = img
        xyxy = F.convert_bounding_box_format(
            target["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYXY
        ).as_subclass(torch.Tensor)
        boxes.append(xyxy + torch.tensor([x, y, x, y], dtype=xyxy.dtype))
    merged = dict(tiles[0][1])
    merged["boxes"] = tv_tensors.BoundingBoxes(
        torch.cat(boxes), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=canvas.shape[-2:]
    )
    for key in PER_BOX_FIELDS:
        if key in merged:
            merged[key] = torch.cat([target[key] for _, target in tiles])
    return tv_tensors.Image(canvas), merged


MOSAIC_EXCLUSIVE: tuple[type, ...] = (T.RandomZoomOut, T.RandomIoUCrop)
"""Transforms skipped on a sample that is a mosaic (DEIM: "Mosaic and ZoomOut/IoUCrop can not
co-exist in the same sample")."""


class DenseO2OCompose(Compose):
    """:class:`dfine.data.transforms.Compose` with DEIM's four-stage policy: the strong ops
    (:data:`STOP_EPOCH_OPS` and :class:`Mosaic`) run from ``policy.mosaic_epochs[0]`` until
    ``stop_epoch``; in the mosaic window each sample is a mosaic with probability
    ``policy.mosaic_prob`` (one ``torch.rand`` draw per sample, in the window only), and a
    mosaic skips :data:`MOSAIC_EXCLUSIVE`."""

    def __init__(
        self, transforms: Sequence[Callable], policy: DenseO2OPolicy, stop_epoch: int | None
    ) -> None:
        super().__init__(transforms, stop_epoch, stop_ops=(*STOP_EPOCH_OPS, Mosaic))
        self.policy = policy

    @property
    def augmenting(self) -> bool:
        """Whether the strong ops run at the current epoch."""
        return self.policy.strong_on(self.epoch, self.stop_epoch)

    @property
    def mosaic_window(self) -> bool:
        """Whether a sample may be a mosaic at the current epoch."""
        return self.policy.mosaic_on(self.epoch, self.stop_epoch)

    def active(self, mosaic: bool = False) -> list[Callable]:
        """The transforms applied at the current epoch to a sample drawn to be a mosaic
        (``mosaic``; outside the mosaic window no sample is one) or not."""
        if not self.augmenting:
            return [t for t in self.transforms if not isinstance(t, self.stop_ops)]
        skipped = MOSAIC_EXCLUSIVE if mosaic and self.mosaic_window else (Mosaic,)
        return [t for t in self.transforms if not isinstance(t, skipped)]

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        mosaic = self.mosaic_window and bool(torch.rand(1) < self.policy.mosaic_prob)
        for transform in self.active(mosaic):
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return super().__repr__().replace("(epoch=", f"(policy={self.policy}, epoch=", 1)


def build_dense_o2o_transforms(
    source: ItemSource,
    policy: DenseO2OPolicy,
    size: int | Sequence[int] = 640,
    stop_epoch: int | None = None,
) -> DenseO2OCompose:
    """DEIM's training pipeline (see the module) over ``source``, the dataset whose
    transforms this becomes (the mosaic draws its other images from it)."""
    mosaic = Mosaic(
        source,
        policy.mosaic_size,
        policy.mosaic_degrees,
        policy.mosaic_translate,
        policy.mosaic_scale,
        policy.mosaic_fill,
    )
    base = build_train_transforms(size, stop_epoch=stop_epoch)
    return DenseO2OCompose([mosaic, *base.transforms], policy, stop_epoch)
