"""Per-edge distributions of a detection, placed on the W(n) offset axis in pixels, and the
uncertainty overlay (every edge drawn as a band of ±σ of its distribution).

Bin ``n`` of an edge stands for an outward edge displacement of ``W(n) × box size /
reg_scale`` from the pre-head (reference) box: × image width for left/right, × image height
for top/bottom, so each query and edge has its own pixel axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from analysis import _draw
from analysis._common import (
    EDGES,
    OUTWARD_SIGN,
    ImageSize,
    check_image_size,
    check_layer,
    check_queries,
    class_color,
    class_name,
    cxcywh_to_xyxy_px,
    edge_unit_px,
    layer_names,
    np64,
)
from dfine.detections import Detections
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace


@dataclass(frozen=True)
class EdgeDistributions:
    """The four edge distributions of one query at every decoder layer (image 0 of the trace).

    L layers, R = reg_max; edges in the order left, top, right, bottom; pixels of the original
    image; offsets are outward-positive displacements from the pre-head box's edge.

    Attributes:
        query: the decoder query index.
        image_size: ``(width, height)`` of the original image, pixels.
        layers: ``[L]`` layer names.
        edges: the edge names.
        project: ``[R+1]`` W(n), in units of box size / reg_scale.
        probs: ``[L, 4, R+1]`` bin probabilities (softmax of the accumulated bin logits).
        offsets_px: ``[4, R+1]`` the edge displacement each bin stands for, pixels.
        expected_px: ``[L, 4]`` expected displacement ``Σ_n p(n) offsets_px(n)``, pixels.
        neighbour_bins: ``[L, 4, 2]`` int64 the two adjacent bins ``(k, k+1)`` whose offsets
            enclose the expectation (clamped to the outermost pair).
        neighbour_offsets_px: ``[L, 4, 2]`` offsets of those two bins, pixels.
        entropy: ``[L, 4]`` entropy of each distribution, nats (uniform: ``log(R+1)``).
        std_px: ``[L, 4]`` standard deviation of the displacement, pixels.
        reference_edges_px: ``[4]`` the pre-head box ``x1, y1, x2, y2``, pixels.
        edge_positions_px: ``[L, 4]`` the expected edge coordinates ``x1, y1, x2, y2``, pixels
            (equal to the layer's box).
    """

    query: int
    image_size: ImageSize
    layers: list[str]
    edges: tuple[str, ...]
    project: np.ndarray
    probs: np.ndarray
    offsets_px: np.ndarray
    expected_px: np.ndarray
    neighbour_bins: np.ndarray
    neighbour_offsets_px: np.ndarray
    entropy: np.ndarray
    std_px: np.ndarray
    reference_edges_px: np.ndarray
    edge_positions_px: np.ndarray

    @property
    def num_layers(self) -> int:
        return self.probs.shape[0]

    @property
    def max_entropy(self) -> float:
        """Entropy of the uniform distribution over the bins, nats."""
        return math.log(self.probs.shape[-1])

    def bin_positions(self, edge: int, axis: str = "px") -> np.ndarray:
        """``[R+1]`` where each bin of ``edge`` sits: its offset in pixels (``axis="px"``)
        or its index n (``axis="bin"``)."""
        if axis == "px":
            return self.offsets_px[edge]
        if axis == "bin":
            return np.arange(self.probs.shape[-1], dtype=np.float64)
        raise InvalidArgumentError(f"axis must be 'px' or 'bin', got {axis!r}")

    def bin_bounds(self, edge: int, axis: str = "px") -> np.ndarray:
        """``[R+2]`` the boundaries of the span each bin stands for (half-way to its
        neighbours; the outer bins as wide as their inner half): bin n covers
        ``bounds[n] .. bounds[n+1]``."""
        return cell_bounds(self.bin_positions(edge, axis))

    def mass_window(self, edge: int, mass: float = 0.999) -> tuple[int, int]:
        """``(lo, hi)``: the narrowest run of bins ``lo..hi`` (inclusive) that holds at least
        ``mass`` of the probability of ``edge`` at every layer (equal tails cut off)."""
        if not 0.0 < mass <= 1.0:
            raise InvalidArgumentError(f"mass must be in (0, 1], got {mass}")
        tail = (1.0 - mass) / 2
        cdf = np.cumsum(self.probs[:, edge], axis=-1)  # [L, R+1]
        last = cdf.shape[-1] - 1
        lo = min(int(np.argmax(c > tail)) if tail > 0 else 0 for c in cdf)
        hi = max(int(np.argmax(c >= 1.0 - tail)) if tail > 0 else last for c in cdf)
        return lo, min(hi, last)

    def x_window(
        self, edge: int, axis: str = "px", x_range: str = "mass", mass: float = 0.999
    ) -> tuple[float, float]:
        """The x range a figure of ``edge`` shows: ``x_range="full"``, every bin's span;
        ``"mass"``, the bins of :meth:`mass_window` (and, in pixels, every layer's
        expectation ± σ) plus a 15 % margin, within the full range."""
        bounds = self.bin_bounds(edge, axis)
        if x_range == "full":
            return float(bounds[0]), float(bounds[-1])
        if x_range != "mass":
            raise InvalidArgumentError(f"x_range must be 'mass' or 'full', got {x_range!r}")
        lo, hi = self.mass_window(edge, mass)
        left, right = float(bounds[lo]), float(bounds[hi + 1])
        if axis == "px":
            ex, sd = self.expected_px[:, edge], self.std_px[:, edge]
            left, right = min(left, float((ex - sd).min())), max(right, float((ex + sd).max()))
        margin = max(0.15 * (right - left), 1e-3)
        return max(left - margin, float(bounds[0])), min(right + margin, float(bounds[-1]))

    def expected_bin(self, layer: int, edge: int) -> float:
        """The expectation as a fractional bin index (linear between the two bins whose
        offsets enclose it)."""
        k0, k1 = (int(v) for v in self.neighbour_bins[layer, edge])
        o0, o1 = (float(v) for v in self.neighbour_offsets_px[layer, edge])
        t = 0.0 if o1 == o0 else (float(self.expected_px[layer, edge]) - o0) / (o1 - o0)
        return k0 + t * (k1 - k0)


def cell_bounds(x: np.ndarray) -> np.ndarray:
    """``[N+1]`` boundaries of the cells around sorted positions ``x [N]``: midpoints between
    neighbours, the outer cells mirrored (a single position gets a cell of width 1)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return np.array([x[0] - 0.5, x[0] + 0.5]) if x.size else np.zeros(1)
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def edge_stats(
    trace: DecoderTrace, queries: np.ndarray, image_size: ImageSize
) -> dict[str, np.ndarray]:
    """Vectorised statistics of image 0's ``queries`` (N of them), float64:
    ``probs [L, N, 4, R+1]``, ``offsets_px [N, 4, R+1]``, ``expected_px``, ``entropy``,
    ``std_px``, ``positions_px [L, N, 4]``, ``reference_px [N, 4]``. A model trained with
    ``--ablate fdr`` has no distributions: :class:`~dfine.nn.decoder.NoDistributionsError`."""
    trace.require_distributions("edge distributions")
    corners = trace.corners[:, 0, queries].detach().double()
    probs = np64(corners.softmax(-1))
    project = np64(trace.project)
    pre = np64(trace.pre_boxes[0, queries])
    offsets = edge_unit_px(pre, trace.reg_scale, image_size)[..., None] * project
    expected = (probs * offsets[None]).sum(-1)
    var = (probs * (offsets[None] - expected[..., None]) ** 2).sum(-1)
    plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    reference = cxcywh_to_xyxy_px(pre, image_size)
    return {
        "probs": probs,
        "offsets_px": offsets,
        "expected_px": expected,
        "entropy": -plogp.sum(-1),
        "std_px": np.sqrt(np.clip(var, 0.0, None)),
        "positions_px": reference[None] + OUTWARD_SIGN * expected,
        "reference_px": reference,
    }


def edge_distributions(
    trace: DecoderTrace, query: int, image_size: Sequence[int]
) -> EdgeDistributions:
    """The four edges' distributions of decoder query ``query`` (image 0) at every layer."""
    size = check_image_size(image_size)
    (q,) = check_queries([int(query)], trace.boxes.shape[2])
    st = edge_stats(trace, np.array([q]), size)
    probs, offsets, expected = st["probs"][:, 0], st["offsets_px"][0], st["expected_px"][:, 0]
    bins = _neighbour_bins(offsets, expected)
    neighbour_offsets = np.take_along_axis(np.broadcast_to(offsets, probs.shape), bins, axis=-1)
    return EdgeDistributions(
        query=int(q),
        image_size=size,
        layers=layer_names(trace.num_layers),
        edges=EDGES,
        project=np64(trace.project),
        probs=probs,
        offsets_px=offsets,
        expected_px=expected,
        neighbour_bins=bins,
        neighbour_offsets_px=neighbour_offsets,
        entropy=st["entropy"][:, 0],
        std_px=st["std_px"][:, 0],
        reference_edges_px=st["reference_px"][0],
        edge_positions_px=st["positions_px"][:, 0],
    )


def _neighbour_bins(offsets: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``[L, 4, 2]`` indices ``(k, k+1)`` with ``offsets[k] <= expected < offsets[k+1]``."""
    num_bins = offsets.shape[-1]
    out = np.empty((*expected.shape, 2), dtype=np.int64)
    for e in range(offsets.shape[0]):
        k = np.searchsorted(offsets[e], expected[:, e], side="right") - 1
        k = np.clip(k, 0, num_bins - 2)
        out[:, e, 0], out[:, e, 1] = k, k + 1
    return out


# ----------------------------------------------------------------------------- overlay
def uncertainty_overlay(
    image_rgb: Image.Image | np.ndarray,
    detections: Detections,
    trace: DecoderTrace,
    queries: torch.Tensor | np.ndarray | Sequence[int],
    *,
    layer: int = -1,
    scale: float = 1.0,
) -> Image.Image:
    """The image with each detection's four edges drawn as bands of ``±scale·σ`` around the
    layer's expected edge position (σ: that edge distribution's standard deviation, pixels),
    clipped to the image, coloured by class; bands narrower than a pixel show as a 1-pixel
    line. ``queries [N]`` are the detections' decoder queries (as ``Detector.trace`` returns);
    ``layer`` indexes the decoder layers (default the last). Returns an RGB PIL image of the
    detections' image size; pixels away from the boxes, tags and legend are unchanged."""
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidArgumentError(f"scale must be a positive number, got {scale}")
    size = detections.image_size
    q = check_queries(queries, trace.boxes.shape[2])
    if len(q) != len(detections):
        raise InvalidArgumentError(f"{len(q)} queries for {len(detections)} detections")
    lay = check_layer(layer, trace.num_layers)
    base = _draw.to_rgb_image(image_rgb, size)
    st = edge_stats(trace, q, size)
    lw, fs = _draw.sizes_for(base)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    fnt = _draw.font(max(fs - 2, 10))
    sig = _draw.sigma(fnt)
    pos = st["positions_px"][lay]  # [N, 4] expected edges
    boxes = [
        (min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])) for p in pos.tolist()
    ]
    for i in range(len(q)):
        rgb = class_color(int(detections.labels[i]))
        _edge_bands(draw, pos[i], st["std_px"][lay, i] * scale, rgb, size, max(lw // 2, 1))
    placed: list[tuple[float, float, float, float]] = []
    for i, box in enumerate(boxes):  # labels after every band, clear of each other
        name = class_name(detections.class_names, int(detections.labels[i]))
        mean = f"mean {sig} {st['std_px'][lay, i].mean():.1f} px"
        rgb = class_color(int(detections.labels[i]))
        _draw.label(draw, box, rgb, lw, [f"{name}  {mean}", mean], fnt, placed, boxes)
    out = _draw.composite(base, overlay)
    sigma = f"±1{sig}" if scale == 1.0 else f"±{scale:g}{sig}"
    lines = [
        f"band = {sigma} of the edge distribution",
        f"line = expected edge · {layer_names(trace.num_layers)[lay]} of {trace.num_layers}",
    ]
    _draw.legend(out, lines, _draw.font(max(fs - 2, 10)))
    return out


def _edge_bands(
    draw: ImageDraw.ImageDraw,
    pos: np.ndarray,
    std: np.ndarray,
    rgb: tuple[int, int, int],
    size: ImageSize,
    line_width: int,
) -> None:
    """Four translucent bands (±std around each edge) with crisp borders and the centre line."""
    x1, y1, x2, y2 = (float(v) for v in pos)
    xa, xb, ya, yb = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    sl, st, sr, sb = (float(v) for v in std)
    bands = [
        ((x1 - sl, ya, x1 + sl, yb), ((x1, ya), (x1, yb))),  # left: vertical band
        ((xa, y1 - st, xb, y1 + st), ((xa, y1), (xb, y1))),  # top: horizontal band
        ((x2 - sr, ya, x2 + sr, yb), ((x2, ya), (x2, yb))),
        ((xa, y2 - sb, xb, y2 + sb), ((xa, y2), (xb, y2))),
    ]
    for rect, centre in bands:
        clipped = _clip(rect, size)
        if clipped is not None:
            draw.rectangle(clipped, fill=(*rgb, 95), outline=(*rgb, 215), width=1)
        line = _clip((*centre[0], *centre[1]), size)
        if line is not None:
            draw.line(
                ((line[0], line[1]), (line[2], line[3])),
                fill=(0, 0, 0, 170),
                width=line_width + 2,
            )
            draw.line(((line[0], line[1]), (line[2], line[3])), fill=(*rgb, 255), width=line_width)


def _clip(rect: tuple[float, float, float, float], size: ImageSize) -> tuple[float, ...] | None:
    """``rect`` clipped to the image (pixel centres 0..W-1, 0..H-1); ``None`` when outside."""
    w, h = size
    x1, y1 = max(rect[0], 0.0), max(rect[1], 0.0)
    x2, y2 = min(rect[2], w - 1.0), min(rect[3], h - 1.0)
    if x2 < x1 or y2 < y1:
        return None
    return x1, y1, x2, y2
