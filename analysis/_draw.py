"""Small PIL drawing helpers for the image overlays (translucent layers, legends, dashes);
fonts, sizes and tags are ``dfine.draw``'s, the same as ``Detections.plot``."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dfine import draw as drawing
from dfine.draw import Font, font, label, tag
from dfine.errors import InvalidArgumentError

__all__ = [
    "Font",
    "composite",
    "dashed_rectangle",
    "font",
    "label",
    "legend",
    "sigma",
    "sizes_for",
    "tag",
    "to_rgb_image",
]


def to_rgb_image(image: Image.Image | np.ndarray, expected_size: tuple[int, int]) -> Image.Image:
    """An RGB PIL copy of ``image`` (PIL or ``[H, W, 3]`` uint8 RGB array) of ``expected_size``
    ``(width, height)``."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise InvalidArgumentError(
                f"image must be uint8 RGB [H, W, 3], got {array.dtype} {list(array.shape)}"
            )
        pil = Image.fromarray(array)
    if pil.size != tuple(expected_size):
        raise InvalidArgumentError(
            f"the image is {pil.size[0]}x{pil.size[1]} but the detections are for a "
            f"{expected_size[0]}x{expected_size[1]} image"
        )
    return pil.copy()


def sigma(fnt: Font) -> str:
    """ "σ" when ``fnt`` is DejaVu (it has the glyph), else "sigma"."""
    name = getattr(fnt, "path", None)
    return "σ" if isinstance(name, str) and name.endswith("DejaVuSans.ttf") else "sigma"


def sizes_for(image: Image.Image) -> tuple[int, int]:
    """(line width, font size) in pixels scaled with the image, as ``Detections.plot``."""
    return drawing.sizes_for(*image.size)


def legend(image: Image.Image, lines: list[str], fnt: Font) -> None:
    """A dark translucent box with white ``lines`` in the bottom-left corner (in place)."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = [draw.textbbox((0, 0), line, font=fnt) for line in lines]
    line_h = max(b[3] - b[1] for b in boxes) + 4
    width = max(b[2] - b[0] for b in boxes) + 12
    height = line_h * len(lines) + 8
    x0, y0 = 6, max(image.height - height - 6, 0)
    draw.rounded_rectangle((x0, y0, x0 + width, y0 + height), radius=5, fill=(20, 20, 20, 190))
    for i, (line, box) in enumerate(zip(lines, boxes)):
        draw.text((x0 + 6 - box[0], y0 + 4 + i * line_h - box[1]), line, fill="white", font=fnt)
    image.paste(Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB"))


def dashed_rectangle(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    fill: tuple[int, ...],
    width: int,
    dash: int,
) -> None:
    """Outline ``box`` (x1, y1, x2, y2) with dashes of length ``dash`` pixels."""
    x1, y1, x2, y2 = box
    for a, b in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
        steps = max(int(length // dash), 1)
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min((i + 1) / steps, 1.0)
            p0 = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
            p1 = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
            draw.line((p0, p1), fill=fill, width=width)


def composite(base: Image.Image, layer: Image.Image) -> Image.Image:
    """``layer`` (RGBA) over ``base`` (RGB) → RGB."""
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
