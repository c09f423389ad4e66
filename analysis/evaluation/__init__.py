"""Dataset-scale analysis of a D-FINE checkpoint, from one traced forward per image.

- :func:`evaluate_dataset` → :class:`DatasetReport`: COCO metrics; per-stage AP (encoder
  proposals, pre-head, decoder layers; own scores and final-layer scores) and mean IoU;
  calibration of the edge distributions' σ against the real edge errors and of the scores;
  per-class AP, PR curves, confusion matrix, best-F1 thresholds, error gallery.
- :mod:`analysis.evaluation.figures`: the plotly figures (defined once);
  :mod:`analysis.evaluation.html`: ``metrics.json``, PNG/SVG of those figures and an offline
  ``index.html`` (what ``dfine val --report`` writes).
"""

from __future__ import annotations

from analysis.evaluation.collect import EvalSettings, ImageResult, run_pass, stage_names
from analysis.evaluation.report import DatasetReport, build_report, evaluate_dataset

__all__ = [
    "DatasetReport",
    "EvalSettings",
    "ImageResult",
    "build_report",
    "evaluate_dataset",
    "run_pass",
    "stage_names",
]
