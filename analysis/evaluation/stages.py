"""Every stage of the decoder scored as a detector of its own.

Stage ``s``'s detections (top-k per image, as ``dfine val``) are scored by COCO's evaluator
twice: (a) with the stage's own class scores, (b) with the final layer's class scores on the
stage's boxes, which isolates localization. The mean IoU follows the final layer's matches
(the same objects at every stage) back through the decoder. The last stage under (a) is
exactly ``dfine val``'s detector, so its AP is ``dfine val``'s AP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.evaluation.collect import ImageResult, StageDetections
from analysis.evaluation.matching import iou_matrix
from dfine.errors import InvalidArgumentError
from dfine.train.evaluate import METRIC_NAMES, coco_eval


@dataclass(frozen=True)
class StageResult:
    """COCO AP of one stage under its own scores (``AP``, ``AP50``, ``AP75``) and under the
    final layer's scores (``AP_final_scores`` ...), and the mean IoU with the ground truth of
    the final layer's matched queries at this stage (``mean_iou``)."""

    name: str
    AP: float
    AP50: float
    AP75: float
    AP_final_scores: float | None
    AP50_final_scores: float | None
    AP75_final_scores: float | None
    mean_iou: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def coco_array(
    results: Sequence[ImageResult],
    stage: int,
    label_to_category: Mapping[int, int] | None,
    final_scores: bool = False,
) -> np.ndarray:
    """Stage ``stage``'s detections of every image as COCO rows ``[N, 7]``: image_id, x, y,
    w, h (rounded to 3 decimals, as ``dfine val`` writes them), score, category_id."""
    rows = []
    for r in results:
        det: StageDetections | None = r.final if final_scores else r.own
        if det is None:
            raise InvalidArgumentError("final-layer scores were not collected (per_layer=False)")
        boxes = det.boxes[stage]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        labels = det.labels[stage]
        cats = (
            np.array([label_to_category[int(v)] for v in labels], dtype=np.float64)
            if label_to_category
            else labels.astype(np.float64)
        )
        rows.append(
            np.column_stack(
                [
                    np.full(len(labels), r.image_id, dtype=np.float64),
                    np.round(xywh.astype(np.float64), 3),
                    det.scores[stage].astype(np.float64),
                    cats,
                ]
            )
        )
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def stage_coco(
    ground_truth: Any,
    results: Sequence[ImageResult],
    stage: int,
    label_to_category: Mapping[int, int] | None,
    final_scores: bool = False,
    coco_lib: str = "auto",
) -> Any:
    """The accumulated ``COCOeval`` of one stage (see ``dfine.train.evaluate.coco_eval``)."""
    rows = coco_array(results, stage, label_to_category, final_scores)
    ids = [r.image_id for r in results]
    return coco_eval(ground_truth, rows, image_ids=ids, coco_lib=coco_lib)


def metrics_of(ev: Any) -> dict[str, float]:
    """The 12 COCO numbers of an accumulated ``COCOeval``."""
    return {n: float(v) for n, v in zip(METRIC_NAMES, list(ev.stats)[: len(METRIC_NAMES)])}


def mean_ious(results: Sequence[ImageResult]) -> list[float | None]:
    """Per stage, the mean IoU with their ground truth of the final layer's matches (None
    when nothing matched)."""
    per_stage: list[list[np.ndarray]] = []
    for r in results:
        if len(r.match_gt) == 0:
            continue
        gt = r.gt_boxes[r.match_gt]
        ious = [np.diag(iou_matrix(b, gt)) for b in r.match_boxes]
        per_stage.append(ious)
    if not per_stage:
        return [None] * (results[0].match_boxes.shape[0] if results else 0)
    return [float(np.concatenate(col).mean()) for col in zip(*per_stage)]


def stage_results(
    ground_truth: Any,
    results: Sequence[ImageResult],
    names: Sequence[str],
    label_to_category: Mapping[int, int] | None,
    coco_lib: str = "auto",
    last_eval: Any = None,
) -> list[StageResult]:
    """:class:`StageResult` of every stage named in ``names`` (``collect.stage_names``).

    ``last_eval``: the already computed ``COCOeval`` of the last stage under its own scores
    (reused: under the final layer's scores the last stage is the same detector)."""
    ious = mean_ious(results)
    out = []
    with_final = results[0].final is not None if results else False
    for s, name in enumerate(names):
        last = s == len(names) - 1
        own = last_eval if (last and last_eval is not None) else None
        own = own or stage_coco(ground_truth, results, s, label_to_category, False, coco_lib)
        a = metrics_of(own)
        if with_final:
            b = (
                a
                if last
                else metrics_of(
                    stage_coco(ground_truth, results, s, label_to_category, True, coco_lib)
                )
            )
        else:
            b = None
        out.append(
            StageResult(
                name=name,
                AP=a["AP"],
                AP50=a["AP50"],
                AP75=a["AP75"],
                AP_final_scores=b["AP"] if b else None,
                AP50_final_scores=b["AP50"] if b else None,
                AP75_final_scores=b["AP75"] if b else None,
                mean_iou=ious[s] if s < len(ious) else None,
            )
        )
    return out
