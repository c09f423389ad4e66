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

Layout written by ``make_synthetic_dataset(out)``::

    out/train/000001.jpg ...   out/val/000001.jpg ...
    out/annotations/instances_train.json   out/annotations/instances_val.json
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from dfine.resources import asset_path

__all__ = [
    "SYNTH_CLASSES",
    "SynthClass",
    "SynthObject",
    "make_synthetic_dataset",
    "render_image",
    "shape_mask",
]

SYNTH_VERSION = "1"
SPLITS = {"train": 1, "val": 2}
PHOTO_DIR = asset_path("examples")
"""The bundled example photos (package data): the default photo backgrounds."""


@dataclass(frozen=True)
class SynthClass:
    """One class: a shape drawn in one colour (RGB)."""

    name: str
    shape: str
    color: tuple[int, int, int]


SYNTH_CLASSES: tuple[SynthClass, ...] = (
    SynthClass("red circle", "circle", (220, 35, 35)),
    SynthClass("blue square", "square", (35, 85, 235)),
    SynthClass("green triangle", "triangle", (35, 175, 55)),
    SynthClass("yellow star", "star", (245, 215, 25)),
    SynthClass("purple ring", "ring", (140, 50, 200)),
    SynthClass("orange cross", "cross", (250, 130, 15)),
    SynthClass("cyan hexagon", "hexagon", (25, 200, 215)),
    SynthClass("pink heart", "heart", (245, 105, 185)),
)
"""The classes; label ``i`` is category id ``i + 1`` in the json files."""

_ROTATING = {"square", "triangle", "star", "cross", "hexagon"}


@dataclass
class SynthObject:
    """One drawn object: ``label`` (0-based), the top-left corner of its mask patch, the
    full ``mask`` of the shape and its ``visible`` part (bool ``[h, w]`` patches)."""

    label: int
    top: int
    left: int
    mask: np.ndarray
    visible: np.ndarray

    def bbox(self) -> list[int]:
        """COCO ``[x, y, w, h]`` of the visible pixels (integer pixel edges)."""
        rows = np.flatnonzero(self.visible.any(axis=1))
        cols = np.flatnonzero(self.visible.any(axis=0))
        return [
            int(self.left + cols[0]),
            int(self.top + rows[0]),
            int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1),
        ]

    @property
    def area(self) -> int:
        return int(self.visible.sum())


# --------------------------------------------------------------------------- shapes


def _regular(n: int, radius: float, angle: float, phase: float = 0.0) -> np.ndarray:
    t = angle + phase + np.arange(n) * (2 * np.pi / n)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(shape: str, r: float, angle: float) -> np.ndarray:
    """Polygon vertices ``[n, 2]`` (x, y) around the origin, circumradius about ``r``."""
    if shape == "square":
        return _regular(4, r, angle, np.pi / 4)
    if shape == "triangle":
        return _regular(3, r, angle, -np.pi / 2)
    if shape == "hexagon":
        return _regular(6, r, angle)
    if shape == "star":
        outer, inner = (
            _regular(5, r, angle, -np.pi / 2),
            _regular(5, 0.45 * r, angle, -np.pi / 2 + np.pi / 5),
        )
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "cross":
        a = max(0.3 * r, 1.5)
        quarter = np.array([[a, -r], [a, -a], [r, -a]])
        arms = [_rotate(quarter, k * np.pi / 2) for k in range(4)]
        return _rotate(np.concatenate(arms), angle)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) + 2.5
        return _rotate(np.stack([x, y], axis=1) * (r / 16.5), angle)
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, size: float, angle: float = 0.0) -> np.ndarray:
    """Binary mask of one shape, cropped to its pixels.

    Args:
        shape: ``circle square triangle star ring cross hexagon heart``.
        size: nominal diameter in pixels (of the circumscribed circle, about).
        angle: rotation in radians (circle and ring ignore it).

    Returns:
        bool ``[h, w]``, every border row and column holding a shape pixel.
    """
    r = size / 2
    side = math.ceil(size) + 4
    c = side / 2
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        if shape == "ring":
            inner = min(0.55 * r, r - 2.5)
            draw.ellipse([c - inner, c - inner, c + inner, c + inner], fill=0)
    else:
        points = _outline(shape, r, angle) + c
        draw.polygon([tuple(p) for p in points.tolist()], fill=255)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


# --------------------------------------------------------------------------- backgrounds

_PHOTOS: dict[Path, list[np.ndarray]] = {}


def _photos(photo_dir: Path) -> list[np.ndarray]:
    """The example photos as float RGB arrays, decoded once per process."""
    if photo_dir not in _PHOTOS:
        files = sorted(
            p for p in photo_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not files:
            raise FileNotFoundError(
                f"no photos (*.jpg, *.png) in {photo_dir} for photo backgrounds; pass "
                "photo_fraction=0 (CLI: --photos 0) to use procedural backgrounds only"
            )
        _PHOTOS[photo_dir] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return _PHOTOS[photo_dir]


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour, float ``[3]``."""
    return np.clip(rng.uniform(60, 200) + rng.normal(0, 18, 3), 0, 255)


def _upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(grid.astype(np.float32), "F").resize((width, height), Image.BICUBIC)
    )


def _field(rng: np.random.Generator, kind: str, width: int, height: int) -> np.ndarray:
    """A scalar pattern in ``[0, 1]``, float ``[H, W]``."""
    if kind == "noise":
        total = np.zeros((height, width), np.float32)
        for cells, weight in (
            (rng.integers(2, 6), 0.6),
            (rng.integers(6, 16), 0.3),
            (rng.integers(16, 40), 0.1),
        ):
            total += weight * _upsample(rng.random((cells, cells)), width, height)
        return np.clip(total, 0, 1)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    t = x * math.cos(phi) + y * math.sin(phi)
    if kind == "gradient":
        return (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    period = rng.uniform(8, 40)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * t / period)
    u = x * math.cos(phi) - y * math.sin(phi)  # checker
    return ((np.floor(t / period) + np.floor(u / period)) % 2).astype(np.float32)


def _photo(
    rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int
) -> np.ndarray:
    """A desaturated, lower-contrast random crop of a photo, float ``[H, W, 3]``."""
    src = photos[rng.integers(len(photos))]
    sh, sw = src.shape[:2]
    scale = min(sw / width, sh / height) * rng.uniform(0.35, 1.0)
    cw, ch = max(int(width * scale), 8), max(int(height * scale), 8)
    x0, y0 = rng.integers(0, sw - cw + 1), rng.integers(0, sh - ch + 1)
    crop = Image.fromarray(src[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.BILINEAR)
    img = np.asarray(crop).astype(np.float32)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + 0.4 * (img - gray)
    return 128 + 0.75 * (img - 128)


def _background(
    rng: np.random.Generator, width: int, height: int, photo_fraction: float, photo_dir: Path
) -> np.ndarray:
    """A muted textured background, float ``[H, W, 3]`` in 0..255."""
    if photo_fraction > 0 and rng.random() < photo_fraction:
        img = _photo(rng, _photos(photo_dir), width, height)
    else:
        kind = ("noise", "gradient", "stripes", "checker")[rng.integers(4)]
        field = _field(rng, kind, width, height)[:, :, None]
        if kind in ("stripes", "checker"):
            field = 0.5 + rng.uniform(0.15, 0.45) * (field - 0.5)  # low contrast
        img = _muted(rng) * (1 - field) + _muted(rng) * field
    grain = rng.uniform(1.0, 6.0)
    return img + rng.normal(0, grain, (height, width, 1)).astype(np.float32)


# --------------------------------------------------------------------------- objects


def _occludes(new: SynthObject, objects: list[SynthObject], min_visible: float, min_box: int):
    """The updated visible masks of ``objects`` if ``new`` is drawn on top, or ``None``
    when one would keep less than ``min_visible`` of its area or a box side < ``min_box``."""
    updates = {}
    nh, nw = new.mask.shape
    for k, obj in enumerate(objects):
        oh, ow = obj.mask.shape
        top, left = max(obj.top, new.top), max(obj.left, new.left)
        bottom, right = min(obj.top + oh, new.top + nh), min(obj.left + ow, new.left + nw)
        if bottom <= top or right <= left:
            continue
        cover = new.mask[top - new.top : bottom - new.top, left - new.left : right - new.left]
        region = (slice(top - obj.top, bottom - obj.top), slice(left - obj.left, right - obj.left))
        if not (obj.visible[region] & cover).any():
            continue
        visible = obj.visible.copy()
        visible[region] &= ~cover
        if visible.sum() < min_visible * obj.mask.sum():
            return None
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if rows[-1] - rows[0] + 1 < min_box or cols[-1] - cols[0] + 1 < min_box:
            return None
        updates[k] = visible
    return updates


def _place(
    rng: np.random.Generator,
    objects: list[SynthObject],
    width: int,
    height: int,
    sizes: tuple[float, float],
    min_box: int,
    min_visible: float,
    tries: int = 25,
) -> SynthObject | None:
    """Draw a random object that fits the image and keeps the others visible enough."""
    for _ in range(tries):
        label = int(rng.integers(len(SYNTH_CLASSES)))
        shape = SYNTH_CLASSES[label].shape
        size = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1])))
        if shape in _ROTATING:
            angle = rng.uniform(0, 2 * np.pi)
        else:
            angle = rng.uniform(-0.5, 0.5) if shape == "heart" else 0.0
        mask = shape_mask(shape, size, angle)
        h, w = mask.shape
        if h < min_box or w < min_box or h > height or w > width:
            continue
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        obj = SynthObject(label, top, left, mask, mask.copy())
        updates = _occludes(obj, objects, min_visible, min_box)
        if updates is None:
            continue
        for k, visible in updates.items():
            objects[k].visible = visible
        return obj
    return None


def _paint(img: np.ndarray, obj: SynthObject, rng: np.random.Generator) -> None:
    """Fill the object's full mask with its colour (jittered, softly shaded)."""
    h, w = obj.mask.shape
    color = np.clip(
        np.array(SYNTH_CLASSES[obj.label].color, np.float32) + rng.uniform(-18, 18, 3), 0, 255
    )
    phi = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (x - w / 2) * math.cos(phi) + (y - h / 2) * math.sin(phi)
    shade = 1 + 0.12 * t / max(h, w)  # within about +-6 %
    patch = img[obj.top : obj.top + h, obj.left : obj.left + w]
    patch[obj.mask] = np.clip(color[None, :] * shade[obj.mask][:, None], 0, 255)


def render_image(
    rng: np.random.Generator,
    width: int = 320,
    height: int = 320,
    num_objects: tuple[int, int] = (1, 8),
    size_range: tuple[float, float] | None = None,
    min_box: int = 8,
    min_visible: float = 0.6,
    photo_fraction: float = 0.2,
    photo_dir: Path = PHOTO_DIR,
) -> tuple[np.ndarray, list[SynthObject]]:
    """Draw one image.

    Args:
        rng: the generator; the image is a function of its state and the other arguments.
        num_objects: inclusive range of the number of objects tried (fewer when they do not
            fit).
        size_range: nominal shape diameter range in pixels, sampled log-uniformly;
            default ``(10, 0.45 * min(width, height))``.
        min_box: smallest side of a visible box.
        min_visible: fraction of its area every object keeps visible.
        photo_fraction: probability of a photo background.

    Returns:
        ``uint8 [H, W, 3]`` RGB image and its objects (in drawing order).
    """
    sizes = size_range or (10.0, 0.45 * min(width, height))
    img = _background(rng, width, height, photo_fraction, photo_dir)
    objects: list[SynthObject] = []
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        obj = _place(rng, objects, width, height, sizes, min_box, min_visible)
        if obj is not None:
            objects.append(obj)
    for obj in objects:
        _paint(img, obj, rng)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------- dataset


def _make_one(index: int, *, split: str, folder: Path, seed: int, ext: str, options: dict) -> dict:
    """Render, write image ``index`` (1-based) of a split; its COCO records."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    width, height = options["image_size"]
    rgb, objects = render_image(
        rng,
        width,
        height,
        num_objects=options["num_objects"],
        size_range=options["size_range"],
        photo_fraction=options["photo_fraction"],
        photo_dir=options["photo_dir"],
    )
    name = f"{index:06d}.{ext}"
    image = Image.fromarray(rgb)
    if ext == "png":
        image.save(folder / name, format="PNG", compress_level=6)
    else:
        image.save(folder / name, format="JPEG", quality=options["jpeg_quality"], subsampling=0)
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
    split: str, count: int, out: Path, seed: int, ext: str, options: dict, workers: int, bar
) -> Path:
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    work = partial(_make_one, split=split, folder=folder, seed=seed, ext=ext, options=options)
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
        "image_size": list(options["image_size"]),
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
    width, height = (int(v) for v in image_size)
    if width < 32 or height < 32:
        raise ValueError(f"image_size must be at least 32x32, got {width}x{height}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    lo, hi = num_objects
    if not 1 <= lo <= hi:
        raise ValueError(f"num_objects must be (min, max) with 1 <= min <= max, got {num_objects}")
    if not 0.0 <= photo_fraction <= 1.0:
        raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
    options = {
        "image_size": (width, height),
        "num_objects": (int(lo), int(hi)),
        "size_range": size_range,
        "photo_fraction": float(photo_fraction),
        "photo_dir": Path(photo_dir) if photo_dir is not None else PHOTO_DIR,
        "jpeg_quality": int(jpeg_quality),
    }
    if photo_fraction > 0:
        _photos(options["photo_dir"])  # fail early when there are none
    total = num_train + num_val
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total > 64 else 0
    out = Path(out_dir)
    with tqdm(total=total, desc="synth", unit="img", disable=not progress) as bar:
        paths = {
            f"{split}_annotations": _write_split(
                split, n, out, seed, image_format, options, workers, bar
            )
            for split, n in (("train", num_train), ("val", num_val))
        }
    return {"root": out, "train_images": out / "train", "val_images": out / "val", **paths}
