"""Turn raw model outputs into per-image detections (the reference's DFINEPostProcessor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from dfine.coco import remap_labels_to_coco
from dfine.errors import InvalidArgumentError


@dataclass(frozen=True)
class BatchDetections:
    """Top-K detections of a batch, what every inference backend returns (B images, K kept).

    ``boxes [B, K, 4]`` float xyxy in original pixels, ``scores [B, K]`` descending per image,
    ``labels [B, K]`` int64 class indices, and (torch backend only) ``queries [B, K]``: the
    decoder query each detection came from.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    queries: torch.Tensor | None = None

    def cpu(self) -> BatchDetections:
        """The same detections as CPU tensors."""
        return BatchDetections(
            self.boxes.cpu(),
            self.scores.cpu(),
            self.labels.cpu(),
            None if self.queries is None else self.queries.cpu(),
        )

    def __len__(self) -> int:
        """The batch size B."""
        return self.scores.shape[0]


def topk_detections(
    logits: torch.Tensor, boxes: torch.Tensor, orig_sizes: torch.Tensor, num_top: int = 300
) -> BatchDetections:
    """Batched core of :func:`postprocess` (export-friendly: no per-image Python loop):
    ``logits [B, Q, C]``, ``boxes [B, Q, 4]`` (cxcywh normalized), ``orig_sizes [B, 2]`` as
    (w, h) → the top ``min(num_top, Q * C)`` (query, class) pairs of each image."""
    num_classes = logits.shape[-1]
    num_top = min(num_top, logits.shape[1] * num_classes)
    xyxy = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
    xyxy = xyxy * orig_sizes.to(xyxy.device).repeat(1, 2).unsqueeze(1)
    scores, index = torch.topk(F.sigmoid(logits).flatten(1), num_top, dim=-1)
    labels = index % num_classes
    queries = index // num_classes
    picked = xyxy.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
    return BatchDetections(boxes=picked, scores=scores, labels=labels, queries=queries)


def postprocess(
    outputs: dict[str, torch.Tensor],
    orig_sizes: torch.Tensor,
    num_top: int = 300,
    remap_coco_category: bool = False,
    threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Top-``num_top`` (query, class) pairs by sigmoid score, boxes in original pixels.

    Like the reference's postprocessor this keeps all ``num_top`` pairs, however low their
    score (COCO evaluation wants them); pass ``threshold`` to keep only scores at least it.

    Args:
        outputs: ``pred_logits [B, Q, C]`` and ``pred_boxes [B, Q, 4]`` (cx, cy, w, h in [0, 1]).
        orig_sizes: ``[B, 2]`` original image sizes as **(width, height)**, as the reference.
        num_top: detections kept per image (at most Q * C).
        remap_coco_category: return COCO category ids (1..90) instead of 0..79.
        threshold: keep only detections scoring at least this (default: keep all).

    Returns:
        One dict per image: ``labels [K]`` int64, ``boxes [K, 4]`` xyxy pixels,
        ``scores [K]`` descending, and ``queries [K]``, the decoder query of each detection.
    """
    top = topk_detections(outputs["pred_logits"], outputs["pred_boxes"], orig_sizes, num_top)
    labels, boxes, scores, queries = top.labels, top.boxes, top.scores, top.queries
    if remap_coco_category:
        labels = remap_labels_to_coco(labels)
    results = [
        {"labels": lab, "boxes": box, "scores": sco, "queries": q}
        for lab, box, sco, q in zip(labels, boxes, scores, queries)
    ]
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise InvalidArgumentError(f"threshold must be in [0, 1], got {threshold}")
        results = [{k: v[r["scores"] >= threshold] for k, v in r.items()} for r in results]
    return results
