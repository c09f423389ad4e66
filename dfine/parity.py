"""Query-order-aware comparison of two sets of detector outputs.

The decoder's queries come from a top-k over encoder scores. When scores are packed tightly
(random weights, or near-ties in trained ones), rounding differences of 1e-7 reorder queries
or swap the query at rank Q with the one at rank Q+1. Comparing query i with query i then
reports large differences although each query's values agree. This module compares index by
index, and then after pairing queries — by their encoder position when both sides know it,
otherwise by a linear assignment on box and logit distance (scipy's Hungarian solver).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from dfine.postprocess import BatchDetections


@dataclass
class ParityReport:
    """Differences between outputs A and B (``[B, Q, C]`` logits, ``[B, Q, 4]`` boxes).

    ``index_*``: query i against query i. ``paired_*``: after pairing; queries left without a
    partner (top-k boundary swaps) are listed per image in ``unpaired_a`` and excluded.
    """

    same_order: bool
    index_max_logit_diff: float
    index_max_box_diff: float
    paired_max_logit_diff: float
    paired_max_box_diff: float
    pairing: str
    unpaired_a: list[list[int]] = field(default_factory=list)

    @property
    def swaps(self) -> list[int]:
        return [len(u) for u in self.unpaired_a]

    def ok(self, logit_tol: float = 1e-3, box_tol: float = 1e-4, max_swaps: int = 3) -> bool:
        return (
            self.paired_max_logit_diff <= logit_tol
            and self.paired_max_box_diff <= box_tol
            and all(s <= max_swaps for s in self.swaps)
        )

    def summary(self) -> str:
        what = "scores" if "detections" in self.pairing else "logits"
        order = "same order" if self.same_order else f"paired by {self.pairing}"
        return (
            f"{order}; index-aligned max |Δ| {what} {self.index_max_logit_diff:.2e}, boxes "
            f"{self.index_max_box_diff:.2e}; paired max |Δ| {what} {self.paired_max_logit_diff:.2e}, "
            f"boxes {self.paired_max_box_diff:.2e}; unpaired per image {self.swaps}"
        )


def _pair_by_index(
    a_idx: np.ndarray, b_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    pos_b = {int(p): j for j, p in enumerate(b_idx)}
    ia, ib, lonely = [], [], []
    for i, p in enumerate(a_idx):
        j = pos_b.get(int(p))
        if j is None:
            lonely.append(i)
        else:
            ia.append(i)
            ib.append(j)
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64), lonely


def _pair_by_assignment(
    a_logits: torch.Tensor,
    a_boxes: torch.Tensor,
    b_logits: torch.Tensor,
    b_boxes: torch.Tensor,
    gate: float,
    extra_cost: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    cost = (
        torch.cdist(a_boxes.double(), b_boxes.double(), p=1)
        + torch.cdist(a_logits.double(), b_logits.double(), p=1) / a_logits.shape[-1]
    )
    if extra_cost is not None:
        cost = cost + extra_cost.double()
    # maximise the number of pairs within the gate first, then minimise their distance
    rows, cols = linear_sum_assignment(((cost > gate).double() + cost * 1e-3).numpy())
    good = cost.numpy()[rows, cols] <= gate
    lonely = sorted(set(range(a_boxes.shape[0])) - set(rows[good].tolist()))
    return rows[good], cols[good], lonely


def compare_outputs(
    a_logits: torch.Tensor,
    a_boxes: torch.Tensor,
    b_logits: torch.Tensor,
    b_boxes: torch.Tensor,
    a_index: torch.Tensor | None = None,
    b_index: torch.Tensor | None = None,
    gate: float = 1e-3,
) -> ParityReport:
    """Compare outputs A and B (batched). ``*_index [B, Q]``: encoder positions of the queries;
    without them, queries are paired by assignment and pairs costing more than ``gate``
    (box L1 + mean logit L1) count as unpaired."""
    a_logits, b_logits = a_logits.detach().float().cpu(), b_logits.detach().float().cpu()
    a_boxes, b_boxes = a_boxes.detach().float().cpu(), b_boxes.detach().float().cpu()
    index_logit = (a_logits - b_logits).abs().max().item()
    index_box = (a_boxes - b_boxes).abs().max().item()
    if a_index is not None and b_index is not None:
        same = bool(torch.equal(a_index.cpu(), b_index.cpu()))
        pairing = "encoder index"
    else:
        same = index_logit == 0.0 and index_box == 0.0
        pairing = "assignment"
    max_logit = max_box = 0.0
    unpaired: list[list[int]] = []
    for n in range(a_logits.shape[0]):
        if a_index is not None and b_index is not None:
            ia, ib, lonely = _pair_by_index(a_index[n].cpu().numpy(), b_index[n].cpu().numpy())
        else:
            ia, ib, lonely = _pair_by_assignment(
                a_logits[n], a_boxes[n], b_logits[n], b_boxes[n], gate
            )
        unpaired.append(lonely)
        if len(ia):
            max_logit = max(max_logit, (a_logits[n, ia] - b_logits[n, ib]).abs().max().item())
            max_box = max(max_box, (a_boxes[n, ia] - b_boxes[n, ib]).abs().max().item())
    return ParityReport(same, index_logit, index_box, max_logit, max_box, pairing, unpaired)


def compare_detections(
    a: BatchDetections,
    b: BatchDetections,
    image_sizes: torch.Tensor,
    gate: float = 1e-3,
) -> ParityReport:
    """Compare postprocessed detections (``labels [B, K]``, ``boxes [B, K, 4]`` xyxy pixels,
    ``scores [B, K]``), paired by assignment on normalized box distance plus score difference,
    never across labels (a detection whose only partner has another label is unpaired). In the
    report "logits" stands for scores, and boxes are normalized by the image size
    (``image_sizes [B, 2]`` as (w, h))."""
    scale = image_sizes.float().repeat(1, 2).unsqueeze(1)
    a_boxes, b_boxes = a.boxes.float() / scale, b.boxes.float() / scale
    a_scores, b_scores = a.scores.float()[..., None], b.scores.float()[..., None]
    a_labels, b_labels = a.labels, b.labels
    index_score = (a_scores - b_scores).abs().max().item()
    index_box = (a_boxes - b_boxes).abs().max().item()
    same = bool(torch.equal(a_labels, b_labels)) and index_score == 0.0 and index_box == 0.0
    max_score = max_box = 0.0
    unpaired = []
    for n in range(a_labels.shape[0]):
        label_cost = (a_labels[n][:, None] != b_labels[n][None, :]).double() * 10.0
        rows, cols, lonely = _pair_by_assignment(
            a_scores[n], a_boxes[n], b_scores[n], b_boxes[n], gate, label_cost
        )
        unpaired.append(lonely)
        if len(rows):
            max_score = max(max_score, (a_scores[n, rows] - b_scores[n, cols]).abs().max().item())
            max_box = max(max_box, (a_boxes[n, rows] - b_boxes[n, cols]).abs().max().item())
    return ParityReport(
        same, index_score, index_box, max_score, max_box, "assignment (detections)", unpaired
    )
