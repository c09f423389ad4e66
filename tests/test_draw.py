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
    box = [20.0, 40.0, 120.0, 70.0]  # the same box four times: outside first (above, below)
    rects = [draw.label(d, box, (255, 0, 0), 2, ["long label", "l"], fnt, placed) for _ in range(5)]
    assert all(r is not None for r in rects[:4])
    tops = [r[1] for r in rects[:4]]
    assert tops[0] < box[1] and tops[1] == box[3]  # above, then below: neither hides the box
    assert box[1] <= tops[2] < tops[3] < box[3]  # then inside, at its top and its bottom
    assert not any(draw.overlap(a, b) for i, a in enumerate(rects[:4]) for b in rects[i + 1 : 4])
    assert rects[4] is None and len(placed) == 4  # no free spot: the outline only
    red = np.all(np.asarray(canvas) == (255, 0, 0), axis=-1)
    assert red[int(rects[0][1]) + 1, int(rects[0][0]) + 1]  # the tag is filled


def test_a_label_hides_no_other_object_when_it_can():
    """Above its box the tag would cover a small neighbour: it goes below instead; where the
    long text would hide an object wherever it goes, the shorter one is used."""
    canvas = Image.new("RGB", (200, 120))
    d = ImageDraw.Draw(canvas)
    fnt = draw.font(12)
    box, neighbour = [20.0, 50.0, 60.0, 80.0], [30.0, 30.0, 50.0, 46.0]
    rect = draw.label(d, box, (255, 0, 0), 2, ["cat 0.90"], fnt, [], [neighbour, box])
    assert rect[1] == box[3] and not draw.overlap(rect, neighbour)
    # small boxes to the right at every spot's height: the long text hides one wherever it
    # goes, the short one fits above, clear of them
    crowd = [[90.0, y, 100.0, y + 10.0] for y in (37.0, 53.0, 67.0, 83.0)]
    texts = ["a long label 0.90", "cat"]
    rect = draw.label(d, box, (255, 0, 0), 2, texts, fnt, [], [*crowd, box])
    assert rect[2] - rect[0] < d.textlength(texts[0], font=fnt)  # the short text
    assert not any(draw.overlap(rect, c) for c in crowd)


def test_plot_and_overlays_share_the_font():
    det = Detections(
        boxes=[[10, 30, 90, 80]], scores=[0.9], labels=[0], class_names=("cat",),
        image_size=(160, 120), image=np.zeros((120, 160, 3), np.uint8),
    )  # fmt: skip
    out = np.asarray(det.plot())
    assert np.any(out[30:80, 10] != 0)  # the outline
    assert _draw.font is draw.font and _draw.tag is draw.tag
