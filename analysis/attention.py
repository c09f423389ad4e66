"""Where the decoder's deformable attention falls relative to the detected boxes.

D-FINE's layers refine each box *edge*; this module measures, per decoder layer, whether the
layer's sampling points sit on those edges. For a detection with box ``(x1, y1, x2, y2)`` every
sampling point ``(x, y)`` is put in box units, ``u = (x − x1) / w``, ``v = (y − y1) / h`` (the
box is then the unit square, whatever its size and aspect), and its **signed edge distance**
is measured there: inside the box ``−min(u, 1 − u, v, 1 − v)`` (minus the distance to the
nearest edge), outside it the Euclidean distance to the square. A point is

- **near an edge** when ``|distance| ≤ EDGE_BAND`` (±10 % of the box size, on either side),
- **inside** when it is inside the box and not near an edge,
- **outside** when it is outside the box and not near an edge.

A point's mass is its attention weight averaged over the heads (each head's weights sum to 1,
so a detection's mass sums to 1 per layer). :func:`attention_shares` averages the three shares
and the mass histogram over signed distance (:data:`DISTANCE_BINS`, box units; beyond the range
counts in the end bins) over detections, separately for true and false positives.

The box is the one the caller passes (the dataset report uses each detection's final box),
in the coordinates of ``trace.sampling_locations`` (the trace's normalised coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis._common import layer_names
from dfine.nn.decoder import DecoderTrace

EDGE_BAND = 0.1
"""Half-width of the "near an edge" band, in box units (10 % of the box's width or height)."""

DISTANCE_BINS = np.round(np.linspace(-0.5, 1.0, 31), 6)
"""Edges of the signed-distance histogram, box units: −0.5 (the centre) to 1.0 outside."""

_SHARES = ("inside", "near_edge", "outside")


def edge_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Signed distance of ``points [..., 2]`` (x, y) to the boundary of ``boxes [..., 4]``
    (cx, cy, w, h, broadcast against the points' leading dimensions), in box units: negative
    inside, positive outside (see the module docstring)."""
    u = (points[..., 0] - boxes[..., 0]) / boxes[..., 2] + 0.5
    v = (points[..., 1] - boxes[..., 1]) / boxes[..., 3] + 0.5
    du = torch.maximum(-u, u - 1)  # > 0: outside in u by that much
    dv = torch.maximum(-v, v - 1)
    outside = torch.hypot(du.clamp_min(0), dv.clamp_min(0))
    inside = torch.maximum(du, dv).clamp_max(0)  # −(distance to the nearest edge)
    return torch.where((du > 0) | (dv > 0), outside, inside)


def attention_mass(
    trace: DecoderTrace, queries: torch.Tensor, boxes: torch.Tensor, image: int = 0
) -> torch.Tensor:
    """Per layer and detection, the attention mass ``[L, M, 3 + K]`` in float64: inside, near an
    edge, outside, then the K = ``len(DISTANCE_BINS) − 1`` histogram bins of signed distance.

    ``queries [M]`` are the detections' query slots in ``image``, ``boxes [M, 4]`` their boxes
    (cx, cy, w, h, the trace's normalised coordinates). Each row sums to 1 over the first 3.
    """
    if not trace.has_attention:
        raise ValueError("this trace was taken with attention=False: it has no attention")
    q = torch.as_tensor(queries, dtype=torch.long)
    points = trace.sampling_locations[:, image, q].double()  # [L, M, H, P, 2]
    heads = points.shape[-3]
    mass = trace.attention_weights[:, image, q].double().flatten(-2) / heads  # [L, M, H*P]
    dist = edge_distance(points, boxes.double()[None, :, None, None]).flatten(-2)
    near = dist.abs() <= EDGE_BAND
    cats = torch.stack([(dist < 0) & ~near, near, (dist > 0) & ~near], -1).double()
    shares = (cats * mass[..., None]).sum(-2)  # [L, M, 3]
    edges = torch.as_tensor(DISTANCE_BINS, dtype=torch.float64)
    k = len(DISTANCE_BINS) - 1
    bins = (torch.bucketize(dist, edges[1:-1], right=True)).clamp(0, k - 1)
    hist = torch.zeros(*mass.shape[:-1], k, dtype=torch.float64)
    hist.scatter_add_(-1, bins, mass)
    return torch.cat([shares, hist], -1)


@dataclass(frozen=True)
class AttentionGroup:
    """One group of detections (true or false positives), L decoder layers, K bins.

    Attributes:
        count: number of detections.
        inside, near_edge, outside: ``[L]`` mean share of the attention mass (they sum to 1
            per layer; None-free, 0 when ``count`` is 0).
        histogram: ``[L][K]`` mean share of the mass per signed-distance bin.
    """

    count: int
    inside: list[float]
    near_edge: list[float]
    outside: list[float]
    histogram: list[list[float]]


@dataclass(frozen=True)
class AttentionShares:
    """Where each decoder layer's attention fell relative to the detections' boxes.

    Attributes:
        layers: ``[L]`` layer names (``layer 1`` … ``layer L``).
        band: the "near an edge" half-width, box units (:data:`EDGE_BAND`).
        bin_edges: ``[K + 1]`` signed-distance bin edges, box units (negative inside).
        true_positives, false_positives: the two groups (:class:`AttentionGroup`).
    """

    layers: list[str]
    band: float
    bin_edges: list[float]
    true_positives: AttentionGroup
    false_positives: AttentionGroup

    @classmethod
    def from_sums(cls, sums: np.ndarray, layers: Sequence[str]) -> AttentionShares:
        """From ``sums [2, L, 4 + K]`` (true positives, false positives): the masses of
        :func:`attention_mass` summed over detections, with a last column of ones summed
        (the detection count); see :func:`attention_sums`."""
        groups = []
        for g in np.asarray(sums, dtype=np.float64):
            count = int(np.rint(g[0, -1]))
            mean = g[:, :-1] / max(count, 1)
            groups.append(
                AttentionGroup(
                    count=count,
                    **{name: _rounded(mean[:, i]) for i, name in enumerate(_SHARES)},
                    histogram=[_rounded(row) for row in mean[:, 3:]],
                )
            )
        return cls(list(layers), EDGE_BAND, [float(v) for v in DISTANCE_BINS], *groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "band": self.band,
            "bin_edges": self.bin_edges,
            "true_positives": vars(self.true_positives),
            "false_positives": vars(self.false_positives),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttentionShares:
        return cls(
            layers=list(d["layers"]),
            band=float(d["band"]),
            bin_edges=list(d["bin_edges"]),
            true_positives=AttentionGroup(**d["true_positives"]),
            false_positives=AttentionGroup(**d["false_positives"]),
        )


def _rounded(x: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in x]


def attention_sums(
    trace: DecoderTrace,
    queries: torch.Tensor,
    boxes: torch.Tensor,
    is_tp: torch.Tensor,
    image: int = 0,
) -> np.ndarray:
    """``[2, L, 4 + K]`` float64: :func:`attention_mass` summed over the true positives (row 0)
    and the false positives (row 1) among the detections ``queries [M]`` of ``image`` with
    ``boxes [M, 4]`` and ``is_tp [M]`` bool; the last column counts the detections. Sums of
    several images add up; :meth:`AttentionShares.from_sums` turns them into shares."""
    mass = attention_mass(trace, queries, boxes, image)
    mass = torch.cat([mass, torch.ones(*mass.shape[:-1], 1, dtype=mass.dtype)], -1)
    tp = torch.as_tensor(is_tp, dtype=torch.bool)
    return torch.stack([mass[:, tp].sum(1), mass[:, ~tp].sum(1)]).numpy()


def attention_shares(
    trace: DecoderTrace,
    queries: torch.Tensor,
    is_tp: torch.Tensor,
    boxes: torch.Tensor | None = None,
    image: int = 0,
) -> AttentionShares:
    """:class:`AttentionShares` of the detections ``queries [M]`` (query slots) of ``image``,
    split by ``is_tp [M]`` (bool). ``boxes [M, 4]`` (cx, cy, w, h, the trace's normalised
    coordinates) default to the detections' final-layer boxes."""
    q = torch.as_tensor(queries, dtype=torch.long)
    if boxes is None:
        boxes = trace.boxes[-1, image, q]
    sums = attention_sums(trace, q, boxes, is_tp, image)
    return AttentionShares.from_sums(sums, layer_names(trace.num_layers))
