"""Colours, labels and axis titles shared by the analysis figures, so every figure names the
same things the same way."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from analysis._common import EDGES
from dfine.errors import InvalidArgumentError

EDGE_COLORS = {"left": "#1f77b4", "top": "#2ca02c", "right": "#d62728", "bottom": "#9467bd"}
TEACHER_COLOR = "#222222"
# qualitative colours for detections (by position in the selection, not by class)
DETECTION_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
)  # fmt: skip
# viridis samples, dark (early layers) to bright (late layers)
_VIRIDIS = ("#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725")

IOU_AXIS = "IoU with the final box (0–1)"
MOVE_AXIS = "edge movement (px, + = outward)"
PROB_AXIS = "probability (unitless)"
BAR_NOTE = (
    "pixels of the original image; each bar spans the offsets its bin stands for "
    "(W(n)·box size/reg_scale), grey outline: the previous layer; ◆ expected offset, ±1σ"
)
W_AXIS = "W(n)/reg_scale (× box width or height)"
SPACING_AXIS = "ΔW/reg_scale (× box width or height)"
BIN_AXIS = "bin index n (unitless)"


def edge_axis(edge: str, pixel_space: str = "original image") -> str:
    unit = "px" if pixel_space == "original image" else f"px of the {pixel_space}"
    return f"{edge} edge offset<br>({unit}, + = outward)"


def kl_axis(temperature: float) -> str:
    return f"KL(teacher ‖ student) (nats, softened at T = {temperature:g})"


def softened_axis(temperature: float) -> str:
    return f"probability, softened at T = {temperature:g} (unitless)"


def loss_axis() -> str:
    return "DDF loss (before loss_ddf weight)"


def layer_colors(num_layers: int) -> list[str]:
    """``num_layers`` colours from dark to bright."""
    if num_layers <= 1:
        return [_VIRIDIS[-2]]
    return [_VIRIDIS[round(i * (len(_VIRIDIS) - 1) / (num_layers - 1))] for i in range(num_layers)]


def detection_color(i: int) -> str:
    return DETECTION_COLORS[i % len(DETECTION_COLORS)]


def edge_index(edge: int | str) -> int:
    """An edge given by name or index 0..3 as its index."""
    if isinstance(edge, str):
        if edge not in EDGES:
            raise InvalidArgumentError(f"unknown edge {edge!r}; edges: {EDGES}")
        return EDGES.index(edge)
    if not 0 <= int(edge) < 4:
        raise InvalidArgumentError(f"edge index must be in 0..3, got {edge}")
    return int(edge)


def transition_labels(stages: list[str]) -> list[str]:
    return [f"{a} → {b}" for a, b in pairwise(stages)]


def bar_widths(x) -> list[float]:
    """Equal bar widths for bars at sorted positions ``x``: 80% of the smallest gap, so bars
    never overlap and no bin looks heavier because it is wider."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return [1.0] * x.size
    gap = float(np.diff(x).min())
    return [0.8 * gap if gap > 0 else 1e-6] * x.size


def detection_label(i: int, query: int, name: str) -> str:
    return f"#{i} {name} (query {query})"
