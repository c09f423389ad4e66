"""Greedy one-to-one matching of detections to ground truth, as COCO does it: detections in
descending score order each take the unmatched ground-truth box they overlap most (IoU at
least a threshold, optionally of the same class).

Only detections that overlap some eligible ground-truth box enough can match, so the
sequential part of the greedy loop runs over those few candidates, not over every detection.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a [N, 4]`` with every box of ``b [M, 4]`` (xyxy) → ``[N, M]``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    iou_threshold: float = 0.5,
    same_class: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Match ``D`` detections to ``G`` ground-truth boxes.

    Args:
        det_boxes: ``[D, 4]`` xyxy; det_scores, det_labels: ``[D]``.
        gt_boxes: ``[G, 4]`` xyxy; gt_labels: ``[G]``.
        iou_threshold: the least IoU of a match.
        same_class: only boxes of the same label match (False: class-agnostic, as a
            confusion matrix needs).

    Returns:
        ``gt_of_det [D]`` int64, the matched ground-truth index or -1, and ``iou_of_det [D]``,
        the IoU with that box (0 when unmatched).
    """
    d, g = len(det_scores), len(gt_labels)
    gt_of_det = np.full(d, -1, dtype=np.int64)
    iou_of_det = np.zeros(d, dtype=np.float64)
    if d == 0 or g == 0:
        return gt_of_det, iou_of_det
    iou = iou_matrix(det_boxes, gt_boxes)
    if same_class:
        iou = np.where(np.asarray(det_labels)[:, None] == np.asarray(gt_labels)[None], iou, 0.0)
    eligible = iou >= iou_threshold
    candidates = np.flatnonzero(eligible.any(1))
    candidates = candidates[np.argsort(-np.asarray(det_scores)[candidates], kind="stable")]
    free = np.ones(g, dtype=bool)
    for i in candidates:
        row = np.where(eligible[i] & free, iou[i], -1.0)
        j = int(row.argmax())
        if row[j] < 0:
            continue
        free[j] = False
        gt_of_det[i] = j
        iou_of_det[i] = iou[i, j]
    return gt_of_det, iou_of_det
