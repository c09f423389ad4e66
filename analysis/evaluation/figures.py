"""The dataset report's figures, defined once (plotly). The app shows them interactively;
``analysis.evaluation.html`` writes the same figure objects as PNG and SVG (kaleido, which
drives a local Chromium) and embeds them in an offline ``index.html``.

:data:`FIGURES` maps each figure's file name to its function; a function returns None when
the report lacks its data (e.g. no per-layer analysis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dfine.errors import InvalidArgumentError, missing

try:
    import plotly.graph_objects as go
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing("analysis.evaluation.figures", "plotly") from err

from analysis import _style as S
from analysis.evaluation.report import DatasetReport
from analysis.figures import TEMPLATE, responsive
from dfine.budget import BudgetSweep

LAYOUT = {"template": TEMPLATE, "height": 460, "margin": {"t": 70, "b": 40}}
"""No width: the figures fill their panel (:func:`analysis.figures.responsive`); a static
export picks its own width."""


def stage_ap_figure(report: DatasetReport) -> go.Figure | None:
    """AP per stage — the FDR refinement in one picture: each stage's own scores (solid) and
    the final layer's scores on the stage's boxes (dashed), with mean IoU of the matched
    boxes on the right axis."""
    if not report.stages:
        return None
    names = [s.name for s in report.stages]
    fig = go.Figure()
    for key, label, color in (("AP", "AP", "#1f77b4"), ("AP50", "AP50", "#2ca02c"), ("AP75", "AP75", "#d62728")):  # fmt: skip
        fig.add_scatter(
            x=names, y=[getattr(s, key) for s in report.stages], name=f"{label} (own scores)",
            mode="lines+markers", line={"color": color},
        )  # fmt: skip
        fig.add_scatter(
            x=names, y=[getattr(s, f"{key}_final_scores") for s in report.stages],
            name=f"{label} (final-layer scores)", mode="lines+markers",
            line={"color": color, "dash": "dash"},
        )  # fmt: skip
    fig.add_scatter(
        x=names, y=[s.mean_iou for s in report.stages], name="mean IoU of matched boxes",
        mode="lines+markers", line={"color": "#555", "dash": "dot"}, yaxis="y2",
    )  # fmt: skip
    fig.update_layout(
        **LAYOUT,
        title="COCO AP of every stage scored as its own detector",
        xaxis_title="stage (encoder proposals b0 → pre-head → decoder layers)",
        yaxis={"title": "AP (0–1)", "rangemode": "tozero"},
        yaxis2={
            "title": "mean IoU with ground truth (0–1)",
            "overlaying": "y",
            "side": "right",
            "tickformat": ".3f",
            "showgrid": False,
        },
    )
    return responsive(fig)


def stage_ap_comparison_figure(
    reports: Sequence[DatasetReport], names: Sequence[str]
) -> go.Figure | None:
    """Per-stage AP of several models on the same data (one colour per model; AP solid, AP50
    dashed, AP75 dotted; each stage with its own scores). Stages a model lacks (the pre-head
    of an ``--ablate fdr`` model) are gaps on the shared stage axis. None without stages."""
    if len(reports) != len(names):
        raise InvalidArgumentError(f"{len(reports)} reports but {len(names)} names")
    if not any(r.stages for r in reports):
        return None
    order = sorted({s.name for r in reports for s in r.stages}, key=_stage_rank)
    fig = go.Figure()
    colors = S.DETECTION_COLORS
    for i, (r, name) in enumerate(zip(reports, names)):
        by_name = {s.name: s for s in r.stages}
        for key, dash in (("AP", "solid"), ("AP50", "dash"), ("AP75", "dot")):
            fig.add_scatter(
                x=order, y=[getattr(by_name[n], key) if n in by_name else None for n in order],
                name=key, legendgroup=name, legendgrouptitle_text=name, mode="lines+markers",
                connectgaps=True, line={"color": colors[i % len(colors)], "dash": dash},
                hovertemplate=f"{name}<br>%{{x}}: {key} %{{y:.4f}}<extra></extra>",
            )  # fmt: skip
    fig.update_layout(
        **LAYOUT,
        title="COCO AP of every stage: the models side by side (own scores)",
        xaxis={
            "title": "stage (encoder proposals b0 → pre-head → decoder layers)",
            "categoryorder": "array",
            "categoryarray": order,
        },
        yaxis={"title": "AP (0–1)", "rangemode": "tozero"},
    )
    fig = responsive(fig)
    fig.update_layout(legend={"groupclick": "toggleitem"})
    return fig


def _stage_rank(name: str) -> tuple[int, int]:
    """Pipeline order of ``collect.stage_names``: encoder, pre-head, layer 1, layer 2, …"""
    if name in ("encoder", "pre-head"):
        return (0, ("encoder", "pre-head").index(name))
    return (1, int(name.split()[-1]))


def reliability_figure(report: DatasetReport) -> go.Figure | None:
    """Reliability of the edge distributions: edges in σ bins, RMS real error against mean σ
    per bin and layer; honest distributions lie on y = x."""
    if not report.calibration or not any(c.edges for c in report.calibration):
        return None
    fig = go.Figure()
    top = 0.0
    for i, c in enumerate(report.calibration):
        fig.add_scatter(
            x=c.bins_sigma_px, y=c.bins_rms_error_px, mode="lines+markers", name=c.stage,
            line={"color": S.layer_colors(len(report.calibration))[i]},
            customdata=c.bins_count, hovertemplate="σ %{x:.2f} px<br>RMS error %{y:.2f} px"
            "<br>%{customdata} edges<extra></extra>",
        )  # fmt: skip
        top = max(top, *c.bins_sigma_px, *c.bins_rms_error_px)
    fig.add_scatter(
        x=[0, top], y=[0, top], mode="lines", name="y = x (calibrated)",
        line={"color": "#999", "dash": "dash"},
    )  # fmt: skip
    fig.update_layout(
        **LAYOUT,
        title="Edge uncertainty: σ of the distribution vs real error (matched boxes, IoU ≥ 0.5)",
        xaxis_title="σ of the edge distribution, bin mean (px)",
        yaxis_title="RMS edge error in the bin (px)",
    )
    return responsive(fig)


def coverage_figure(report: DatasetReport) -> go.Figure | None:
    """Share of true edges inside ±1σ and ±2σ per layer, against a Gaussian's 68.3 % and
    95.4 %; Spearman ρ of σ with |error| in the hover."""
    if not report.calibration or not any(c.edges for c in report.calibration):
        return None
    names = [c.stage for c in report.calibration]
    rho = [("—" if c.spearman is None else f"{c.spearman:.3f}") for c in report.calibration]
    fig = go.Figure()
    for key, label, color in (("coverage_1sigma", "±1σ", "#1f77b4"), ("coverage_2sigma", "±2σ", "#ff7f0e")):  # fmt: skip
        fig.add_bar(
            x=names, y=[getattr(c, key) for c in report.calibration], name=f"inside {label}",
            marker_color=color, customdata=rho,
            hovertemplate="%{y:.3f}<br>Spearman ρ %{customdata}<extra></extra>",
        )  # fmt: skip
    for level, label in ((0.6827, "Gaussian ±1σ 68.3 %"), (0.9545, "Gaussian ±2σ 95.4 %")):
        fig.add_hline(y=level, line_dash="dash", line_color="#777", annotation_text=label)
    fig.update_layout(
        **LAYOUT,
        barmode="group",
        title="Coverage of the ±σ bands (share of ground-truth edges inside)",
        xaxis_title="decoder layer",
        yaxis={"title": "share of edges (0–1)", "range": [0, 1.05]},
    )
    return responsive(fig)


def score_calibration_figure(report: DatasetReport) -> go.Figure:
    """Score bins → share of true positives at IoU 0.5 and 0.75; y = x is calibrated."""
    sc = report.score_calibration
    mids = [(a + b) / 2 for a, b in zip(sc.bin_edges[:-1], sc.bin_edges[1:])]
    x = [m if m is not None else c for m, c in zip(sc.mean_score, mids)]
    fig = go.Figure()
    for key, label in (("precision50", "IoU 0.5"), ("precision75", "IoU 0.75")):
        fig.add_scatter(
            x=x, y=getattr(sc, key), mode="lines+markers", name=f"precision at {label}",
            customdata=sc.count, hovertemplate="score %{x:.2f}<br>precision %{y:.3f}"
            "<br>%{customdata} detections<extra></extra>",
        )  # fmt: skip
    fig.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}
    )
    fig.update_layout(
        **LAYOUT,
        title="Score calibration (final layer, all top-k detections)",
        xaxis={"title": "detection score, bin mean (0–1)", "range": [0, 1]},
        yaxis={"title": "share of true positives (0–1)", "range": [0, 1.05]},
    )
    return responsive(fig)


def pr_figure(report: DatasetReport, iou: float = 0.5) -> go.Figure:
    """Precision-recall curve of every class at IoU ``iou`` (COCO's interpolated precision
    at 101 recall points, up to 100 detections per image)."""
    recall = report.info.get("recall_points") or [i / 100 for i in range(101)]
    by_name = {c.name: c for c in report.per_class}
    fig = go.Figure()
    for name, precision in report.pr_curves[str(iou)].items():
        c = by_name.get(name)
        ap = None if c is None else (c.AP50 if iou == 0.5 else c.AP75)
        label = name if ap is None else f"{name} (AP {ap:.3f})"
        fig.add_scatter(x=recall, y=precision, mode="lines", name=label)
    fig.update_layout(
        **LAYOUT,
        title=f"Precision-recall per class at IoU {iou:g}",
        xaxis={"title": "recall (0–1)", "range": [0, 1]},
        yaxis={"title": "precision (0–1)", "range": [0, 1.05]},
    )
    return responsive(fig)


def confusion_figure(report: DatasetReport) -> go.Figure:
    """Confusion matrix with a background row (false positives) and column (missed)."""
    conf = report.confusion
    labels = conf["labels"]
    fig = go.Figure(
        go.Heatmap(
            z=conf["matrix"], x=labels, y=labels, colorscale="Blues", text=conf["matrix"],
            texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}<br>%{z}"
            "<extra></extra>", colorbar={"title": "count"},
        )
    )  # fmt: skip
    fig.update_layout(
        **{**LAYOUT, "height": 560},
        title=f"Confusion matrix at score ≥ {conf['threshold']:g}, IoU ≥ {conf['iou']:g}",
        xaxis_title="predicted class (background = missed ground truth)",
        yaxis={"title": "true class (background = false positive)", "autorange": "reversed"},
    )
    return responsive(fig)


def class_ap_figure(report: DatasetReport) -> go.Figure:
    """AP, AP50 and AP75 of every class."""
    names = [c.name for c in report.per_class]
    fig = go.Figure()
    for key in ("AP", "AP50", "AP75"):
        fig.add_bar(x=names, y=[getattr(c, key) for c in report.per_class], name=key)
    fig.update_layout(
        **LAYOUT,
        barmode="group",
        title="COCO AP per class (final layer)",
        xaxis_title="class",
        yaxis={"title": "AP (0–1)", "range": [0, 1.05]},
    )
    return responsive(fig)


SHARE_COLORS = {"inside": "#9ecae1", "near_edge": "#d62728", "outside": "#bdbdbd"}


def attention_shares_figure(report: DatasetReport) -> go.Figure | None:
    """Per decoder layer, where the attention mass of the detections fell: inside the box, near
    an edge (±band of the box size) or outside, stacked, true positives beside false
    positives. None for a report without attention."""
    a = report.attention
    if a is None:
        return None
    groups = (("TP", a.true_positives), ("FP", a.false_positives))
    x = [[name for name in a.layers for _ in groups], [g for _ in a.layers for g, _ in groups]]
    fig = go.Figure()
    for key, label in (
        ("inside", "inside"),
        ("near_edge", f"near an edge (±{a.band:.0%})"),
        ("outside", "outside"),
    ):
        values = [getattr(group, key)[i] for i in range(len(a.layers)) for _, group in groups]
        counts = [group.count for _ in a.layers for _, group in groups]
        fig.add_bar(
            x=x, y=values, name=label, marker_color=SHARE_COLORS[key], customdata=counts,
            hovertemplate="%{x}: %{y:.1%} of the mass<br>%{customdata} detections"
            "<extra>" + label + "</extra>",
        )  # fmt: skip
    fig.update_layout(
        **LAYOUT,
        barmode="stack",
        title=f"Where each layer's attention fell: {a.true_positives.count} true vs "
        f"{a.false_positives.count} false positives",
        xaxis_title="decoder layer · true (TP) / false (FP) positives",
        yaxis={"title": "share of the attention mass (0–1)", "range": [0, 1]},
        legend={"orientation": "h", "y": -0.3},
    )
    return responsive(fig)


def attention_distance_figure(report: DatasetReport) -> go.Figure | None:
    """The attention mass over the signed distance of the sampling points to the nearest box
    edge (box units; negative inside), every layer, true positives solid, false positives
    dashed; the shaded band counts as "near an edge". None without attention."""
    a = report.attention
    if a is None:
        return None
    mids = [(lo + hi) / 2 for lo, hi in zip(a.bin_edges[:-1], a.bin_edges[1:])]
    colors = S.layer_colors(len(a.layers))
    fig = go.Figure()
    fig.add_vrect(x0=-a.band, x1=a.band, fillcolor="#d62728", opacity=0.08, line_width=0)
    fig.add_vline(x=0, line_color="#777", line_dash="dot")
    for name, group, dash in (
        ("TP", a.true_positives, "solid"),
        ("FP", a.false_positives, "dash"),
    ):
        if not group.count:
            continue
        for i, layer in enumerate(a.layers):
            fig.add_scatter(
                x=mids, y=group.histogram[i], mode="lines", name=f"{layer} {name}",
                line={"color": colors[i], "dash": dash},
                hovertemplate="distance %{x:+.2f}: %{y:.1%}<extra>" + f"{layer} {name}</extra>",
            )  # fmt: skip
    fig.update_layout(
        **LAYOUT,
        title="Attention mass by distance to the nearest box edge (solid TP, dashed FP)",
        xaxis_title="signed distance to the nearest edge (box size units, − inside, + outside)",
        yaxis={"title": "share of the mass per bin (0–1)", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.3},
    )
    return responsive(fig)


def accuracy_latency_figure(sweep: BudgetSweep) -> go.Figure:
    """AP against median ms per image of every decoder depth K × query budget Q (one colour
    per runtime, each point labelled ``K·Q``); the Pareto front (no point both faster and
    more accurate) joined by a line, its points as stars."""
    fig = go.Figure()
    runtimes = list(dict.fromkeys(p.runtime for p in sweep.points))
    for i, runtime in enumerate(runtimes):
        pts = [p for p in sweep.points if p.runtime == runtime]
        fig.add_scatter(
            x=[p.median_ms for p in pts], y=[p.AP for p in pts], name=runtime,
            mode="markers+text", text=[f"K{p.decoder_layers}·Q{p.num_queries}" for p in pts],
            textposition="top center",
            marker={"color": S.DETECTION_COLORS[i % len(S.DETECTION_COLORS)], "size": 10,
                    "symbol": ["star" if p.pareto else "circle" for p in pts]},
            customdata=[[p.AP50, p.AP75] for p in pts],
            hovertemplate="%{text}: AP %{y:.4f}, AP50 %{customdata[0]:.4f}, AP75 "
            "%{customdata[1]:.4f}, %{x:.2f} ms<extra>%{fullData.name}</extra>",
        )  # fmt: skip
    front = sorted((p for p in sweep.points if p.pareto), key=lambda p: p.median_ms)
    fig.add_scatter(
        x=[p.median_ms for p in front], y=[p.AP for p in front], name="Pareto front",
        mode="lines", line={"color": "#555", "dash": "dash"}, hoverinfo="skip",
    )  # fmt: skip
    h, w = sweep.input_size
    fig.update_layout(
        **LAYOUT,
        title=f"Accuracy vs latency: decoder depth K × queries Q ({sweep.images} images, "
        f"{h}x{w}, {sweep.threads} threads)",
        xaxis={
            "title": "median ms per image (batch 1, measured interleaved)",
            "rangemode": "tozero",
        },
        yaxis={"title": "AP (0–1)"},
        legend={"orientation": "h", "y": -0.25},
    )
    return responsive(fig)


FIGURES: dict[str, Callable[[DatasetReport], go.Figure | None]] = {
    "stage_ap": stage_ap_figure,
    "edge_reliability": reliability_figure,
    "edge_coverage": coverage_figure,
    "score_calibration": score_calibration_figure,
    "pr_iou50": lambda r: pr_figure(r, 0.5),
    "pr_iou75": lambda r: pr_figure(r, 0.75),
    "confusion": confusion_figure,
    "class_ap": class_ap_figure,
    "attention_shares": attention_shares_figure,
    "attention_distance": attention_distance_figure,
}


LABELS: dict[str, str] = {
    "stage_ap": "Per-stage AP (every stage as its own detector)",
    "edge_reliability": "Edge σ vs real error (reliability)",
    "edge_coverage": "Coverage of the ±1σ / ±2σ bands",
    "score_calibration": "Score calibration",
    "pr_iou50": "Precision-recall per class, IoU 0.5",
    "pr_iou75": "Precision-recall per class, IoU 0.75",
    "confusion": "Confusion matrix (with background)",
    "class_ap": "AP per class",
    "attention_shares": "Where each decoder layer's attention fell (TP vs FP)",
    "attention_distance": "Attention mass by distance to the nearest box edge",
}
"""A short label of each figure of :data:`FIGURES` (the app's panel labels)."""


def all_figures(report: DatasetReport) -> dict[str, go.Figure]:
    """Every figure the report has data for, by file name."""
    figs = {name: fn(report) for name, fn in FIGURES.items()}
    return {k: v for k, v in figs.items() if v is not None}
