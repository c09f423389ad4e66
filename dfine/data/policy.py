"""DEIM's Dense O2O data policy: when mosaic and mixup run, as a frozen configuration.

DEIM (github.com/ShihuaHuang95/DEIM, ``configs/base/deim.yml`` and the
``configs/deim_dfine/deim_hgnetv2_*.yml`` that override it) trains in four stages, set by
``train_dataloader.dataset.transforms.policy.epoch = [e0, e1, e2]`` (read in
``engine/data/transforms/container.py``, ``Compose.stop_epoch_forward``)::

    epoch <  e0        no strong augmentation: Mosaic, RandomPhotometricDistort,
                       RandomZoomOut, RandomIoUCrop are all skipped
    e0 <= epoch < e1   per sample, with probability mosaic_prob: Mosaic (and then no zoom-out,
                       no IoU crop); otherwise zoom-out and IoU crop as D-FINE. The photometric
                       distortion runs either way
    e1 <= epoch < e2   D-FINE's augmentation (no mosaic)
    e2 <= epoch        no strong augmentation (D-FINE's stop epoch; e2 is also the collate's
                       multi-scale ``stop_epoch`` in every DEIM config)

and the batch collate mixes images (``BatchImageCollateFunction``) with probability
``mixup_prob`` for ``mixup_epochs[0] <= epoch < mixup_epochs[1]``.

Here ``e0, e1 = mosaic_epochs`` and ``e2`` is the recipe's ``stop_epoch``, so ``--stop-epoch``
moves the end of every strong augmentation as it does for D-FINE; mixup stops there too
(DEIM's configs all end mixup before ``e2``, so this changes nothing for them).

This module imports no torch: recipes (and ``dfine train --help``) read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dfine.errors import InvalidArgumentError

__all__ = ["DEIM_POLICY_CONFIGS", "DenseO2OPolicy", "deim_policy"]


def _window(name: str, value: Any) -> tuple[int, int]:
    start, end = (int(v) for v in value)
    if not 0 <= start <= end:
        raise InvalidArgumentError(
            f"{name} must be (start, end) with 0 <= start <= end, got {value}"
        )
    return (start, end)


def _pair(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not low <= a <= b <= high:
        raise InvalidArgumentError(
            f"{name} must be (a, b) with {low} <= a <= b <= {high}, got {value}"
        )
    return (a, b)


def _probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise InvalidArgumentError(f"{name} must be in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class DenseO2OPolicy:
    """DEIM's Dense O2O augmentation: mosaic per sample, mixup per batch, each in an epoch
    window ``[start, end)``; the defaults are ``configs/base/deim.yml`` (DEIM-D-FINE-L/X).

    Attributes:
        mosaic_epochs: ``(e0, e1)``: before ``e0`` no strong augmentation at all; mosaic may
            run in ``[e0, e1)``; the strong augmentation ends at the recipe's ``stop_epoch``.
        mosaic_prob: chance that one sample is a mosaic (DEIM's ``Compose.mosaic_prob``; the
            ``Mosaic`` op's own ``probability`` is 1.0 in every DEIM config, so not kept).
        mixup_epochs: ``(start, end)`` of mixup in the batch collate.
        mixup_prob: chance that one batch is mixed.
        mixup_ratio: the weight ``beta`` of an image's own pixels is drawn uniformly from
            this range (rounded to 6 decimals, as DEIM); the previous image of the batch gets
            ``1 - beta``.
        mosaic_size: each of the four images is resized so that its shorter side is this.
        mosaic_degrees, mosaic_translate, mosaic_scale, mosaic_fill: the
            ``v2.RandomAffine`` applied to the 2x2 mosaic (rotation range in degrees,
            translation fractions, scale range, fill of the uncovered area).
    """

    mosaic_epochs: tuple[int, int] = (4, 29)
    mosaic_prob: float = 0.5
    mixup_epochs: tuple[int, int] = (4, 29)
    mixup_prob: float = 0.5
    mixup_ratio: tuple[float, float] = (0.45, 0.55)
    mosaic_size: int = 320
    mosaic_degrees: float = 10.0
    mosaic_translate: tuple[float, float] = (0.1, 0.1)
    mosaic_scale: tuple[float, float] = (0.5, 1.5)
    mosaic_fill: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise lists (from JSON) to tuples once
        set_(self, "mosaic_epochs", _window("mosaic_epochs", self.mosaic_epochs))
        set_(self, "mixup_epochs", _window("mixup_epochs", self.mixup_epochs))
        set_(self, "mosaic_prob", _probability("mosaic_prob", self.mosaic_prob))
        set_(self, "mixup_prob", _probability("mixup_prob", self.mixup_prob))
        set_(self, "mixup_ratio", _pair("mixup_ratio", self.mixup_ratio, 0.0, 1.0))
        set_(self, "mosaic_translate", _pair("mosaic_translate", self.mosaic_translate, 0.0, 1.0))
        set_(self, "mosaic_scale", _pair("mosaic_scale", self.mosaic_scale, 1e-6, float("inf")))
        if int(self.mosaic_size) <= 0:
            raise InvalidArgumentError(f"mosaic_size must be positive, got {self.mosaic_size}")
        if float(self.mosaic_degrees) < 0:
            raise InvalidArgumentError(f"mosaic_degrees must be >= 0, got {self.mosaic_degrees}")
        if not 0 <= int(self.mosaic_fill) <= 255:
            raise InvalidArgumentError(f"mosaic_fill must be in [0, 255], got {self.mosaic_fill}")

    # ------------------------------------------------------------------ the stages
    def strong_on(self, epoch: int, stop_epoch: int | None) -> bool:
        """Whether the strong augmentation (photometric distortion, zoom-out, IoU crop,
        mosaic) runs at ``epoch``: from ``mosaic_epochs[0]`` until ``stop_epoch``."""
        return self.mosaic_epochs[0] <= epoch and (stop_epoch is None or epoch < stop_epoch)

    def mosaic_on(self, epoch: int, stop_epoch: int | None) -> bool:
        """Whether a sample may be a mosaic at ``epoch`` (drawn with ``mosaic_prob``)."""
        return self.strong_on(epoch, stop_epoch) and epoch < self.mosaic_epochs[1]

    def mixup_on(self, epoch: int, stop_epoch: int | None) -> bool:
        """Whether a batch may be mixed at ``epoch`` (drawn with ``mixup_prob``)."""
        start, end = self.mixup_epochs
        return start <= epoch < end and (stop_epoch is None or epoch < stop_epoch)

    # ------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dictionary (tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenseO2OPolicy:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (as ``Recipe.from_dict``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DEIM_POLICY_CONFIGS: dict[str, tuple[tuple[int, int], int, int]] = {
    # name: ((e0, e1) of policy.epoch and mixup_epochs, stop_epoch = e2, epoches), from
    # configs/deim_dfine/deim_hgnetv2_{n,s,m,l,x}_coco.yml and
    # configs/deim_dfine/object365/deim_hgnetv2_x_obj2coco_24e.yml
    "n": ((4, 78), 148, 160),
    "s": ((4, 64), 120, 132),
    "m": ((4, 49), 90, 102),
    "l": ((4, 29), 50, 58),
    "x": ((4, 29), 50, 58),
    "obj2coco_x": ((2, 12), 20, 24),
}
"""DEIM-D-FINE's epoch numbers per config: the Dense O2O windows, the ``stop_epoch`` that ends
strong augmentation and multi-scale (the recipe's), and the total epochs (the recipe's)."""


def deim_policy(size: str) -> DenseO2OPolicy:
    """The Dense O2O policy of DEIM-D-FINE ``size`` (``n s m l x``, or ``obj2coco_x`` for
    the Objects365 → COCO fine-tuning config). Every config keeps ``deim.yml``'s mosaic
    (320 px, ±10°, translation 0.1, scale 0.5-1.5, fill 0, probability 0.5) and mixup
    (probability 0.5, ratio 0.45-0.55); only the windows differ (the stop epoch is the
    recipe's, see :data:`DEIM_POLICY_CONFIGS`)."""
    key = size.lower().replace("-", "_")
    if key not in DEIM_POLICY_CONFIGS:
        raise InvalidArgumentError(
            f"no DEIM-D-FINE config {size!r}; known: {', '.join(DEIM_POLICY_CONFIGS)}"
        )
    window, _stop, _epochs = DEIM_POLICY_CONFIGS[key]
    return DenseO2OPolicy(mosaic_epochs=window, mixup_epochs=window)
