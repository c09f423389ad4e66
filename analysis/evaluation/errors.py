"""Where the detector goes wrong: confusion matrix with a background row and column, the best
score threshold per class by F1, and an error gallery.

At a score threshold and an IoU, the final layer's detections are matched to the ground
truth in two passes (greedy in score order): first within each class (true positives), then
the remaining detections to the remaining ground truth of *any* class (class confusions).
Detections left over are false positives (background row: predicted, nothing there), ground
truth left over is missed (background column: there, not predicted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.evaluation.collect import ImageResult
from analysis.evaluation.matching import greedy_match

GALLERY_KINDS = ("false positive", "missed", "poor localization", "class confusion")


@dataclass(frozen=True)
class ImageErrors:
    """One image at a threshold: indices into its thresholded final-layer detections
    (``det_*``, arrays ``[D]``) and its ground truth.

    ``tp_gt [D]``: same-class match (or -1); ``confused_gt [D]``: other-class match in the
    second pass (or -1); ``iou [D]`` of either match; ``missed [G]``: unmatched ground truth.
    """

    det_boxes: np.ndarray
    det_labels: np.ndarray
    det_scores: np.ndarray
    tp_gt: np.ndarray
    confused_gt: np.ndarray
    iou: np.ndarray
    missed: np.ndarray


def image_errors(result: ImageResult, threshold: float, iou: float) -> ImageErrors:
    """:class:`ImageErrors` of one image's final-layer detections."""
    det = result.own
    keep = det.scores[-1] >= threshold
    boxes, labels, scores = det.boxes[-1][keep], det.labels[-1][keep], det.scores[-1][keep]
    tp, tp_iou = greedy_match(boxes, scores, labels, result.gt_boxes, result.gt_labels, iou)
    confused = np.full(len(scores), -1, dtype=np.int64)
    free_gt = np.setdiff1d(np.arange(len(result.gt_labels)), tp[tp >= 0])
    rest = np.flatnonzero(tp < 0)
    c_iou = np.zeros(len(scores))
    if len(rest) and len(free_gt):
        m, m_iou = greedy_match(
            boxes[rest], scores[rest], labels[rest], result.gt_boxes[free_gt],
            result.gt_labels[free_gt], iou, same_class=False,
        )  # fmt: skip
        hit = m >= 0
        confused[rest[hit]] = free_gt[m[hit]]
        c_iou[rest[hit]] = m_iou[hit]
    matched = np.concatenate([tp[tp >= 0], confused[confused >= 0]])
    missed = np.ones(len(result.gt_labels), dtype=bool)
    missed[matched] = False
    return ImageErrors(
        boxes, labels, scores, tp, confused, np.where(tp >= 0, tp_iou, c_iou), missed
    )


def confusion_matrix(
    errors: Sequence[ImageErrors], gt_labels: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """``[C+1, C+1]`` int64 counts: rows the true class, columns the predicted class; row C
    (background) holds false positives, column C (background) missed ground truth."""
    c = num_classes
    m = np.zeros((c + 1, c + 1), dtype=np.int64)
    for err, gl in zip(errors, gt_labels):
        tp = err.tp_gt >= 0
        np.add.at(m, (gl[err.tp_gt[tp]], err.det_labels[tp]), 1)
        cf = err.confused_gt >= 0
        np.add.at(m, (gl[err.confused_gt[cf]], err.det_labels[cf]), 1)
        fp = ~tp & ~cf
        np.add.at(m, (np.full(int(fp.sum()), c), err.det_labels[fp]), 1)
        np.add.at(m, (gl[err.missed], np.full(int(err.missed.sum()), c)), 1)
    return m


def best_f1(
    scores: np.ndarray, tps: np.ndarray, labels: np.ndarray, gt_counts: Sequence[int]
) -> list[dict[str, float | None]]:
    """Per class, the score threshold with the highest F1 (detections with a score at or
    above it kept) and its F1, precision and recall. ``scores, tps, labels``: every
    detection's score, true-positive flag and label."""
    out = []
    for label, n_gt in enumerate(gt_counts):
        m = labels == label
        if n_gt == 0 or not m.any():
            out.append({"threshold": None, "f1": None, "precision": None, "recall": None})
            continue
        order = np.argsort(-scores[m], kind="stable")
        s, tp = scores[m][order], tps[m][order].astype(np.float64)
        ctp = np.cumsum(tp)
        precision = ctp / np.arange(1, len(tp) + 1)
        recall = ctp / n_gt
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        # a threshold keeps every detection of equal score: evaluate at the last of a tie
        last_of_tie = np.r_[s[1:] != s[:-1], True]
        f1 = np.where(last_of_tie, f1, -1.0)
        i = int(f1.argmax())
        out.append(
            {
                "threshold": float(s[i]),
                "f1": float(f1[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
            }
        )
    return out


@dataclass(frozen=True)
class GalleryItem:
    """One error: ``kind`` (one of :data:`GALLERY_KINDS`), the image (dataset ``index`` and
    ``image_id``), the detection's box/label/score (None for a missed box), the ground
    truth's box/label (None for a false positive) and their IoU. Boxes xyxy pixels."""

    kind: str
    index: int
    image_id: int
    box: list[float] | None
    label: int | None
    score: float | None
    gt_box: list[float] | None
    gt_label: int | None
    iou: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gallery(
    results: Sequence[ImageResult], errors: Sequence[ImageErrors], per_kind: int = 12
) -> dict[str, list[GalleryItem]]:
    """The worst ``per_kind`` errors of each kind: highest-scoring false positives and class
    confusions, missed ground truth largest first, true positives with the lowest IoU."""
    items: dict[str, list[tuple[float, GalleryItem]]] = {k: [] for k in GALLERY_KINDS}
    for r, e in zip(results, errors):

        def item(kind: str, d: int | None, g: int | None, r=r, e=e) -> GalleryItem:
            return GalleryItem(
                kind=kind,
                index=r.index,
                image_id=r.image_id,
                box=None if d is None else [float(v) for v in e.det_boxes[d]],
                label=None if d is None else int(e.det_labels[d]),
                score=None if d is None else float(e.det_scores[d]),
                gt_box=None if g is None else [float(v) for v in r.gt_boxes[g]],
                gt_label=None if g is None else int(r.gt_labels[g]),
                iou=None if d is None or g is None else float(e.iou[d]),
            )

        for d in np.flatnonzero((e.tp_gt < 0) & (e.confused_gt < 0)):
            items["false positive"].append(
                (-float(e.det_scores[d]), item("false positive", d, None))
            )
        for d in np.flatnonzero(e.confused_gt >= 0):
            g = int(e.confused_gt[d])
            items["class confusion"].append(
                (-float(e.det_scores[d]), item("class confusion", d, g))
            )
        for d in np.flatnonzero(e.tp_gt >= 0):
            g = int(e.tp_gt[d])
            items["poor localization"].append((float(e.iou[d]), item("poor localization", d, g)))
        areas = np.prod(np.clip(r.gt_boxes[:, 2:] - r.gt_boxes[:, :2], 0, None), axis=1)
        for g in np.flatnonzero(e.missed):
            items["missed"].append((-float(areas[g]), item("missed", None, int(g))))
    return {k: [it for _, it in sorted(v, key=lambda t: t[0])[:per_kind]] for k, v in items.items()}
