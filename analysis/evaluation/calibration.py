"""Are D-FINE's edge distributions honest? σ of each edge distribution against the edge's
real error, per decoder layer, and the calibration of the class scores.

For every final-layer detection matched to a ground-truth box (same class, IoU ≥ 0.5), at
every decoder layer and for each of its four edges: the error ``e`` = predicted edge − true
edge (pixels, and in W(n) units: pixels / (box size / reg_scale)) and the σ of the edge's
distribution. An honest Gaussian-like distribution puts the true edge inside ±1σ about 68 %
of the time and inside ±2σ about 95 % of the time, orders edges by |e| as σ does (Spearman
ρ > 0), and has RMS error ≈ σ in every σ bin (the reliability diagram's y = x line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from analysis.evaluation.collect import ImageResult
from analysis.evaluation.matching import greedy_match
from dfine.errors import InvalidArgumentError


@dataclass(frozen=True)
class EdgeCalibration:
    """Calibration of one layer's edge distributions over N edges (4 per matched box).

    Attributes:
        stage: layer name.
        edges: N.
        coverage_1sigma, coverage_2sigma: share of true edges within ±1σ / ±2σ.
        spearman: rank correlation of σ with |error| (None for fewer than 3 edges or
            constant inputs).
        mean_abs_error_px, mean_sigma_px: means over the edges, pixels.
        mean_abs_error_units: mean |error| in W(n) units (box size / reg_scale).
        bins_sigma_px, bins_rms_error_px, bins_count: reliability diagram: edges in
            quantile bins of σ; mean σ, RMS error and count per bin.
    """

    stage: str
    edges: int
    coverage_1sigma: float | None
    coverage_2sigma: float | None
    spearman: float | None
    mean_abs_error_px: float | None
    mean_sigma_px: float | None
    mean_abs_error_units: float | None
    bins_sigma_px: list[float]
    bins_rms_error_px: list[float]
    bins_count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def edge_calibration(
    errors: np.ndarray,
    sigma: np.ndarray,
    units: np.ndarray | None = None,
    stage: str = "",
    num_bins: int = 10,
) -> EdgeCalibration:
    """Calibration statistics of edge ``errors`` (any shape, pixels) against ``sigma`` (same
    shape, pixels); ``units``: pixels per W(n) unit (same shape) or None."""
    e = np.abs(np.asarray(errors, np.float64).ravel())
    s = np.asarray(sigma, np.float64).ravel()
    if e.shape != s.shape:
        raise ValueError(f"errors and sigma differ in size: {e.shape} vs {s.shape}")
    n = len(e)
    if n == 0:
        return EdgeCalibration(stage, 0, None, None, None, None, None, None, [], [], [])
    rho = None
    if n >= 3 and np.ptp(e) > 0 and np.ptp(s) > 0:
        rho = float(spearmanr(s, e).statistic)
    order = np.argsort(s, kind="stable")
    chunks = [c for c in np.array_split(order, min(num_bins, n)) if len(c)]
    u = None if units is None else np.asarray(units, np.float64).ravel()
    return EdgeCalibration(
        stage=stage,
        edges=n,
        coverage_1sigma=float((e <= s).mean()),
        coverage_2sigma=float((e <= 2 * s).mean()),
        spearman=rho,
        mean_abs_error_px=float(e.mean()),
        mean_sigma_px=float(s.mean()),
        mean_abs_error_units=None if u is None else float((e / np.maximum(u, 1e-12)).mean()),
        bins_sigma_px=[float(s[c].mean()) for c in chunks],
        bins_rms_error_px=[float(np.sqrt((e[c] ** 2).mean())) for c in chunks],
        bins_count=[len(c) for c in chunks],
    )


def layer_calibration(
    results: Sequence[ImageResult], layer_names: Sequence[str]
) -> list[EdgeCalibration]:
    """:func:`edge_calibration` of every decoder layer (``layer_names``: L names) over the
    matched detections of ``results``. The stage boxes' last L rows are the layers."""
    num_layers = len(layer_names)
    errs, sigmas, units = [], [], []
    for r in results:
        if r.match_sigma is None:
            raise InvalidArgumentError("edge σ was not collected (calibration=False)")
        if len(r.match_gt) == 0:
            continue
        gt = r.gt_boxes[r.match_gt]  # [M, 4]
        errs.append(r.match_boxes[-num_layers:] - gt[None])  # [L, M, 4]
        sigmas.append(r.match_sigma)
        units.append(np.broadcast_to(r.match_unit[None], r.match_sigma.shape))
    if not errs:
        return [edge_calibration(np.zeros(0), np.zeros(0), stage=n) for n in layer_names]
    e, s, u = (np.concatenate(x, axis=1) for x in (errs, sigmas, units))
    return [edge_calibration(e[i], s[i], u[i], stage=layer_names[i]) for i in range(num_layers)]


@dataclass(frozen=True)
class ScoreCalibration:
    """Final-layer detections in score bins: per bin, the share that are true positives at
    IoU 0.5 and 0.75 (same class, greedy matching in score order as COCO), and counts."""

    bin_edges: list[float]
    mean_score: list[float | None]
    precision50: list[float | None]
    precision75: list[float | None]
    count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def true_positives(
    results: Sequence[ImageResult], iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, true-positive flags and labels of all final-layer detections at ``iou``."""
    scores, tps, labels = [], [], []
    for r in results:
        det = r.own
        gt_of, _ = greedy_match(
            det.boxes[-1], det.scores[-1], det.labels[-1], r.gt_boxes, r.gt_labels, iou
        )
        scores.append(det.scores[-1].astype(np.float64))
        tps.append(gt_of >= 0)
        labels.append(det.labels[-1])
    if not scores:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64)
    return np.concatenate(scores), np.concatenate(tps), np.concatenate(labels)


def score_calibration(
    scores: np.ndarray, tp50: np.ndarray, tp75: np.ndarray, num_bins: int = 10
) -> ScoreCalibration:
    """:class:`ScoreCalibration` of detections with ``scores`` and TP flags at IoU .5/.75."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, num_bins - 1)
    mean, p50, p75, count = [], [], [], []
    for b in range(num_bins):
        m = which == b
        k = int(m.sum())
        count.append(k)
        mean.append(float(scores[m].mean()) if k else None)
        p50.append(float(tp50[m].mean()) if k else None)
        p75.append(float(tp75[m].mean()) if k else None)
    return ScoreCalibration([float(v) for v in edges], mean, p50, p75, count)
