"""Batch collation with the reference's multi-scale training, and the data loader.

``BatchImageCollate`` stacks ``[3, S, S]`` images into ``[B, 3, S, S]`` and keeps targets
as a list. Before ``stop_epoch`` it resizes the whole batch to a size drawn with Python's
``random.choice`` from ``generate_scales(base_size, base_size_repeat)``, with
``torch.nn.functional.interpolate``'s default (nearest) mode, as the reference does.
Targets hold normalised boxes, so they need no change. ``random`` is seeded per
``DataLoader`` worker by PyTorch (collation runs in the workers), so a seeded loader draws
the same sizes every run; with ``num_workers=0`` the main process's ``random`` is used.

With a :class:`dfine.data.policy.DenseO2OPolicy` it first mixes the batch as DEIM's
``BatchImageCollateFunction`` does (:func:`mixup_batch`): on every batch one
``random.random()`` draw; below ``mixup_prob`` and inside the mixup window a ratio
``beta = round(random.uniform(*mixup_ratio), 6)``; then the multi-scale size as before.

``build_dataloader`` builds a ``DataLoader`` whose ``set_epoch(epoch)`` reaches the
sampler (shuffle order), the dataset's transforms (stop-epoch policy), the collate
function (multi-scale stop) and the worker seeds, so that an epoch's data depends only on
``(seed, epoch, rank)`` when ``num_workers > 0``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from dfine.data.policy import DenseO2OPolicy
from dfine.data.transforms import PER_BOX_FIELDS
from dfine.errors import InvalidArgumentError

__all__ = ["BatchImageCollate", "DataLoader", "build_dataloader", "generate_scales", "mixup_batch"]


def generate_scales(base_size: int, base_size_repeat: int) -> list[int]:
    """The reference's multi-scale list: multiples of 32 from ``0.75·base`` up to
    ``base`` (exclusive), ``base`` ``base_size_repeat`` times, then from ``1.25·base``
    down (exclusive of ``base``). For 640 and 3:
    ``[480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]``."""
    low = int(base_size * 0.75 / 32) * 32
    high = int(base_size * 1.25 / 32) * 32
    steps = (base_size - low) // 32
    return (
        [low + i * 32 for i in range(steps)]
        + [base_size] * base_size_repeat
        + [high - i * 32 for i in range(steps)]
    )


def mixup_batch(
    images: torch.Tensor, targets: Sequence[dict[str, Any]], beta: float
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """DEIM's batch mixup: image ``i`` becomes ``beta·x_i + (1 - beta)·x_{i-1}`` (``x_{-1}``
    is the last image; a batch of one is mixed with itself, as in DEIM).

    Args:
        images: float ``[B, 3, H, W]``.
        targets: ``B`` dicts with normalised ``boxes [N_i, 4]`` and per-box fields.
        beta: the weight of each image's own pixels.

    Returns:
        ``(mixed [B, 3, H, W], new targets)``: target ``i`` holds the boxes of image ``i``
        then of image ``i - 1``, with ``labels``, ``area`` and ``iscrowd`` concatenated the
        same way (DEIM concatenates boxes, labels and area), and ``mixup`` float32
        ``[N_i + N_{i-1}]``: ``beta`` for its own boxes, ``1 - beta`` for the other image's.
        DEIM's criterion (``DEIMCriterion``, its matcher and denoising) reads only
        ``labels`` and ``boxes``; ``mixup`` is attached and never read there. The inputs
        are not modified.
    """
    mixed = images.roll(shifts=1, dims=0).mul_(1.0 - beta).add_(images.mul(beta))
    merged = []
    for i, target in enumerate(targets):
        other = targets[i - 1]
        new = dict(target)
        for key in ("boxes", *PER_BOX_FIELDS):
            if key in target and key in other:
                new[key] = torch.cat([target[key], other[key]])
        own, theirs = len(target["boxes"]), len(other["boxes"])
        new["mixup"] = torch.tensor([beta] * own + [1.0 - beta] * theirs, dtype=torch.float32)
        merged.append(new)
    return mixed, merged


class BatchImageCollate:
    """Collate ``(image [3, S, S], target)`` items into ``(images [B, 3, s, s], targets)``.

    Args:
        base_size: the training size ``S``.
        base_size_repeat: weight of ``S`` in the scale list; ``None`` turns multi-scale off
            (the reference's D-FINE-N recipes; S uses 20, M 6, L 4, X 3).
        stop_epoch: from this epoch on, no resizing and no mixup (``None``: never stops).
        mode: ``F.interpolate`` mode, ``"nearest"`` as the reference.
        policy: DEIM's Dense O2O policy, for its batch mixup (``None``: no mixup, and no
            draw from ``random`` for it).
    """

    def __init__(
        self,
        base_size: int = 640,
        base_size_repeat: int | None = 3,
        stop_epoch: int | None = None,
        mode: str = "nearest",
        policy: DenseO2OPolicy | None = None,
    ) -> None:
        self.base_size = base_size
        self.base_size_repeat = base_size_repeat
        self.scales = (
            generate_scales(base_size, base_size_repeat) if base_size_repeat is not None else None
        )
        self.stop_epoch = stop_epoch
        self.mode = mode
        self.policy = policy
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def multi_scale(self) -> bool:
        """Whether batches are resized at the current epoch."""
        return self.scales is not None and (self.stop_epoch is None or self.epoch < self.stop_epoch)

    @property
    def mixup_window(self) -> bool:
        """Whether a batch may be mixed at the current epoch."""
        return self.policy is not None and self.policy.mixup_on(self.epoch, self.stop_epoch)

    def _mixup(self, images: torch.Tensor, targets: list) -> tuple[torch.Tensor, list]:
        """DEIM's draws, in its order: the chance on every batch, then the ratio."""
        if self.policy is None:
            return images, targets
        if random.random() < self.policy.mixup_prob and self.mixup_window:
            beta = round(random.uniform(*self.policy.mixup_ratio), 6)
            return mixup_batch(images, targets, beta)
        return images, targets

    def __call__(
        self, items: Sequence[tuple[torch.Tensor, dict[str, Any]]]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        shapes = {tuple(image.shape) for image, _ in items}
        if len(shapes) != 1:
            raise InvalidArgumentError(
                f"images of one batch must have one size, got {sorted(shapes)}; end the "
                "transforms with a Resize (build_train_transforms / build_val_transforms do)"
            )
        images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in items])
        targets = [target for _, target in items]
        images, targets = self._mixup(images, targets)
        if self.multi_scale:
            size = random.choice(self.scales)
            if size != images.shape[-1] or size != images.shape[-2]:
                images = F.interpolate(images, size=size, mode=self.mode)
        return images, targets

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_size={self.base_size}, "
            f"base_size_repeat={self.base_size_repeat}, stop_epoch={self.stop_epoch}, "
            f"policy={self.policy})"
        )


def _seed_for(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, max(epoch, 0) + 1, rank]).generate_state(1)[0])


class DataLoader(torch.utils.data.DataLoader):
    """``torch.utils.data.DataLoader`` with ``set_epoch(epoch)``: it sets the sampler's
    epoch (shuffle order), calls ``set_epoch`` of the dataset and of the collate function
    when they have one, and reseeds the generator that seeds the workers. Call it before
    iterating each epoch (workers are started per epoch and copy the dataset then)."""

    seed: int = 0
    rank: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        for part in (self.dataset, self.collate_fn):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(_seed_for(self.seed, epoch, self.rank))


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    distributed: bool | None = None,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with an epoch-seeded sampler.

    Args:
        batch_size: images per batch in this process.
        shuffle: a new permutation each epoch, drawn from ``seed + epoch`` (the
            ``DistributedSampler`` rule, also with one process).
        collate_fn: defaults to ``BatchImageCollate(base_size_repeat=None)`` (stack only).
        distributed: shard with a ``DistributedSampler`` over the process group; ``None``
            (default) means "if ``torch.distributed`` is initialised". Each rank sees
            ``ceil(len / world_size)`` items (the sampler pads by repeating items).
        seed: seed of the shuffle order and of the worker seeds.

    Returns:
        A ``DataLoader`` with ``set_epoch``; it is set to epoch 0.
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        rank = sampler.rank
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
        rank = 0
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn
        if collate_fn is not None
        else BatchImageCollate(base_size_repeat=None),
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )
    loader.seed, loader.rank = seed, rank
    loader.set_epoch(0)
    return loader
