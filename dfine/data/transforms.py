"""The reference training and validation transforms, on ``torchvision.transforms.v2``.

Training (the reference's ``configs/dfine/include/dataloader.yml``)::

    RandomPhotometricDistort(p=0.5)   \\
    RandomZoomOut(fill=0)              > switched off from epoch ``stop_epoch`` on
    RandomIoUCrop(p=0.8)              /
    SanitizeBoundingBoxes(min_size=1)
    RandomHorizontalFlip()
    Resize((S, S))
    SanitizeBoundingBoxes(min_size=1)
    ToModelFormat()

Validation: ``Resize((S, S))``, ``ToModelFormat()``.

Every transform is called as ``transform(image, target)`` and returns ``(image, target)``.
The input is a dataset item (``uint8 [3, H, W]`` ``tv_tensors.Image`` and XYXY pixel
``BoundingBoxes``); the output of ``ToModelFormat`` is what the model and its criterion
take: image ``float32 [3, S, S]`` in ``[0, 1]`` (a plain tensor) and ``target["boxes"]``
``float32 [N, 4]`` ``(cx, cy, w, h)`` normalised by the image size. The other per-box
fields (``labels``, ``area``, ``iscrowd``) are filtered with the boxes; ``area`` keeps
its value in original pixels.

Randomness comes from torch's global generator (``torch.rand``), as in torchvision; in
``DataLoader`` workers that generator is seeded per worker by PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

from dfine.errors import InvalidArgumentError

__all__ = [
    "STOP_EPOCH_OPS",
    "Compose",
    "RandomIoUCrop",
    "ToModelFormat",
    "build_train_transforms",
    "build_val_transforms",
]

PER_BOX_FIELDS = ("labels", "area", "iscrowd")


def per_box_fields(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``SanitizeBoundingBoxes``: the per-box tensors of the target
    (``labels``, ``area``, ``iscrowd``), so all are filtered together with the boxes."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return tuple(target[k] for k in PER_BOX_FIELDS if k in target)


class RandomIoUCrop(T.RandomIoUCrop):
    """``v2.RandomIoUCrop`` applied with probability ``p`` (the reference's wrapper; the
    draw is ``torch.rand(1) >= p`` → no crop, as in the reference)."""

    def __init__(self, p: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise InvalidArgumentError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, *inputs: Any) -> Any:
        if torch.rand(1) >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ToModelFormat:
    """Last step: image to ``float32`` in ``[0, 1]`` (plain tensor), boxes to normalised
    ``cxcywh`` (plain ``float32 [N, 4]`` tensor)."""

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        image = F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
        boxes = target["boxes"]
        height, width = boxes.canvas_size
        cxcywh = F.convert_bounding_box_format(
            boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH
        )
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target = dict(target)
        target["boxes"] = cxcywh.as_subclass(torch.Tensor).float() / scale
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


STOP_EPOCH_OPS: tuple[type, ...] = (T.RandomPhotometricDistort, T.RandomZoomOut, T.RandomIoUCrop)
"""Transforms switched off from the stop epoch on (the reference's policy ``ops``)."""


class Compose:
    """Apply transforms in order to ``(image, target)``, with the reference's
    ``stop_epoch`` policy: from epoch ``stop_epoch`` on (``epoch >= stop_epoch``) the
    transforms that are instances of ``stop_ops`` are skipped.

    ``set_epoch`` is called by the dataset's ``set_epoch`` (``build_dataloader``'s loader
    calls that before each epoch). The epoch starts at -1, as in the reference.
    """

    def __init__(
        self,
        transforms: Sequence[Callable],
        stop_epoch: int | None = None,
        stop_ops: tuple[type, ...] = STOP_EPOCH_OPS,
    ) -> None:
        self.transforms = list(transforms)
        self.stop_epoch = stop_epoch
        self.stop_ops = stop_ops
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def augmenting(self) -> bool:
        """Whether the ``stop_ops`` are applied at the current epoch."""
        return self.stop_epoch is None or self.epoch < self.stop_epoch

    def active(self) -> list[Callable]:
        """The transforms applied at the current epoch."""
        if self.augmenting:
            return list(self.transforms)
        return [t for t in self.transforms if not isinstance(t, self.stop_ops)]

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        for transform in self.active():
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        lines = [f"    {t!r}" for t in self.transforms]
        policy = f", stop_epoch={self.stop_epoch}" if self.stop_epoch is not None else ""
        return f"{type(self).__name__}(epoch={self.epoch}{policy}, [\n" + "\n".join(lines) + "\n])"


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    """``640`` → ``(640, 640)``; ``(h, w)`` stays."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def build_train_transforms(
    size: int | Sequence[int] = 640, stop_epoch: int | None = None
) -> Compose:
    """The reference training pipeline; ``size`` is ``S`` or ``(H, W)`` of the output.
    The photometric distortion, zoom-out and IoU crop stop at ``stop_epoch`` (never when
    ``None``)."""
    return Compose(
        [
            T.RandomPhotometricDistort(p=0.5),
            T.RandomZoomOut(fill=0),
            RandomIoUCrop(p=0.8),
            T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_fields),
            T.RandomHorizontalFlip(),
            T.Resize(_size(size)),
            T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_fields),
            ToModelFormat(),
        ],
        stop_epoch=stop_epoch,
    )


def build_val_transforms(size: int | Sequence[int] = 640) -> Compose:
    """Resize to ``size`` (bilinear with antialiasing, within 1/255 of PIL's, which the
    reference and ``dfine.Detector`` use) and convert to the model's format."""
    return Compose([T.Resize(_size(size)), ToModelFormat()])
