"""From a decoded RGB image to the network's input tensor (shared by ``Detector`` and the
ONNX export's parity check)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


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
        raise ValueError(f"input size must be one or two multiples of 32 (>= 64), got {size!r}")
    return hw


def to_input_tensor(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB → ``[1, 3, h, w]`` float in [0, 1], resized with PIL's bilinear
    filter (as the reference's inference pipeline: ``T.Resize`` on a PIL image, ``ToTensor``)."""
    h, w = size
    if rgb.shape[:2] != (h, w):
        rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)  # no copy
    return x.float().div_(255.0)
