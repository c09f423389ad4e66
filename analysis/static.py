"""Matplotlib renderings of the figures in ``analysis.figures`` (same names and arguments), for
static export: ``save_figure(fig, "out.png")`` or ``.svg``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state), so
they are safe to build from several threads, e.g. in a web app.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from matplotlib.figure import Figure
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("analysis.static needs matplotlib: pip install matplotlib") from err

from analysis import _style as S
from analysis._common import EDGES, class_name
from analysis.distributions import EdgeDistributions
from analysis.golsd import GOLSDReport
from analysis.refinement import Refinement
from analysis.weighting import UNIFORM_NOTE, WeightingCurve

FORMATS = (".png", ".svg")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG or SVG (chosen by the suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"save_figure writes {' or '.join(FORMATS)} files, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format=path.suffix.lower()[1:])
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _footnote(fig: Figure, text: str) -> None:
    fig.supxlabel(textwrap.fill(text, 130), fontsize=7, color="#555555")


# ----------------------------------------------------------------------------- refinement
def refinement_figure(
    ref: Refinement, detection: int = 0, class_names: Sequence[str] | None = None
) -> Figure:
    """Matplotlib version of :func:`analysis.figures.refinement_figure`."""
    fig = _figure(9, 7.5)
    ax_iou, ax_move = fig.subplots(2, 1)
    stages = np.arange(len(ref.stages))
    for i in range(ref.num_detections):
        name = S.detection_label(
            i, int(ref.queries[i]), class_name(class_names, int(ref.labels[i]))
        )
        ax_iou.plot(stages, ref.iou_to_final[:, i], "o-", color=S.detection_color(i), label=name)
    ax_iou.set_xticks(stages, ref.stages)
    ax_iou.set(ylim=(0, 1.05), xlabel="stage", ylabel=S.IOU_AXIS)
    ax_iou.set_title("IoU of every stage's box with the final box")
    if ref.num_detections:
        ax_iou.legend(fontsize=7, loc="lower right")
        _moves_axes(ax_move, ref, detection, class_names)
    else:
        ax_iou.text(0.5, 0.5, "no detections selected", ha="center", transform=ax_iou.transAxes)
        ax_move.set(xlabel="stage transition", ylabel=S.MOVE_AXIS)
    fig.suptitle("Layer-by-layer box refinement")
    return fig


def _moves_axes(ax, ref: Refinement, detection: int, class_names) -> None:
    if not 0 <= detection < ref.num_detections:
        raise ValueError(f"detection must be in 0..{ref.num_detections - 1}, got {detection}")
    steps = np.arange(len(ref.stages) - 1)
    for e, edge in enumerate(EDGES):
        ax.bar(
            steps + (e - 1.5) * 0.2,
            ref.edge_moves_px[:, detection, e],
            width=0.2,
            color=S.EDGE_COLORS[edge],
            label=f"{edge} edge",
        )
    ax.axhline(0, color="#444444", linewidth=0.8)
    ax.set_xticks(steps, S.transition_labels(ref.stages), fontsize=7)
    ax.set(xlabel="stage transition", ylabel=S.MOVE_AXIS)
    name = S.detection_label(
        detection, int(ref.queries[detection]), class_name(class_names, int(ref.labels[detection]))
    )
    ax.set_title(f"edge movement from the previous stage, {name}")
    ax.legend(fontsize=7)


# ----------------------------------------------------------------------------- distributions
def distribution_figure(
    dist: EdgeDistributions,
    title: str | None = None,
    *,
    x_range: str = "mass",
    axis: str = "px",
    mass: float = 0.999,
) -> Figure:
    """Matplotlib version of :func:`analysis.figures.distribution_figure`."""

    num_layers = dist.num_layers
    fig = _figure(15, 2.4 * num_layers + 1.2)
    axes = np.asarray(fig.subplots(num_layers, 4, sharex="col", squeeze=False))
    colors = S.layer_colors(num_layers)
    for li, layer in enumerate(dist.layers):
        for e, edge in enumerate(EDGES):
            _distribution_axes(axes[li, e], dist, li, e, colors[li], axis)
            axes[li, e].set_xlim(*dist.x_window(e, axis, x_range, mass))
            axes[li, e].set_title(
                f"{layer} · {edge}: E={dist.expected_px[li, e]:+.1f} px, "
                f"σ={dist.std_px[li, e]:.1f} px, H={dist.entropy[li, e]:.2f} nats",
                fontsize=8,
            )
        axes[li, 0].set_ylabel(f"{layer}: {S.PROB_AXIS}", fontsize=8)
    for e, edge in enumerate(EDGES):
        axes[-1, e].set_xlabel(S.edge_axis(edge), fontsize=8)
    fig.suptitle(title or f"Edge distributions of query {dist.query}, every layer")
    _footnote(fig, S.BAR_NOTE)
    return fig


def _distribution_axes(
    ax, dist: EdgeDistributions, li: int, e: int, color: str, axis: str = "px"
) -> None:
    p, bounds = dist.probs[li, e], dist.bin_bounds(e, axis)
    ax.bar(bounds[:-1], p, width=np.diff(bounds), align="edge", color=color)
    if li > 0:  # the previous layer, as an outline
        ax.stairs(dist.probs[li - 1, e], bounds, color="#555", linewidth=1.0)
    ax.errorbar(
        [dist.expected_px[li, e] if axis == "px" else dist.expected_bin(li, e)],
        [float(p.max()) * 1.08],
        xerr=[dist.std_px[li, e]] if axis == "px" else None,
        fmt="D",
        color="#d62728",
        markersize=5,
        capsize=3,
    )
    ax.tick_params(labelsize=7)


# ----------------------------------------------------------------------------- W(n)
def weighting_figure(curve: WeightingCurve, model: WeightingCurve | None = None) -> Figure:
    """Matplotlib version of :func:`analysis.figures.weighting_figure`."""
    fig = _figure(9, 7.5)
    ax_w, ax_s = fig.subplots(2, 1, height_ratios=[0.62, 0.38])
    ax_w.plot(curve.n, curve.box_fraction, "o-", color="#1f77b4", markersize=4, label="W(n)")
    ax_w.plot(
        curve.n, curve.uniform_box_fraction, "s--", color="#7f7f7f", markersize=3, label="uniform"
    )
    ax_s.plot(
        curve.n[:-1] + 0.5,
        curve.spacing / abs(curve.reg_scale),
        "o-",
        color="#1f77b4",
        markersize=4,
    )
    ax_s.plot(
        curve.n[:-1] + 0.5,
        np.diff(curve.uniform) / abs(curve.reg_scale),
        "s--",
        color="#7f7f7f",
        markersize=3,
    )
    if model is not None:
        label = f"model's W(n) (up={model.up:g}, reg_scale={model.reg_scale:g})"
        ax_w.plot(
            model.n, model.box_fraction, "o", mfc="none", color="#d62728", markersize=8, label=label
        )
        ax_s.plot(
            model.n[:-1] + 0.5,
            model.spacing / abs(model.reg_scale),
            "o",
            mfc="none",
            color="#d62728",
            markersize=7,
        )
    ax_w.set(xlabel=S.BIN_AXIS, ylabel=S.W_AXIS)
    ax_w.set_title(
        f"reg_max={curve.reg_max}, up={curve.up:g}, reg_scale={curve.reg_scale:g}: step ratio "
        f"{curve.step:.4f}, spacing {curve.min_spacing:.4f}…{curve.max_spacing:.4f} (W units)",
        fontsize=9,
    )
    ax_w.legend(fontsize=8)
    ax_s.set(xlabel=S.BIN_AXIS, ylabel=S.SPACING_AXIS, yscale="log")
    ax_s.set_title("spacing between neighbouring bins (log scale)", fontsize=9)
    fig.suptitle("Weighting function W(n)")
    _footnote(fig, UNIFORM_NOTE)
    return fig


# ----------------------------------------------------------------------------- GO-LSD
def golsd_distribution_figure(report: GOLSDReport, query: int, edge: int | str) -> Figure:
    """Matplotlib version of :func:`analysis.figures.golsd_distribution_figure`."""
    q, e = report.check_query(query), S.edge_index(edge)
    x = report.offsets_px[q, e]
    fig = _figure(9, 4.8)
    ax = fig.subplots()
    ax.bar(
        x,
        report.teacher_probs[q, e],
        width=S.bar_widths(x),
        color="#bbbbbb",
        edgecolor=S.TEACHER_COLOR,
        linewidth=0.6,
        label=f"teacher ({report.teacher_layer})",
    )
    colors = S.layer_colors(len(report.student_layers) + 1)
    for i, layer in enumerate(report.student_layers):
        ax.plot(
            x,
            report.student_probs[i, q, e],
            "o-",
            markersize=3,
            color=colors[i],
            label=f"student {layer} (KL {report.kl_edges[i, q, e]:.4f} nats)",
        )
    ax.set(
        xlabel=S.edge_axis(EDGES[e], report.pixel_space), ylabel=S.softened_axis(report.temperature)
    )
    ax.set_title(
        f"GO-LSD, query {q}, {EDGES[e]} edge: teacher vs students · {report.match_text(q)}\n"
        f"{report.note}",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return fig


def golsd_kl_figure(report: GOLSDReport, query: int) -> Figure:
    """Matplotlib version of :func:`analysis.figures.golsd_kl_figure`."""
    q = report.check_query(query)
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    x = np.arange(len(report.student_layers))
    bottom = np.zeros(len(x))
    for e, edge in enumerate(EDGES):
        ax.bar(
            x,
            report.kl_edges[:, q, e],
            bottom=bottom,
            color=S.EDGE_COLORS[edge],
            label=f"{edge} edge",
        )
        bottom = bottom + report.kl_edges[:, q, e]
    ax.set_xticks(x, report.student_layers)
    ax.set(
        xlabel=f"student layer (the teacher is {report.teacher_layer})",
        ylabel=S.kl_axis(report.temperature),
    )
    weights = ", ".join(
        f"{layer}: {report.weights[i, q]:.3f}" for i, layer in enumerate(report.student_layers)
    )
    ax.set_title(
        f"KL per student layer, query {q} · {report.match_text(q)} · DDF weight {weights}\n"
        f"{report.note}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig


def golsd_loss_figure(report: GOLSDReport) -> Figure:
    """Matplotlib version of :func:`analysis.figures.golsd_loss_figure`."""
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    x = np.arange(len(report.student_layers))
    matched = report.contribution[:, report.matched].sum(1)
    unmatched = report.contribution[:, ~report.matched].sum(1)
    ax.bar(x, matched, color="#2ca02c", label="matched queries (weight = IoU)")
    ax.bar(
        x,
        unmatched,
        bottom=matched,
        color="#ff7f0e",
        label="unmatched queries (weight = teacher confidence)",
    )
    ax.set_xticks(x, report.student_layers)
    ax.set(xlabel=f"student layer (the teacher is {report.teacher_layer})", ylabel=S.loss_axis())
    ax.set_title(
        f"DDF loss per layer: {', '.join(f'{v:.5f}' for v in report.loss_ddf)} "
        f"({int(report.matched.sum())} matched queries, T = {report.temperature:g})\n{report.note}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig


def golsd_weights_figure(
    report: GOLSDReport, top: int = 15, class_names: Sequence[str] | None = None
) -> Figure:
    """Matplotlib version of :func:`analysis.figures.golsd_weights_figure`."""
    rows = report.to_table(top, class_names)
    columns = [c for c in (rows[0] if rows else {"query": None}) if c != "targets"]
    cells = [["" if r[c] is None else str(r[c]) for c in columns] for r in rows] or [
        [""] * len(columns)
    ]
    fig = _figure(min(1.5 + 0.9 * len(columns), 20), 1.2 + 0.3 * max(len(rows), 1))
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(columns))))
    ax.set_title(
        f"DDF weights and KL (nats, T = {report.temperature:g}) of the top {len(rows)} queries "
        f"by loss share\n{report.note}",
        fontsize=9,
    )
    return fig


__all__ = [
    "distribution_figure",
    "golsd_distribution_figure",
    "golsd_kl_figure",
    "golsd_loss_figure",
    "golsd_weights_figure",
    "refinement_figure",
    "save_figure",
    "weighting_figure",
]
