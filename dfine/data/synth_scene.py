"""One synthetic image: a muted procedural or photo background and shapes placed on it,
partly overlapping, every object keeping ``min_visible`` of its area visible (its box and
area are computed from the visible pixels)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dfine.data.synth_shapes import ROTATING, SYNTH_CLASSES, shape_mask
from dfine.errors import InputFileError
from dfine.resources import asset_path

__all__ = ["PHOTO_DIR", "SynthObject", "background", "paint", "photos", "render_image"]

PHOTO_DIR = asset_path("examples")
"""The bundled example photos (package data): the default photo backgrounds."""


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


# --------------------------------------------------------------------------- backgrounds

_PHOTOS: dict[Path, list[np.ndarray]] = {}


def photos(photo_dir: Path) -> list[np.ndarray]:
    """The example photos as float RGB arrays, decoded once per process."""
    if photo_dir not in _PHOTOS:
        files = sorted(
            p for p in photo_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not files:
            raise InputFileError(
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


def background(
    rng: np.random.Generator, width: int, height: int, photo_fraction: float, photo_dir: Path
) -> np.ndarray:
    """A muted textured background, float ``[H, W, 3]`` in 0..255."""
    if photo_fraction > 0 and rng.random() < photo_fraction:
        img = _photo(rng, photos(photo_dir), width, height)
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
        if shape in ROTATING:
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


def paint(img: np.ndarray, obj: SynthObject, rng: np.random.Generator) -> None:
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
    img = background(rng, width, height, photo_fraction, photo_dir)
    objects: list[SynthObject] = []
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        obj = _place(rng, objects, width, height, sizes, min_box, min_visible)
        if obj is not None:
            objects.append(obj)
    for obj in objects:
        paint(img, obj, rng)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects
