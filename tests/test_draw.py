"""dfine.draw: the one box/label drawing module of Detections.plot and the analysis overlays."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from analysis import _draw
from dfine import draw
from dfine.detections import Detections


def test_sizes_text_color_and_rgb():
    assert draw.sizes_for(640, 480) == (2, 20)  # 560 px half perimeter: 0.003 / 0.035
    assert draw.sizes_for(64, 48) == (2, 12)  # the minimums
    assert _draw.sizes_for(Image.new("RGB", (640, 480))) == draw.sizes_for(640, 480)
    assert draw.text_color((255, 255, 0)) == (0, 0, 0)
    assert draw.text_color((0, 0, 128)) == (255, 255, 255)
    assert draw.rgb("#ff8000") == (255, 128, 0) and draw.rgb([1, 2, 3, 4]) == (1, 2, 3)
    assert draw.clip_box([-5, -5, 500, 20], (100, 50)) == (0.0, 0.0, 99.0, 20)
    assert draw.clip_box([200, 0, 300, 10], (100, 50)) is None


def test_label_spots_never_overlap_and_run_out():
    canvas = Image.new("RGB", (200, 100))
    d = ImageDraw.Draw(canvas)
    fnt, placed = draw.font(12), []
    box = [20.0, 40.0, 120.0, 70.0]  # the same box four times: above, inside top, below, ...
    rects = [draw.label(d, box, (255, 0, 0), 2, ["long label", "l"], fnt, placed) for _ in range(5)]
    assert all(r is not None for r in rects[:4])
    tops = [r[1] for r in rects[:4]]
    assert tops[0] < box[1] <= tops[1] and tops[2] == box[3]
    assert not any(draw.overlap(a, b) for i, a in enumerate(rects[:4]) for b in rects[i + 1 : 4])
    assert rects[4] is None and len(placed) == 4  # no free spot: the outline only
    red = np.all(np.asarray(canvas) == (255, 0, 0), axis=-1)
    assert red[int(rects[0][1]) + 1, int(rects[0][0]) + 1]  # the tag is filled


def test_plot_and_overlays_share_the_font():
    det = Detections(
        boxes=[[10, 30, 90, 80]], scores=[0.9], labels=[0], class_names=("cat",),
        image_size=(160, 120), image=np.zeros((120, 160, 3), np.uint8),
    )  # fmt: skip
    out = np.asarray(det.plot())
    assert np.any(out[30:80, 10] != 0)  # the outline
    assert _draw.font is draw.font and _draw.tag is draw.tag
