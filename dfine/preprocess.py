"""From a decoded RGB image to the network's input tensor (shared by ``Detector`` and the
ONNX export's parity check)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dfine.errors import InvalidArgumentError


def parse_size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``None`` → default; ``640`` → (640, 640); ``(h, w)`` → (h, w). Must be multiples of 32."""
    if size is None:
        return tuple(default)
    hw = (
        (int(size), int(size))
        if isinstance(size, (int, np.integer))
        else tuple(int(s) for s in size)
    )
    if len(hw) != 2 or any(s < 64 or s % 32 for s in hw):
        raise InvalidArgumentError(
            f"input size must be one or two multiples of 32 (>= 64), got {size!r}"
        )
    return hw


def to_input_tensor(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB → ``[1, 3, h, w]`` float in [0, 1], resized with PIL's bilinear
    filter (as the reference's inference pipeline: ``T.Resize`` on a PIL image, ``ToTensor``)."""
    h, w = size
    if rgb.shape[:2] != (h, w):
        rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)  # no copy
    return x.float().div_(255.0)


LETTERBOX_FILL = 114
"""Grey of the padding (the value YOLO-style letterboxing uses)."""


@dataclass(frozen=True)
class Letterbox:
    """How an image was letterboxed into the network input: scaled by ``scale_x, scale_y``
    (equal up to the rounding of the resized size) and shifted by ``pad_x, pad_y`` pixels."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[..., 4]`` xyxy boxes in input pixels → original-image pixels (exact inverse of
        the letterbox)."""
        shift = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        return (boxes - shift) / scale

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[..., 4]`` xyxy boxes in original-image pixels → input pixels (the letterbox)."""
        shift = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        return boxes * scale + shift

    def to_original_normalized(
        self, boxes: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``[..., 4]`` ``(cx, cy, w, h)`` normalised to the network input ``(h, w)`` →
        the same normalised to the original image ``(width, height)``: :meth:`to_original`
        applied in pixels (the one mapping, as ``Detector`` uses it for its boxes)."""
        h, w = input_size
        width, height = image_size
        cx, cy, bw, bh = boxes.unbind(-1)
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
        x1, y1, x2, y2 = (self.to_original(xyxy * boxes.new_tensor([w, h, w, h]))).unbind(-1)
        x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)

    def points_to_original_normalized(
        self, points: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> torch.Tensor:
        """``[..., 2]`` ``(x, y)`` normalised to the network input ``(h, w)`` (deformable
        attention's sampling points) → the same normalised to the original image ``(width,
        height)``, by the map of :meth:`to_original_normalized` (points as zero-size boxes)."""
        h, w = input_size
        width, height = image_size
        xyxy = torch.cat([points, points], dim=-1)  # (x, y, x, y)
        x, y, _, _ = self.to_original(xyxy * points.new_tensor([w, h, w, h])).unbind(-1)
        return torch.stack([x / width, y / height], dim=-1)


def letterbox_tensor(rgb: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, Letterbox]:
    """``[H, W, 3]`` uint8 RGB → ``[1, 3, h, w]`` float in [0, 1]: resized (PIL bilinear)
    keeping its aspect ratio to fit ``size``, centred, the rest grey; and the mapping back."""
    h, w = size
    height, width = rgb.shape[:2]
    scale = min(w / width, h / height)
    nw, nh = max(round(width * scale), 1), max(round(height * scale), 1)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.full((h, w, 3), LETTERBOX_FILL, dtype=np.uint8)
    pad_x, pad_y = (w - nw) // 2, (h - nh) // 2
    canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
    x = torch.from_numpy(canvas).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return x, Letterbox(nw / width, nh / height, pad_x, pad_y)
