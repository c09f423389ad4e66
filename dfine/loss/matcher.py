"""Hungarian matching of predictions to ground truth (scipy's linear_sum_assignment)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from dfine.box_ops import box_cxcywh_to_xyxy
from dfine.errors import InvalidArgumentError

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``w_class * focal_cost + w_bbox * L1 + w_giou * -GIoU``.

    ``forward(outputs, targets)`` takes ``pred_logits [B, Q, C]``, ``pred_boxes [B, Q, 4]``
    (cxcywh) and per-image targets ``{"labels": [n_i], "boxes": [n_i, 4]}``; returns per image
    ``(query_index [k], target_index [k])`` with ``k = min(Q, n_i)``.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise InvalidArgumentError("all matching costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> torch.Tensor:
        """``[B, Q, sum(n_i)]`` matching cost of every query against every target of the batch."""
        bs, nq = outputs["pred_logits"].shape[:2]
        prob = F.sigmoid(outputs["pred_logits"].flatten(0, 1))
        boxes = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        prob = prob[:, tgt_ids]
        neg = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
        pos = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        cost_class = pos - neg
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
        return cost.view(bs, nq, -1)

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        sizes = [len(t["boxes"]) for t in targets]
        cost = torch.nan_to_num(self.cost_matrix(outputs, targets).cpu(), nan=1.0)
        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i])
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
