"""A dataset report from one traced forward per image, cached by (weights, dataset, settings).

:func:`evaluate_dataset` runs the pass (``collect.run_pass``) and computes every view
(:func:`build_report`); :class:`DatasetReport` holds the numbers and is what ``dfine val
--report`` writes as ``metrics.json`` and what the app's Evaluate tab shows. The cache key is
the sha256 of the weights file, of the annotation file and every image file, and of the
settings; a cached report is plain JSON (never pickled).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.attention import AttentionShares
from analysis.evaluation.calibration import (
    EdgeCalibration,
    ScoreCalibration,
    layer_calibration,
    score_calibration,
    true_positives,
)
from analysis.evaluation.classes import RECALL_POINTS, ClassResult, class_table, pr_curves
from analysis.evaluation.collect import EvalSettings, ImageResult, run_pass, stage_names
from analysis.evaluation.errors import (
    GalleryItem,
    best_f1,
    confusion_matrix,
    gallery,
    image_errors,
)
from analysis.evaluation.stages import StageResult, metrics_of, stage_coco, stage_results
from dfine.checkpoint import load_model
from dfine.errors import InvalidArgumentError
from dfine.files import atomic_write, file_sha256
from dfine.train.data import resolve_split
from dfine.train.evaluate import METRIC_NAMES
from dfine.train.run import val_dataset
from dfine.zoo import cache_dir

REPORT_VERSION = 2  # 2: the attention section


@dataclass(frozen=True)
class DatasetReport:
    """Everything a dataset report shows (see the package docstring).

    Attributes:
        metrics: the 12 COCO numbers of the final layer (``dfine val``'s).
        stages: per-stage AP (own / final-layer scores) and mean IoU ([] without per-layer).
        calibration: per decoder layer ([] without calibration).
        score_calibration: score bins → precision at IoU .5 / .75.
        per_class: per-class AP table with counts and best-F1 thresholds.
        pr_curves: ``{"0.5": {class name: [101] precision (None: recall not reached)},
            "0.75": ...}`` at COCO's recall points.
        confusion: ``matrix`` ([C+1, C+1], rows true class, columns predicted, last =
            background), ``labels``, ``threshold``, ``iou``.
        gallery: error kind → :class:`GalleryItem` list.
        info: images, files (dataset order), class names, settings, cache key, seconds.
        attention: per decoder layer, the share of the attention mass inside the detections'
            boxes, near an edge, outside, and its histogram over the distance to the nearest
            edge, true vs false positives (:class:`analysis.attention.AttentionShares`);
            None for a model traced without attention.
    """

    metrics: dict[str, float]
    stages: list[StageResult]
    calibration: list[EdgeCalibration]
    score_calibration: ScoreCalibration
    per_class: list[ClassResult]
    pr_curves: dict[str, dict[str, list[float | None]]]
    confusion: dict[str, Any]
    gallery: dict[str, list[GalleryItem]]
    info: dict[str, Any] = field(default_factory=dict)
    attention: AttentionShares | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``metrics.json``: ``AP``, ``AP50``, ``AP75`` (and the other COCO
        numbers) at the top level, then ``stages``, ``calibration``, ``score_calibration``,
        ``per_class``, ``pr_curves``, ``confusion``, ``gallery``, ``info``, ``attention``."""
        return {
            "version": REPORT_VERSION,
            **self.metrics,
            "stages": [s.to_dict() for s in self.stages],
            "calibration": [c.to_dict() for c in self.calibration],
            "score_calibration": self.score_calibration.to_dict(),
            "per_class": [c.to_dict() for c in self.per_class],
            "pr_curves": self.pr_curves,
            "confusion": self.confusion,
            "gallery": {k: [g.to_dict() for g in v] for k, v in self.gallery.items()},
            "info": self.info,
            "attention": None if self.attention is None else self.attention.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetReport:
        if d.get("version") != REPORT_VERSION:
            raise InvalidArgumentError(f"report version {d.get('version')} is not {REPORT_VERSION}")
        return cls(
            metrics={k: float(d[k]) for k in METRIC_NAMES},
            stages=[StageResult(**s) for s in d["stages"]],
            calibration=[EdgeCalibration(**c) for c in d["calibration"]],
            score_calibration=ScoreCalibration(**d["score_calibration"]),
            per_class=[ClassResult(**c) for c in d["per_class"]],
            pr_curves=d["pr_curves"],
            confusion=d["confusion"],
            gallery={k: [GalleryItem(**g) for g in v] for k, v in d["gallery"].items()},
            info=d["info"],
            attention=None if d["attention"] is None else AttentionShares.from_dict(d["attention"]),
        )


def _nan_to_none(x: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in x]


def build_report(
    results: Sequence[ImageResult],
    ground_truth: Any,
    class_names: Sequence[str],
    label_to_category: dict[int, int],
    num_layers: int,
    settings: EvalSettings,
) -> DatasetReport:
    """Every view of the report from one pass's ``results``."""
    if not results:
        raise InvalidArgumentError("the dataset has no images: nothing to evaluate")
    all_names = list(results[0].stages) or stage_names(num_layers)
    names = all_names if settings.per_layer else all_names[-1:]
    last = len(names) - 1
    ev = stage_coco(ground_truth, results, last, label_to_category, False, settings.coco_lib)
    metrics = metrics_of(ev)
    stages = (
        stage_results(ground_truth, results, names, label_to_category, settings.coco_lib, ev)
        if settings.per_layer
        else []
    )
    layers = all_names[-num_layers:]
    with_sigma = results[0].match_sigma is not None
    calibration = layer_calibration(results, layers) if settings.calibration and with_sigma else []
    scores, tp50, labels = true_positives(results, 0.5)
    _, tp75, _ = true_positives(results, 0.75)
    num_classes = len(class_names)
    gt_counts = np.bincount(
        np.concatenate([r.gt_labels for r in results]).astype(np.int64), minlength=num_classes
    )[:num_classes]
    errs = [image_errors(r, settings.threshold, settings.match_iou) for r in results]
    det_counts = np.bincount(
        np.concatenate([e.det_labels for e in errs]).astype(np.int64), minlength=num_classes
    )[:num_classes]
    table = class_table(
        ev, class_names, label_to_category, gt_counts, det_counts,
        best_f1(scores, tp50, labels, gt_counts),
    )  # fmt: skip
    by_cat = {int(label_to_category.get(i, i)): str(n) for i, n in enumerate(class_names)}
    curves = {
        str(iou): {by_cat.get(c, str(c)): _nan_to_none(p) for c, p in pr_curves(ev, iou).items()}
        for iou in (0.5, 0.75)
    }
    matrix = confusion_matrix(errs, [r.gt_labels for r in results], num_classes)
    with_attention = [r.attention for r in results if r.attention is not None]
    attention = (
        AttentionShares.from_sums(np.sum(with_attention, axis=0), layers)
        if with_attention
        else None
    )
    return DatasetReport(
        metrics=metrics,
        stages=stages,
        calibration=calibration,
        score_calibration=score_calibration(scores, tp50, tp75),
        per_class=table,
        pr_curves=curves,
        confusion={
            "matrix": matrix.tolist(),
            "labels": [*map(str, class_names), "background"],
            "threshold": settings.threshold,
            "iou": settings.match_iou,
        },
        gallery=gallery(results, errs),
        info={
            "images": len(results),
            "class_names": list(map(str, class_names)),
            "recall_points": [float(v) for v in RECALL_POINTS],
            "settings": asdict(settings),
            "notes": []
            if not settings.calibration or with_sigma
            else ["no edge distributions (a model trained without FDR): no calibration"],
        },
        attention=attention,
    )


# ------------------------------------------------------------------------------ caching
def dataset_hash(annotations: str | os.PathLike, image_paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the annotation file's bytes and every image file's bytes, in order."""
    h = hashlib.sha256(Path(annotations).read_bytes())
    for p in image_paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def cache_key(weights_hash: str, data_hash: str, size: int, settings: EvalSettings) -> str:
    """The report's cache key: (weights hash, dataset hash, input size, settings)."""
    payload = json.dumps(
        {"v": REPORT_VERSION, "w": weights_hash, "d": data_hash, "size": size, **asdict(settings)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """``$DFINE_HOME/evaluate`` (``dfine.zoo.cache_dir``)."""
    return cache_dir() / "evaluate"


def evaluate_dataset(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    settings: EvalSettings | None = None,
    device: str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
    cache: str | os.PathLike | bool | None = True,
    workers: int = 0,
) -> DatasetReport:
    """The :class:`DatasetReport` of checkpoint ``weights`` (PyTorch: a ``.pth`` or
    ``.safetensors`` file, or a zoo name) on the val split of ``data`` (a folder in the COCO
    layout or a COCO json, as ``dfine val``).

    ``cache``: True for :func:`default_cache_dir`, a folder, or False/None for none. A report
    found under its key is returned without running the model (``info["cached"]``).
    """
    settings = settings or EvalSettings()
    t0 = time.perf_counter()
    if str(weights).lower().endswith(".onnx"):
        raise InvalidArgumentError(
            "per-stage AP and calibration need the PyTorch model (a .pth or .safetensors "
            "checkpoint); an exported .onnx graph has no decoder trace"
        )
    model = load_model(weights, device=device)
    split = resolve_split(data, "val", images)
    size = settings.size or model.config.eval_size[0]
    dataset = val_dataset(model, split, size)
    if len(dataset) == 0:
        raise InvalidArgumentError(
            f"{split.annotations}: the dataset has no images: nothing to evaluate"
        )
    files = [str(dataset.image_path(i)) for i in range(len(dataset))]
    cache_path = None
    key = None
    if cache:
        folder = default_cache_dir() if cache is True else Path(cache)  # type: ignore[arg-type]
        w = Path(weights)
        w_hash = file_sha256(w) if w.is_file() else str(weights)
        key = cache_key(w_hash, dataset_hash(split.annotations, files), size, settings)
        cache_path = folder / f"{key}.json"
        if cache_path.is_file():
            try:
                report = DatasetReport.from_dict(json.loads(cache_path.read_text()))
            except (ValueError, KeyError, TypeError):
                report = None  # an older or damaged cache entry: compute it again
            if report is not None:
                # this request's dataset (the same content, maybe at another place)
                report.info.update(cached=True, files=files, annotations=str(split.annotations))
                return report
    results = run_pass(model, dataset, settings, on_batch, device=device, workers=workers)
    report = build_report(
        results,
        dataset,
        dataset.class_names,
        dataset.label_to_category,
        model.config.decoder.last_layer + 1,
        settings,
    )
    report.info.update(
        weights=str(weights),
        annotations=str(split.annotations),
        size=size,
        files=files,
        cache_key=key,
        cached=False,
        seconds=round(time.perf_counter() - t0, 3),
    )
    if cache_path is not None:
        text = json.dumps(report.to_dict())
        atomic_write(cache_path, lambda p: p.write_text(text))
    return report
