"""The synthetic dataset's classes and their geometry: each class is one shape in one colour;
:func:`shape_mask` rasterises a shape (no anti-aliasing) for :mod:`dfine.data.synth_scene`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dfine.errors import InvalidArgumentError

__all__ = ["ROTATING", "SYNTH_CLASSES", "SynthClass", "shape_mask"]


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

ROTATING = {"square", "triangle", "star", "cross", "hexagon"}
"""The shapes drawn at a random angle (the heart only tilts a little; circles and rings do not
turn)."""


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
    raise InvalidArgumentError(f"unknown shape {shape!r}")


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
