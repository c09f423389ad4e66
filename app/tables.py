"""The tables the app shows, as pandas DataFrames with units in the column names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

import analysis
from dfine.detections import Detections

DETECTION_COLUMNS = ["#", "class", "score", "x1 (px)", "y1 (px)", "x2 (px)", "y2 (px)"]


def detections(dets: Detections) -> pd.DataFrame:
    """One row per detection: index, class, score, box corners in original-image pixels."""
    rows = [
        [i, name, round(float(score), 4), *(round(float(v), 2) for v in box)]
        for i, (name, score, box) in enumerate(zip(dets.names, dets.scores, dets.boxes))
    ]
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def refinement(
    ref: analysis.Refinement, picked: Sequence[int], class_names: Sequence[str]
) -> pd.DataFrame:
    """One row per (detection, stage); ``#`` is the detection's index in the Detect tab."""
    frame = pd.DataFrame(ref.to_table(class_names))
    frame.insert(0, "#", [picked[i] for i in frame.pop("detection")])
    return frame.rename(columns={"iou_to_final": "IoU to final"})


def edge_stats(dist: analysis.EdgeDistributions) -> pd.DataFrame:
    """One row per (layer, edge): expected offset, σ, entropy, edge position."""
    rows = []
    for li, layer in enumerate(dist.layers):
        for e, edge in enumerate(dist.edges):
            lo, hi = dist.neighbour_bins[li, e]
            rows.append(
                {
                    "layer": layer,
                    "edge": edge,
                    "expected offset (px, + outward)": round(float(dist.expected_px[li, e]), 2),
                    "σ (px)": round(float(dist.std_px[li, e]), 2),
                    "entropy (nats)": round(float(dist.entropy[li, e]), 3),
                    "entropy / max": round(float(dist.entropy[li, e]) / dist.max_entropy, 3),
                    "edge position (px)": round(float(dist.edge_positions_px[li, e]), 1),
                    "bins around the expectation": f"{lo}, {hi}",
                }
            )
    return pd.DataFrame(rows)


def weighting(curve: analysis.WeightingCurve) -> pd.DataFrame:
    frame = pd.DataFrame(curve.to_table())
    return frame.round(6)


def golsd(report: analysis.GOLSDReport, class_names: Sequence[str]) -> pd.DataFrame:
    """The queries contributing most to the DDF loss (``GOLSDReport.to_table``)."""
    frame = pd.DataFrame(report.to_table(20, class_names))
    return frame.drop(columns=["targets"], errors="ignore")


EDGE_STATS_COLUMNS = [
    "layer",
    "edge",
    "expected offset (px, + outward)",
    "σ (px)",
    "entropy (nats)",
    "entropy / max",
    "edge position (px)",
    "bins around the expectation",
]
REFINEMENT_COLUMNS = [
    *("#", "query", "class", "stage", "x1", "y1", "x2", "y2", "score", "IoU to final"),
    *(f"move_{edge}_px" for edge in analysis.EDGES),
    *(f"offset_{edge}_px" for edge in analysis.EDGES),
]
GOLSD_COLUMNS = ["query", "matched", "target", "target class", "matched in", "teacher confidence"]


def empty(columns: Sequence[str]) -> pd.DataFrame:
    """A table with these headers and no rows: what a table shows before its first result
    (gradio would otherwise show the headers 1, 2, 3)."""
    return pd.DataFrame(columns=list(columns))
