"""From ``--data`` to datasets and loaders for a recipe (built on :mod:`dfine.data`).

``--data`` is either

- a folder with ``annotations/instances_<split>*.json`` and the images of each split in the
  folder named after the json (``instances_train2017.json`` → ``train2017/``,
  ``instances_train.json`` → ``train/``): the COCO layout, and what
  ``dfine.data.make_synthetic_dataset`` / ``dfine data synth`` write; or
- a COCO json file, with the images in ``--images`` (default: the folder beside the
  ``annotations`` folder named after the json, else the json's own folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfine.data import (
    BatchImageCollate,
    CocoDetection,
    build_dataloader,
    build_dense_o2o_transforms,
    build_train_transforms,
    build_val_transforms,
)
from dfine.errors import InputFileError, InvalidArgumentError
from dfine.train import dist
from dfine.train.recipes import Recipe


@dataclass(frozen=True)
class Split:
    """One split of a COCO-format dataset: annotation file and image folder."""

    annotations: Path
    images: Path


def _split_in_folder(root: Path, split: str) -> Split | None:
    candidates = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not candidates:
        return None
    ann = candidates[0]
    return Split(ann, root / ann.stem.removeprefix("instances_"))


def _images_for(ann: Path, images: str | os.PathLike | None) -> Path:
    if images is not None:
        return Path(images)
    stem = ann.stem.removeprefix("instances_")
    if ann.parent.name == "annotations" and (ann.parent.parent / stem).is_dir():
        return ann.parent.parent / stem
    return ann.parent


def resolve_split(
    data: str | os.PathLike, split: str, images: str | os.PathLike | None = None
) -> Split:
    """The ``split`` (``train``/``val``) of ``data`` (a folder or a json file)."""
    path = Path(data)
    if path.is_dir():
        found = _split_in_folder(path, split)
        if found is None:
            raise InputFileError(
                f"no annotations/instances_{split}*.json in {path}; pass the json file itself "
                "(and --images) or a folder in the COCO layout"
            )
        return Split(found.annotations, Path(images) if images else found.images)
    if path.suffix.lower() == ".json" and path.is_file():
        return Split(path, _images_for(path, images))
    raise InputFileError(f"--data {path}: neither a dataset folder nor a COCO json file")


def category_mapping(recipe: Recipe) -> str:
    """How category ids become labels: COCO's 80 ids remapped (reference
    ``remap_mscoco_category``), raw ids for Objects365's 366-wide heads, else contiguous."""
    if recipe.remap_mscoco_category:
        return "coco80"
    return "identity" if recipe.dataset == "obj365" else "contiguous"


def build_dataset(split: Split, recipe: Recipe, train: bool, num_classes: int | None = None):
    """A :class:`dfine.data.CocoDetection` with the recipe's transforms (for training with a
    ``data_policy``: DEIM's, whose mosaic draws from this dataset)."""
    size = recipe.input_size
    policy = recipe.data_policy if train else None
    transforms = None  # with a policy: set below, once the mosaic's dataset exists
    if not train:
        transforms = build_val_transforms(size)
    elif policy is None:
        transforms = build_train_transforms(size, stop_epoch=recipe.stop_epoch)
    dataset = CocoDetection(
        split.images,
        split.annotations,
        transforms=transforms,
        category_mapping=category_mapping(recipe),
        num_classes=num_classes if num_classes is not None else recipe.num_classes,
    )
    if policy is not None:
        dataset.transforms = build_dense_o2o_transforms(dataset, policy, size, recipe.stop_epoch)
    return dataset


def per_rank_batch(total: int) -> int:
    """The reference's ``total_batch_size`` split over the processes."""
    world = dist.world_size()
    if total % world:
        raise InvalidArgumentError(f"batch size {total} is not divisible by the {world} processes")
    return total // world


def build_loaders(
    recipe: Recipe,
    train_split: Split,
    val_split: Split | None,
    seed: int = 0,
    num_workers: int | None = None,
) -> tuple[Any, Any, Any]:
    """``(train_loader, val_loader or None, train_dataset)`` for ``recipe``."""
    workers = recipe.num_workers if num_workers is None else num_workers
    train_ds = build_dataset(train_split, recipe, train=True)
    collate = BatchImageCollate(
        base_size=recipe.input_size,
        base_size_repeat=recipe.base_size_repeat,
        stop_epoch=recipe.stop_epoch,
        policy=recipe.data_policy,
    )
    train_loader = build_dataloader(
        train_ds,
        per_rank_batch(recipe.batch_size),
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        seed=seed,
    )
    val_loader = None
    if val_split is not None:
        val_ds = build_dataset(val_split, recipe, train=False, num_classes=train_ds.num_classes)
        val_loader = build_dataloader(
            val_ds,
            max(recipe.val_batch_size // dist.world_size(), 1),
            shuffle=False,
            num_workers=workers,
            drop_last=False,
            seed=seed,
        )
    return train_loader, val_loader, train_ds
