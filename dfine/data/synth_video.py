"""Synthetic video clips with per-frame ground truth, for tests, demos and benchmarks.

Shapes of the synthetic dataset (:mod:`dfine.data.synth`, the demo model's classes) move on
straight lines at constant speed over one procedural background. Object ``k`` keeps its
shape, size, rotation and colour in every frame; paths are laid out in separate horizontal
bands so objects never overlap, and every object stays inside the frame, so its box in
every frame is exactly known.

``write_synth_video("clip.webm")`` writes the clip and ``clip.gt.json``::

    {"video": {"width", "height", "fps", "frame_count", "seed", "blurred_frames"},
     "objects": [{"id": k, "label": l, "name": "red circle", "start": [x, y], "end": [x, y]}],
     "frames": [{"index": i, "time_s": t,
                 "objects": [{"id": k, "label": l, "box": [x1, y1, x2, y2]}]}]}

Boxes are pixel-edge ``xyxy`` of the drawn pixels. The same arguments give the same frames.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfine.data.synth_scene import PHOTO_DIR, SynthObject, background, paint
from dfine.data.synth_shapes import ROTATING, SYNTH_CLASSES, shape_mask
from dfine.errors import InvalidArgumentError
from dfine.files import atomic_write
from dfine.video import VideoWriter

__all__ = ["MovingShape", "render_clip", "write_synth_video"]


@dataclass(frozen=True)
class MovingShape:
    """One object of a clip: class ``label``, its drawn ``mask`` and a straight path of its
    mask's top-left corner from ``start`` (frame 0) to ``end`` (last frame), ``(x, y)``."""

    label: int
    mask: np.ndarray
    start: tuple[float, float]
    end: tuple[float, float]

    def corner(self, t: float) -> tuple[int, int]:
        """Integer ``(left, top)`` at ``t`` in [0, 1] along the path."""
        x = self.start[0] + t * (self.end[0] - self.start[0])
        y = self.start[1] + t * (self.end[1] - self.start[1])
        return round(x), round(y)


def plan_shapes(
    rng: np.random.Generator,
    width: int,
    height: int,
    num_objects: int,
    size_range: tuple[float, float],
) -> list[MovingShape]:
    """``num_objects`` shapes of distinct classes, one per horizontal band, each crossing a
    good part of the frame left-to-right or right-to-left with a little vertical drift."""
    if not 1 <= num_objects <= len(SYNTH_CLASSES):
        raise InvalidArgumentError(
            f"num_objects must be in 1..{len(SYNTH_CLASSES)}, got {num_objects}"
        )
    band = height / num_objects
    labels = rng.permutation(len(SYNTH_CLASSES))[:num_objects]
    shapes = []
    for k, label in enumerate(labels):
        shape = SYNTH_CLASSES[label].shape
        size = float(rng.uniform(*size_range))
        size = min(size, band - 6, width / 3)
        angle = float(rng.uniform(0, 2 * math.pi)) if shape in ROTATING else 0.0
        mask = shape_mask(shape, size, angle)
        h, w = mask.shape
        top_lo, top_hi = k * band + 2, (k + 1) * band - h - 2
        y0, y1 = rng.uniform(top_lo, max(top_hi, top_lo), size=2)
        x_lo, x_hi = 2.0, width - w - 2.0
        travel = rng.uniform(0.5, 0.9) * (x_hi - x_lo)
        x0 = rng.uniform(x_lo, x_hi - travel)
        xs = (x0, x0 + travel) if rng.random() < 0.5 else (x0 + travel, x0)
        shapes.append(MovingShape(int(label), mask, (xs[0], y0), (xs[1], y1)))
    return shapes


def render_clip(
    num_frames: int = 60,
    width: int = 320,
    height: int = 320,
    *,
    num_objects: int = 3,
    size_range: tuple[float, float] = (40.0, 70.0),
    seed: int = 0,
    blur: Sequence[int] = (),
    blur_px: int = 25,
) -> tuple[list[np.ndarray], list[MovingShape], list[list[dict[str, Any]]]]:
    """Draw a clip. The frames listed in ``blur`` get a horizontal motion blur of ``blur_px``
    pixels (as if the camera panned fast): the boxes stay where they are, the edges smear.

    Returns:
        ``(frames, shapes, truth)``: ``num_frames`` uint8 ``[H, W, 3]`` RGB frames, the
        moving shapes, and per frame a list of ``{"id", "label", "box": [x1, y1, x2, y2]}``.
    """
    if num_frames < 1:
        raise InvalidArgumentError(f"num_frames must be positive, got {num_frames}")
    rng = np.random.default_rng([seed, 7])
    shapes = plan_shapes(rng, width, height, num_objects, size_range)
    bg = background(rng, width, height, 0.0, PHOTO_DIR)
    frames, truth = [], []
    for i in range(num_frames):
        t = i / max(num_frames - 1, 1)
        img = bg.copy()
        objects = []
        for k, shape in enumerate(shapes):
            left, top = shape.corner(t)
            obj = SynthObject(shape.label, top, left, shape.mask, shape.mask)
            paint(img, obj, np.random.default_rng([seed, 11, k]))  # same colour every frame
            x, y, w, h = obj.bbox()
            objects.append({"id": k, "label": shape.label, "box": [x, y, x + w, y + h]})
        if i in set(blur):
            img = _motion_blur(img, blur_px)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        truth.append(objects)
    return frames, shapes, truth


def _motion_blur(img: np.ndarray, length: int) -> np.ndarray:
    """Average of ``length`` horizontally neighbouring pixels (edges repeated), float."""
    if length < 2:
        return img
    left = length // 2
    padded = np.pad(img, ((0, 0), (left, length - 1 - left), (0, 0)), mode="edge")
    total = np.concatenate([np.zeros_like(padded[:, :1]), padded.cumsum(axis=1)], axis=1)
    return (total[:, length:] - total[:, :-length]) / length


def write_synth_video(
    path: str | os.PathLike,
    num_frames: int = 60,
    size: tuple[int, int] = (320, 320),
    *,
    fps: float = 25.0,
    num_objects: int = 3,
    seed: int = 0,
    blur: Sequence[int] = (),
) -> tuple[Path, Path]:
    """Write a clip (``.webm`` VP8, ``.avi`` MJPG, ``.mp4`` MPEG-4) and its ground truth
    ``<stem>.gt.json`` next to it (see the module docstring). ``size`` is ``(width, height)``.

    Returns:
        ``(video_path, json_path)``.
    """
    path = Path(path)
    width, height = size
    frames, shapes, truth = render_clip(
        num_frames, width, height, num_objects=num_objects, seed=seed, blur=blur
    )
    with VideoWriter(path, fps, (width, height)) as writer:
        for frame in frames:
            writer.write(frame)
    record = {
        "video": {
            "width": width,
            "height": height,
            "fps": fps,
            "frame_count": num_frames,
            "seed": seed,
            "blurred_frames": sorted(int(i) for i in blur),
        },
        "objects": [
            {
                "id": k,
                "label": s.label,
                "name": SYNTH_CLASSES[s.label].name,
                "start": [round(v, 2) for v in s.start],
                "end": [round(v, 2) for v in s.end],
            }
            for k, s in enumerate(shapes)
        ],
        "frames": [
            {"index": i, "time_s": round(i / fps, 6), "objects": objs}
            for i, objs in enumerate(truth)
        ],
    }
    json_path = path.with_name(f"{path.stem}.gt.json")
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
    return path, json_path
