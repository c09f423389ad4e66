"""Ground truth of the bundled synthetic examples (a COCO json next to the images), found by
the image's content, so an upload of the same file is recognised whatever its name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from analysis import _draw
from app.paths import SYNTH_ANNOTATIONS
from app.results import file_digest
from dfine.draw import font


@dataclass(frozen=True)
class GroundTruth:
    """Annotated boxes of one image: ``boxes_xyxy [n, 4]`` pixels, ``labels [n]`` contiguous
    class indices (category order of the json), ``names`` of those classes."""

    file_name: str
    image_size: tuple[int, int]
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def targets(self) -> list[dict[str, Any]]:
        """A batch of one in the criterion's format: cxcywh boxes normalised to the image."""
        w, h = self.image_size
        x1, y1, x2, y2 = (self.boxes_xyxy / np.array([w, h, w, h], dtype=np.float64)).T
        boxes = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)
        return [
            {
                "labels": torch.as_tensor(self.labels, dtype=torch.int64),
                "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "pseudo": False,
            }
        ]


def draw_truth(image: Image.Image, truth: GroundTruth) -> Image.Image:
    """``image`` with ``truth``'s boxes as dashed white outlines (on a black under-stroke, so
    they show on any colour) and a legend naming them."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    lw, font_size = _draw.sizes_for(canvas)
    for box in truth.boxes_xyxy:
        rect = tuple(float(v) for v in box)
        _draw.dashed_rectangle(draw, rect, (0, 0, 0), lw + 2, 4 * lw + 4)
        _draw.dashed_rectangle(draw, rect, (255, 255, 255), lw, 4 * lw + 4)
    n = len(truth.boxes_xyxy)
    legend = f"dashed white: ground truth ({n} object{'s' if n != 1 else ''})"
    _draw.legend(canvas, [legend], font(font_size))
    return canvas


class AnnotatedExamples:
    """Every image listed in a COCO json (that exists next to it), by sha256 of its file."""

    def __init__(self, annotations: str | Path = SYNTH_ANNOTATIONS) -> None:
        self.path = Path(annotations)
        self._by_digest: dict[str, GroundTruth] = {}
        if self.path.is_file():
            self._read(json.loads(self.path.read_text(encoding="utf-8")))

    def __len__(self) -> int:
        return len(self._by_digest)

    def _read(self, coco: dict[str, Any]) -> None:
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        names = tuple(c["name"] for c in categories)
        for image in coco["images"]:
            file = self.path.parent / image["file_name"]
            if not file.is_file():
                continue
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            self._by_digest[file_digest(file)] = GroundTruth(
                file_name=image["file_name"],
                image_size=(int(image["width"]), int(image["height"])),
                boxes_xyxy=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                labels=np.array([index[a["category_id"]] for a in anns], dtype=np.int64),
                names=names,
            )

    def find(self, digest: str) -> GroundTruth | None:
        """The ground truth of the image with this sha256, if it is one of the examples."""
        return self._by_digest.get(digest)

    def add(self, digest: str, truth: GroundTruth) -> None:
        """Know the ground truth of one more image (e.g. one opened from an evaluation)."""
        self._by_digest[digest] = truth
