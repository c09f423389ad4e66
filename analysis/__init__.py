"""Analysis of a D-FINE forward pass: data objects and figures for people to look at.

Data (numpy / torch / PIL only):

- :func:`refinement` → :class:`Refinement`: every stage's box of chosen detections (encoder
  b0, pre-head, layers 1..L), edge offsets, IoU to the final box, edge movements, in pixels;
  :func:`refinement_overlay` draws one stage with the previous one ghosted.
- :func:`edge_distributions` → :class:`EdgeDistributions`: one detection's four edge
  distributions at every layer on the W(n) axis in pixels, expectation, entropy, σ;
  :func:`uncertainty_overlay` draws every edge as a ±σ band.
- :func:`weighting_curve` / :func:`model_weighting` → :class:`WeightingCurve`: W(n) and
  evenly spaced bins over the same range.
- :func:`golsd` → :class:`GOLSDReport`: GO-LSD matches, softened teacher / student
  distributions, KL, DDF weights and per-layer loss, computed by the criterion's functions;
  :func:`criterion_outputs`, :func:`pseudo_targets`.
- :func:`compare_refinement` / :func:`compare_edge` → :class:`RefinementComparison` /
  :class:`EdgeComparison`: several models on one image (e.g. the ``--ablate`` variants):
  per-layer IoU with the same objects, and the same edge's distributions per layer.
- :func:`attention_shares` → :class:`AttentionShares`: per decoder layer, the share of the
  deformable attention's mass inside detections' boxes, near an edge (±10 % of the box size)
  and outside, and its histogram over the distance to the nearest edge, true vs false
  positives (:func:`attention_mass` per detection; the dataset report sums them).
- :func:`layer_stats`: over an annotated dataset, each decoder layer's mean IoU with the ground
  truth and mean edge entropy (refinement measured, not only shown).

Figures: ``analysis.figures`` (plotly, defined once) and ``analysis.export`` (``save_figure``:
the same figure objects as PNG/SVG through kaleido). They are imported on first use, so the
data functions work without plotly installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from analysis._common import EDGES
from analysis.attention import AttentionShares, attention_mass, attention_shares
from analysis.compare import (
    EdgeComparison,
    RefinementComparison,
    compare_edge,
    compare_refinement,
)
from analysis.distributions import EdgeDistributions, edge_distributions, uncertainty_overlay
from analysis.golsd import GOLSDReport, criterion_outputs, golsd, pseudo_targets
from analysis.layer_stats import layer_stats
from analysis.refinement import Refinement, refinement, refinement_overlay
from analysis.refinement import stage_names as refinement_stages
from analysis.weighting import (
    UNIFORM_NOTE,
    WeightingCurve,
    check_parameters,
    model_weighting,
    weighting_curve,
)

__all__ = [
    "EDGES",
    "UNIFORM_NOTE",
    "AttentionShares",
    "EdgeComparison",
    "EdgeDistributions",
    "GOLSDReport",
    "Refinement",
    "RefinementComparison",
    "WeightingCurve",
    "attention_mass",
    "attention_shares",
    "check_parameters",
    "compare_edge",
    "compare_refinement",
    "criterion_outputs",
    "edge_distributions",
    "export",
    "figures",
    "golsd",
    "layer_stats",
    "model_weighting",
    "pseudo_targets",
    "refinement",
    "refinement_overlay",
    "refinement_stages",
    "uncertainty_overlay",
    "weighting_curve",
]


def __getattr__(name: str) -> Any:
    if name in ("export", "figures"):
        return importlib.import_module(f"analysis.{name}")
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
