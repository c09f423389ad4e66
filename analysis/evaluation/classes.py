"""Per-class numbers from COCO's accumulated evaluation: AP, AP50, AP75, APs/m/l, counts, and
precision-recall curves at IoU 0.5 and 0.75 (COCO's 101 recall points, 100 detections)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfine.errors import InvalidArgumentError

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ClassResult:
    """One class: COCO APs (None where the class has no ground truth in that area range),
    ground-truth boxes, detections at or above the report's threshold, and the score
    threshold that maximises F1 at IoU 0.5 with its F1, precision and recall."""

    label: int
    category_id: int
    name: str
    AP: float | None
    AP50: float | None
    AP75: float | None
    APs: float | None
    APm: float | None
    APl: float | None
    gt_count: int
    det_count: int
    best_threshold: float | None = None
    best_f1: float | None = None
    best_precision: float | None = None
    best_recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mean_valid(p: np.ndarray) -> float | None:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def per_class_ap(ev: Any) -> dict[int, dict[str, float | None]]:
    """Category id → AP, AP50, AP75, APs, APm, APl from ``ev.eval["precision"]``
    ``[T, R, K, A, M]`` (last max-detections setting, as COCO's summary)."""
    precision = np.asarray(ev.eval["precision"])
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, :, -1]  # [T, R, A]
        out[int(cat)] = {
            "AP": _mean_valid(p[:, :, 0]),
            "AP50": _mean_valid(p[0, :, 0]),
            "AP75": _mean_valid(p[5, :, 0]),
            "APs": _mean_valid(p[:, :, 1]),
            "APm": _mean_valid(p[:, :, 2]),
            "APl": _mean_valid(p[:, :, 3]),
        }
    return out


def pr_curves(ev: Any, iou: float) -> dict[int, np.ndarray]:
    """Category id → ``[101]`` interpolated precision at COCO's recall points at IoU
    ``iou`` (one of .50, .55, ..., .95); NaN where the recall is not reached."""
    thresholds = np.asarray(ev.params.iouThrs)
    t = int(np.argmin(np.abs(thresholds - iou)))
    if abs(thresholds[t] - iou) > 1e-6:
        raise InvalidArgumentError(
            f"iou must be one of COCO's thresholds {thresholds.tolist()}, got {iou}"
        )
    precision = np.asarray(ev.eval["precision"])[t, :, :, 0, -1]  # [R, K]
    return {
        int(cat): np.where(precision[:, k] > -1, precision[:, k], np.nan)
        for k, cat in enumerate(ev.params.catIds)
    }


def class_table(
    ev: Any,
    class_names: Sequence[str],
    label_to_category: Mapping[int, int],
    gt_counts: Sequence[int],
    det_counts: Sequence[int],
    best_f1: Sequence[dict[str, float | None]] | None = None,
) -> list[ClassResult]:
    """One :class:`ClassResult` per model label."""
    aps = per_class_ap(ev)
    rows = []
    for label, name in enumerate(class_names):
        cat = int(label_to_category.get(label, label))
        ap = aps.get(cat, dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl")))
        f1 = best_f1[label] if best_f1 is not None else {}
        rows.append(
            ClassResult(
                label=label,
                category_id=cat,
                name=str(name),
                **ap,
                gt_count=int(gt_counts[label]),
                det_count=int(det_counts[label]),
                best_threshold=f1.get("threshold"),
                best_f1=f1.get("f1"),
                best_precision=f1.get("precision"),
                best_recall=f1.get("recall"),
            )
        )
    return rows
