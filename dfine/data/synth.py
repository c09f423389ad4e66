"""A procedural, seeded COCO-format detection dataset of coloured shapes.

Eight classes, each one shape in one colour (``SYNTH_CLASSES``): red circle, blue square,
green triangle, yellow star, purple ring, orange cross, cyan hexagon, pink heart. Each
image holds 1-8 of them, from about 10 px to about 40 % of the image, rotated where that
means something, partly overlapping (every object stays at least ``min_visible`` visible),
on a muted procedural background (value noise, gradients, stripes, checkers) or a
desaturated crop of a bundled example photo.

Boxes are computed from the visible pixels of each drawn shape (drawn without
anti-aliasing, so a PNG's pixels match them exactly); ``area`` is the visible pixel count.
Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the
output does not depend on the number of worker processes, and the same arguments give
byte-identical files.

Modules: :mod:`dfine.data.synth_shapes` (classes, shape geometry), :mod:`dfine.data.synth_scene`
(backgrounds, placement, one image), this one (options and the dataset writer).

Layout written by ``make_synthetic_dataset(out)``::

    out/train/000001.jpg ...   out/val/000001.jpg ...
    out/annotations/instances_train.json   out/annotations/instances_val.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dfine.data.synth_scene import PHOTO_DIR, photos, render_image
from dfine.data.synth_shapes import SYNTH_CLASSES
from dfine.errors import InvalidArgumentError

__all__ = ["SYNTH_CLASSES", "SynthOptions", "make_synthetic_dataset"]

SYNTH_VERSION = "1"
SPLITS = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthOptions:
    """What every image of a dataset shares (see :func:`make_synthetic_dataset`); checked on
    construction."""

    image_size: tuple[int, int] = (320, 320)
    num_objects: tuple[int, int] = (1, 8)
    size_range: tuple[float, float] | None = None
    photo_fraction: float = 0.2
    photo_dir: Path = PHOTO_DIR
    image_format: str = "jpg"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        width, height = self.image_size
        if width < 32 or height < 32:
            raise InvalidArgumentError(f"image_size must be at least 32x32, got {width}x{height}")
        if self.image_format not in ("jpg", "png"):
            raise InvalidArgumentError(
                f"image_format must be 'jpg' or 'png', got {self.image_format!r}"
            )
        lo, hi = self.num_objects
        if not 1 <= lo <= hi:
            raise InvalidArgumentError(
                f"num_objects must be (min, max) with 1 <= min <= max, got {self.num_objects}"
            )
        if not 0.0 <= self.photo_fraction <= 1.0:
            raise InvalidArgumentError(
                f"photo_fraction must be in [0, 1], got {self.photo_fraction}"
            )


def _make_one(index: int, *, split: str, folder: Path, seed: int, options: SynthOptions) -> dict:
    """Render, write image ``index`` (1-based) of a split; its COCO records."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    width, height = options.image_size
    rgb, objects = render_image(
        rng,
        width,
        height,
        num_objects=options.num_objects,
        size_range=options.size_range,
        photo_fraction=options.photo_fraction,
        photo_dir=options.photo_dir,
    )
    name = f"{index:06d}.{options.image_format}"
    image = Image.fromarray(rgb)
    if options.image_format == "png":
        image.save(folder / name, format="PNG", compress_level=6)
    else:
        image.save(folder / name, format="JPEG", quality=options.jpeg_quality, subsampling=0)
    anns = [{"category_id": o.label + 1, "bbox": o.bbox(), "area": o.area} for o in objects]
    return {
        "image": {"id": index, "file_name": name, "width": width, "height": height},
        "anns": anns,
    }


def _categories() -> list[dict[str, Any]]:
    return [
        {"id": i + 1, "name": c.name, "supercategory": c.shape} for i, c in enumerate(SYNTH_CLASSES)
    ]


def _write_split(
    split: str, count: int, out: Path, seed: int, options: SynthOptions, workers: int, bar
) -> Path:
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    work = partial(_make_one, split=split, folder=folder, seed=seed, options=options)
    indices = range(1, count + 1)
    if workers > 0 and count > 1:
        context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(context).Pool(workers) as pool:
            records = []
            for record in pool.imap(work, indices, chunksize=8):
                records.append(record)
                bar.update(1)
    else:
        records = []
        for i in indices:
            records.append(work(i))
            bar.update(1)
    images, annotations = [], []
    for record in records:
        images.append(record["image"])
        for ann in record["anns"]:
            ann = {
                "id": len(annotations) + 1,
                "image_id": record["image"]["id"],
                **ann,
                "iscrowd": 0,
            }
            annotations.append(ann)
    info = {
        "description": "dfine synthetic shapes",
        "version": SYNTH_VERSION,
        "split": split,
        "seed": seed,
        "image_size": list(options.image_size),
    }
    data = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def make_synthetic_dataset(
    out_dir: str | Path,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: Sequence[int] = (320, 320),
    seed: int = 0,
    num_objects: tuple[int, int] = (1, 8),
    size_range: tuple[float, float] | None = None,
    photo_fraction: float = 0.2,
    photo_dir: str | Path | None = None,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the synthetic shapes dataset (see the module docstring) under ``out_dir``.

    Args:
        num_train, num_val: number of images per split (0 skips the split's images, but its
            json is still written).
        image_size: ``(width, height)``.
        seed: everything is a function of it (and the other arguments).
        num_objects: inclusive range of objects per image.
        size_range: nominal object diameter range in pixels; default
            ``(10, 0.45 * min(width, height))``.
        photo_fraction: share of backgrounds that are crops of the photos in ``photo_dir``
            (default: the repository's ``assets/examples``); 0 for procedural only.
        image_format: ``"jpg"`` (quality ``jpeg_quality``, 4:4:4) or ``"png"`` (lossless:
            the pixels match the boxes exactly).
        workers: processes drawing images; default ``min(cpu_count, 8)`` for more than 64
            images, else 0 (in this process). The output does not depend on it.
        progress: show a tqdm progress bar.

    Returns:
        Paths: ``root``, ``train_images``, ``val_images``, ``train_annotations``,
        ``val_annotations``. Existing files of the same names are overwritten.
    """
    if num_train < 0 or num_val < 0:
        raise InvalidArgumentError("num_train and num_val must be >= 0")
    width, height = (int(v) for v in image_size)
    options = SynthOptions(
        image_size=(width, height),
        num_objects=(int(num_objects[0]), int(num_objects[1])),
        size_range=size_range,
        photo_fraction=float(photo_fraction),
        photo_dir=Path(photo_dir) if photo_dir is not None else PHOTO_DIR,
        image_format=image_format,
        jpeg_quality=int(jpeg_quality),
    )
    if options.photo_fraction > 0:
        photos(options.photo_dir)  # fail early when there are none
    total = num_train + num_val
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total > 64 else 0
    out = Path(out_dir)
    with tqdm(total=total, desc="synth", unit="img", disable=not progress) as bar:
        paths = {
            f"{split}_annotations": _write_split(split, n, out, seed, options, workers, bar)
            for split, n in (("train", num_train), ("val", num_val))
        }
    return {"root": out, "train_images": out / "train", "val_images": out / "val", **paths}
