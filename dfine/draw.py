"""Box and label drawing on PIL images, shared by ``Detections.plot`` and the analysis
overlays: one font, one size rule, one text-colour rule, one label placement."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ImageColor, ImageDraw, ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
Color = str | tuple[int, int, int]
Rect = tuple[float, float, float, float]

LINE_FACTOR = 0.003  # line width / half perimeter of the image
FONT_FACTOR = 0.035  # font size / half perimeter of the image


def sizes_for(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) in pixels that scale with a ``width`` x ``height`` image."""
    half_perimeter = (width + height) / 2
    return max(round(half_perimeter * LINE_FACTOR), 2), max(round(half_perimeter * FONT_FACTOR), 12)


def _font_files() -> list[str]:
    """DejaVu Sans (has Greek letters) from the system, or the copy matplotlib bundles."""
    files = ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        files.append(
            str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
        )
    return files


@functools.lru_cache(maxsize=32)
def font(size: int) -> Font:
    """A font of ``size`` pixels: DejaVu Sans when found (it can write "σ"), else Pillow's
    default font (a fixed-size bitmap font when Pillow lacks FreeType)."""
    for path in _font_files():
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def rgb(color: Color) -> tuple[int, int, int]:
    """An ``(r, g, b)`` tuple from a PIL colour name / hex string or a 3+ sequence."""
    if isinstance(color, str):
        return ImageColor.getrgb(color)[:3]
    r, g, b = (int(v) for v in color[:3])
    return r, g, b


def text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light fills, white on dark ones (ITU-R 601 luminance)."""
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def clip_box(box: Rect | list[float], size: tuple[int, int]) -> Rect | None:
    """``box`` (x1, y1, x2, y2) clipped to a ``(width, height)`` image; None when outside."""
    width, height = size
    x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
    x2, y2 = min(box[2], width - 1.0), min(box[3], height - 1.0)
    return None if x2 < x1 or y2 < y1 else (x1, y1, x2, y2)


def overlap(a: Rect, b: Rect) -> bool:
    """Whether rectangles ``a`` and ``b`` (x1, y1, x2, y2) intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def outline(
    draw: ImageDraw.ImageDraw, box: Rect | list[float], color: tuple[int, ...], width: int
) -> None:
    """The outline of ``box``, clipped to the image."""
    clipped = clip_box(box, draw.im.size)
    if clipped is not None:
        draw.rectangle(clipped, outline=color, width=width)


def label(
    draw: ImageDraw.ImageDraw,
    box: Rect | list[float],
    color: tuple[int, int, int],
    line_width: int,
    texts: list[str],
    fnt: Font,
    placed: list[Rect],
    boxes: Sequence[Rect | list[float]] = (),
) -> Rect | None:
    """Put a filled tag with one of ``texts`` (the longest first, then shorter ones) where it
    overlaps no tag already ``placed``: above the box, inside at its top, below it or inside
    at its bottom. Of these spots the one that hides least of the objects drawn (``boxes``,
    this one included: the summed share of each box it covers) wins; a shorter text is used
    when it hides nothing while the longer one would. Returns the tag's rectangle (also
    appended to ``placed``), or None when every spot is taken (the box keeps its outline
    only)."""
    size = draw.im.size
    clipped = clip_box(box, size)
    if clipped is None:
        return None
    x1, y1, _, y2 = clipped
    width, height = size
    pad = max(line_width // 2, 1)
    objects = np.asarray([*boxes, box], dtype=np.float64).reshape(-1, 4)
    best = None  # (hidden share, text, rectangle, text offset)
    for text in texts:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(x1, max(width - tw, 0.0))
        spots = [(tx, ty, tx + tw, ty + th) for ty in (y1 - th, y1, y2, y2 - th)]
        spots = [
            r
            for r in spots
            if r[1] >= 0 and r[3] <= height and not any(overlap(r, p) for p in placed)
        ]
        if not spots:
            continue
        hidden = _hidden(np.asarray(spots), objects)
        k = int(np.argmin(hidden))
        if best is None or hidden[k] < best[0] - 1e-9:
            best = (float(hidden[k]), text, spots[k], (pad - left, pad - top))
        if best[0] < HIDDEN_OK:
            break
    if best is None:
        return None
    _, text, rect, (dx, dy) = best
    placed.append(rect)
    draw.rectangle(rect, fill=color)
    draw.text((rect[0] + dx, rect[1] + dy), text, fill=text_color(color), font=fnt)
    return rect


HIDDEN_OK = 0.05
"""A tag that hides less than this share of the objects is good enough (no shorter text)."""


def _hidden(spots: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """``[S]``: for each tag rectangle of ``spots [S, 4]``, the summed share of each box of
    ``objects [N, 4]`` (x1, y1, x2, y2) that it covers."""
    lo = np.maximum(spots[:, None, :2], objects[None, :, :2])
    hi = np.minimum(spots[:, None, 2:], objects[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = np.clip(objects[:, 2:] - objects[:, :2], 1.0, None).prod(-1)
    return (inter / area).sum(-1)


def tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    fnt: Font,
    alpha: int = 230,
) -> None:
    """A filled label with ``text`` whose bottom-left is at ``xy`` (moved inside the image),
    for an RGBA drawing layer (``alpha`` is the fill's opacity)."""
    width, height = draw.im.size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    pad = 3
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(xy[0], 0), max(width - tw, 0))
    y = xy[1] - th if xy[1] - th >= 0 else xy[1]
    y = min(y, max(height - th, 0))
    draw.rectangle((x, y, x + tw, y + th), fill=(*color, alpha))
    draw.text((x + pad - left, y + pad - top), text, fill=(*text_color(color), 255), font=fnt)


__all__ = [
    "Font",
    "clip_box",
    "font",
    "label",
    "outline",
    "overlap",
    "rgb",
    "sizes_for",
    "tag",
    "text_color",
]
