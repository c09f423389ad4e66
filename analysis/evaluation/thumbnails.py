"""Thumbnails of error-gallery items: the image cropped around the error, the ground-truth
box in white (dashed look: drawn twice) and the detection in its class colour, labelled."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image, ImageDraw

from analysis import _draw
from analysis._common import class_color, class_name
from analysis.evaluation.errors import GalleryItem


def caption(item: GalleryItem, class_names: Sequence[str] | None) -> str:
    """One line: what went wrong, with the score and IoU where they apply."""
    parts = [item.kind]
    if item.label is not None:
        parts.append(f"pred {class_name(class_names, item.label)} {item.score:.2f}")
    if item.gt_label is not None:
        parts.append(f"true {class_name(class_names, item.gt_label)}")
    if item.iou is not None:
        parts.append(f"IoU {item.iou:.2f}")
    return " · ".join(parts)


def thumbnail(
    item: GalleryItem,
    image: str | os.PathLike | Image.Image,
    class_names: Sequence[str] | None = None,
    size: int = 192,
    context: float = 0.6,
) -> Image.Image:
    """A ``size`` x ``size`` (at most) RGB thumbnail of ``item`` on ``image`` (its file or
    PIL image): the union of its boxes grown by ``context`` × its size on every side."""
    pil = image if isinstance(image, Image.Image) else Image.open(image)
    pil = pil.convert("RGB")
    boxes = [b for b in (item.box, item.gt_box) if b is not None]
    x1 = min(b[0] for b in boxes)
    y1 = min(b[1] for b in boxes)
    x2 = max(b[2] for b in boxes)
    y2 = max(b[3] for b in boxes)
    pad = context * max(x2 - x1, y2 - y1, 8.0)
    crop = (
        max(0, int(x1 - pad)), max(0, int(y1 - pad)),
        min(pil.width, int(x2 + pad) + 1), min(pil.height, int(y2 + pad) + 1),
    )  # fmt: skip
    out = pil.crop(crop)
    scale = size / max(out.width, out.height)
    out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))))
    draw = ImageDraw.Draw(out)

    def place(b: list[float]) -> list[float]:
        return [(b[0] - crop[0]) * scale, (b[1] - crop[1]) * scale,
                (b[2] - crop[0]) * scale, (b[3] - crop[1]) * scale]  # fmt: skip

    if item.gt_box is not None:
        draw.rectangle(place(item.gt_box), outline=(0, 0, 0), width=4)
        draw.rectangle(place(item.gt_box), outline=(255, 255, 255), width=2)
    if item.box is not None and item.label is not None:
        draw.rectangle(place(item.box), outline=class_color(item.label), width=2)
    text = class_name(class_names, item.label if item.label is not None else item.gt_label or 0)
    draw.text((3, 2), text, fill=(255, 255, 255), font=_draw.font(12), stroke_width=2,
              stroke_fill=(0, 0, 0))  # fmt: skip
    return out
