"""Helpers shared by the analysis modules: geometry in original-image pixels, checks, colours.

Conventions (see ``dfine.nn.fdr``): boxes in a ``DecoderTrace`` from ``Detector.trace`` are
normalised ``(cx, cy, w, h)`` of the original image (for the stretch resize that is the network
input itself; with ``letterbox=True`` the trace is mapped out of the padded input by the
detections' own map), so ``x × image width`` and ``y × image height`` are original-image
pixels. Edge order: left, top, right,
bottom. An FDR edge offset ``d`` moves an edge *outward* by ``d × w / reg_scale`` (left/right)
or ``d × h / reg_scale`` (top/bottom) from the reference (pre-head) box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dfine.detections import PALETTE
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace

EDGES: tuple[str, str, str, str] = ("left", "top", "right", "bottom")
# +1 where a larger coordinate means "outward" (right, bottom), -1 where smaller does
OUTWARD_SIGN = np.array([-1.0, -1.0, 1.0, 1.0])

ImageSize = tuple[int, int]


def check_image_size(image_size: Sequence[int]) -> ImageSize:
    """``(width, height)`` as two positive ints."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise InvalidArgumentError(
            f"image_size must be (width, height) of positive ints, got {image_size}"
        )
    return size  # type: ignore[return-value]


def check_single_image(trace: DecoderTrace) -> None:
    if trace.boxes.shape[1] != 1:
        raise InvalidArgumentError(
            f"the trace holds {trace.boxes.shape[1]} images; pass one image's trace "
            "(trace.select(i))"
        )


def check_queries(
    queries: torch.Tensor | np.ndarray | Sequence[int], num_queries: int
) -> np.ndarray:
    """Query indices as ``[N]`` int64, each in ``[0, num_queries)``."""
    q = np.asarray(queries.cpu() if isinstance(queries, torch.Tensor) else queries)
    q = q.reshape(-1)
    if q.size and not np.issubdtype(q.dtype, np.integer):
        raise InvalidArgumentError(f"query indices must be integers, got dtype {q.dtype}")
    q = q.astype(np.int64)
    if q.size and (q.min() < 0 or q.max() >= num_queries):
        raise InvalidArgumentError(
            f"query indices must lie in [0, {num_queries}), got {q.tolist()}"
        )
    return q


def check_layer(layer: int, num_layers: int) -> int:
    """A layer index (negative counts from the end) as a non-negative int."""
    if not -num_layers <= layer < num_layers:
        raise InvalidArgumentError(f"layer must be in [{-num_layers}, {num_layers}), got {layer}")
    return layer % num_layers


def np64(x: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array (detached, on the CPU)."""
    return x.detach().to("cpu", torch.float64).numpy()


def scale_xyxy(image_size: ImageSize) -> np.ndarray:
    """``[4]`` multipliers from normalised to pixel coordinates: (W, H, W, H)."""
    w, h = image_size
    return np.array([w, h, w, h], dtype=np.float64)


def cxcywh_to_xyxy_px(boxes: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Normalised ``(cx, cy, w, h)`` ``[..., 4]`` → ``(x1, y1, x2, y2)`` original pixels."""
    cx, cy, w, h = np.moveaxis(np.asarray(boxes, dtype=np.float64), -1, 0)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    return xyxy * scale_xyxy(image_size)


def xyxy_px_to_cxcywh(boxes: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Original-pixel ``(x1, y1, x2, y2)`` ``[..., 4]`` → normalised ``(cx, cy, w, h)``."""
    x1, y1, x2, y2 = np.moveaxis(np.asarray(boxes, np.float64) / scale_xyxy(image_size), -1, 0)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def edge_unit_px(ref_boxes: np.ndarray, reg_scale: float, image_size: ImageSize) -> np.ndarray:
    """Pixels per unit of W(n) for every edge: ``[..., 4]`` from reference boxes ``[..., 4]``
    (normalised cxcywh): ``(w·W, h·H, w·W, h·H) / reg_scale``."""
    ref = np.asarray(ref_boxes, dtype=np.float64)
    w_px = ref[..., 2] * image_size[0] / abs(reg_scale)
    h_px = ref[..., 3] * image_size[1] / abs(reg_scale)
    return np.stack([w_px, h_px, w_px, h_px], axis=-1)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a [..., 4]`` and ``b [..., 4]`` (xyxy), elementwise; 0 for empty unions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def class_color(label: int) -> tuple[int, int, int]:
    """The colour of a class, as ``Detections.plot`` draws it."""
    return PALETTE[int(label) % len(PALETTE)]


def class_name(class_names: Sequence[str] | None, label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def layer_names(num_layers: int) -> list[str]:
    return [f"layer {i + 1}" for i in range(num_layers)]
