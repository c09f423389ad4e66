"""Interactive plotly figures of the analysis objects. Every axis title names its unit;
nothing is smoothed; GO-LSD figures say whether the targets are pseudo ground truth.

``analysis.export.save_figure`` writes any of them as PNG or SVG (plotly's own export).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dfine.errors import InvalidArgumentError, missing

try:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing("analysis.figures", "plotly") from err

from analysis import _style as S
from analysis._common import EDGES, class_name
from analysis.compare import EdgeComparison, RefinementComparison
from analysis.distributions import EdgeDistributions, cell_bounds
from analysis.golsd import GOLSDReport
from analysis.refinement import Refinement
from analysis.tracks import TrackSeries
from analysis.weighting import UNIFORM_NOTE, WeightingCurve

TEMPLATE = "plotly_white"


def wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` shown characters (plotly ``<br>``),
    at spaces (never inside a tag); existing ``<br>`` kept."""
    out = []
    for part in str(text).split("<br>"):
        line = ""
        # a tag's own spaces (<span style=...>) are not places to break
        part = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "\0"), part)
        for word in part.split(" "):
            if line and _shown_len(line) + 1 + _shown_len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return "<br>".join(out).replace("\0", " ")


def _shown_len(text: str) -> int:
    """Characters of ``text`` a reader sees (tags left out)."""
    return len(re.sub(r"<[^>]*>", "", text))


TITLE_CHARS = 44
"""Characters per title line: a line this long fits the narrowest panel the app has (a
phone, about 360 px, at the 15 px title type); longer titles and axis titles wrap."""


Y_TITLE_CHARS = 36
"""Characters per line of a y-axis title (it runs along a plot about 250 px high)."""


def responsive(fig: go.Figure, title_chars: int = TITLE_CHARS) -> go.Figure:
    """``fig`` sized by its container, never cut at the right edge: no fixed width
    (plotly's autosize fills the panel; a static export picks its own width), the title
    wrapped and left-aligned, and the legend laid out in rows under the plot (plotly wraps a
    horizontal legend), so that it takes no width from the plot. Returns ``fig``."""
    title_chars = min(title_chars, TITLE_CHARS)
    title = fig.layout.title.text
    if title:
        fig.update_layout(
            title={"text": wrap(title, title_chars), "x": 0.01, "xanchor": "left"},
            title_font_size=min(fig.layout.title.font.size or 15, 15),
        )
    for axes, chars in ((fig.for_each_xaxis, title_chars), (fig.for_each_yaxis, Y_TITLE_CHARS)):
        # (a long vertical title would reach past its plot into the figure's title)
        axes(
            lambda a, n=chars: a.update(title_text=wrap(a.title.text, n)) if a.title.text else None
        )
    fig.update_layout(
        width=None,
        autosize=True,
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "x": 0,
            "xanchor": "left",
        },
    )
    return fig


def subtitle(text: str) -> str:
    """``text`` as a title's second line: smaller and grey but readable (``<sub>`` renders at
    about 7 px)."""
    return f"<br><span style='font-size:12px;color:#555'>{text}</span>"


def fit_text(fig: go.Figure, width_chars: int = 70) -> go.Figure:
    """Titles and notes that fit a figure about 480 px wide (the app's narrowest panel):
    subplot titles left-aligned on their subplot and wrapped, long notes and the title
    wrapped, room above for them, and axis titles kept clear of the tick labels."""
    note_lines = sub_lines = 0
    for ann in fig.layout.annotations:
        if ann.xref == "paper" and ann.yref == "paper" and ann.showarrow is False:
            if ann.xanchor == "center" and ann.yanchor == "bottom":  # a subplot title
                ann.update(x=_domain_left(fig, ann.x), xanchor="left")
                ann.text = wrap(ann.text, min(width_chars, TITLE_CHARS))
                if ann.y >= 0.99:  # the top row's: they reach up into the top margin
                    sub_lines = max(sub_lines, 1 + ann.text.count("<br>"))
            else:  # a note (11 px type: 1.4 times a title's characters per line)
                ann.text = wrap(ann.text, int(min(width_chars, TITLE_CHARS) * 1.4))
                if ann.y is not None and (ann.y < 0 or (ann.yshift or 0) < 0):  # under the plots
                    note_lines = max(note_lines, 1 + ann.text.count("<br>"))
    title = fig.layout.title.text
    if title:
        title = wrap(title, min(width_chars, TITLE_CHARS))  # as responsive() wraps it
        fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"})
    lines = 1 + (title or "").count("<br>")
    fig.update_layout(margin={"t": 56 + 22 * lines + 16 * max(sub_lines - 1, 0)})
    if note_lines:  # under the x axis titles, however many lines they have
        x_lines = [1 + (a.title.text or "").count("<br>") for a in fig.select_xaxes()]
        fig.update_layout(margin={"b": 80 + 16 * note_lines + 18 * (max(x_lines) - 1)})
    fig.update_yaxes(title_standoff=6, automargin=True)
    fig.update_xaxes(automargin=True)
    return responsive(fig, width_chars)


def _domain_left(fig: go.Figure, x: float) -> float:
    """The left edge of the x domain whose centre is ``x`` (a subplot title's position)."""
    for name in fig.layout:
        if name.startswith("xaxis"):
            lo, hi = fig.layout[name].domain
            if abs((lo + hi) / 2 - x) < 1e-6:
                return lo
    return x


def mass_range(x: np.ndarray, probs: np.ndarray, mass: float = 0.999) -> list[float]:
    """An x range over bins at sorted positions ``x [N]`` that holds ``mass`` of each
    distribution of ``probs [K, N]`` (equal tails cut), plus a 15 % margin."""
    bounds = cell_bounds(x)
    tail = (1.0 - mass) / 2
    cdf = np.cumsum(probs, axis=-1)
    lo = min(int(np.argmax(c > tail)) for c in cdf)
    hi = max(int(np.argmax(c >= 1.0 - tail)) for c in cdf)
    left, right = float(bounds[lo]), float(bounds[min(hi, len(x) - 1) + 1])
    margin = max(0.15 * (right - left), 1e-3)
    return [max(left - margin, float(bounds[0])), min(right + margin, float(bounds[-1]))]


def _note(fig: go.Figure, text: str, y: float = -0.12, yshift: float = 0) -> None:
    """A grey note under the plots: at ``y`` (paper units), moved ``yshift`` px."""
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0,
        y=y,
        yshift=yshift,
        showarrow=False,
        xanchor="left",
        yanchor="top",
        font={"size": 11, "color": "#555"},
    )


# ----------------------------------------------------------------------------- refinement
def refinement_figure(
    ref: Refinement, detection: int = 0, class_names: Sequence[str] | None = None
) -> go.Figure:
    """Top: IoU of every stage's box with the final box, one line per detection. Bottom: the
    signed movement of each edge of detection ``detection`` from stage to stage (px)."""
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.26,
        subplot_titles=(
            "IoU of every stage's box with the final box",
            _moves_title(ref, detection, class_names),
        ),
    )
    for i in range(ref.num_detections):
        name = S.detection_label(
            i, int(ref.queries[i]), class_name(class_names, int(ref.labels[i]))
        )
        fig.add_trace(
            go.Scatter(
                x=ref.stages,
                y=ref.iou_to_final[:, i],
                mode="lines+markers",
                name=name,
                line={"color": S.detection_color(i)},
                legendgroup="iou",
                hovertemplate="%{x}: IoU %{y:.3f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=1,
        )
    if ref.num_detections:
        d = _check_detection(ref, detection)
        steps = S.transition_labels(ref.stages)
        for e, edge in enumerate(EDGES):
            fig.add_trace(
                go.Bar(
                    x=steps,
                    y=ref.edge_moves_px[:, d, e],
                    name=f"{edge} edge",
                    marker_color=S.EDGE_COLORS[edge],
                    legendgroup="moves",
                    hovertemplate="%{x}: %{y:+.2f} px<extra>" + edge + "</extra>",
                ),
                row=2,
                col=1,
            )
    else:
        _note(fig, "no detections selected", y=1.0)
    fig.update_yaxes(title_text=S.IOU_AXIS, range=[0, 1.05], row=1, col=1)
    fig.update_xaxes(title_text="stage", row=1, col=1)
    fig.update_yaxes(title_text=S.MOVE_AXIS, zeroline=True, row=2, col=1)
    fig.update_xaxes(title_text="stage transition", row=2, col=1)
    fig.update_layout(
        template=TEMPLATE,
        barmode="group",
        height=760,
        title="Layer-by-layer box refinement",
        legend={"groupclick": "toggleitem", "traceorder": "normal"},  # rows, not columns
    )
    return fit_text(fig, 45)


def _check_detection(ref: Refinement, detection: int) -> int:
    if not 0 <= detection < ref.num_detections:
        raise InvalidArgumentError(
            f"detection must be in 0..{ref.num_detections - 1}, got {detection}"
        )
    return detection


def _moves_title(ref: Refinement, detection: int, class_names: Sequence[str] | None) -> str:
    if not ref.num_detections:
        return "edge movement"
    d = _check_detection(ref, detection)
    name = S.detection_label(d, int(ref.queries[d]), class_name(class_names, int(ref.labels[d])))
    return f"edge movement from the previous stage, {name}"


# ----------------------------------------------------------------------------- distributions
DISTRIBUTION_MASS = 0.999
"""The x range of :func:`distribution_figure` holds at least this share of every layer's
probability (then a margin), unless ``x_range="full"``."""


def distribution_figure(
    dist: EdgeDistributions,
    title: str | None = None,
    *,
    x_range: str = "mass",
    axis: str = "px",
    mass: float = DISTRIBUTION_MASS,
) -> go.Figure:
    """Grid of layers (rows) × edges (columns). Each bar is a bin's probability, drawn over
    the span of displacements the bin stands for (``axis="px"``: pixels, W(n)·box
    size/reg_scale, so bars are as wide as the bins really are; ``axis="bin"``: the bin index
    n); the grey outline is the previous layer's distribution; the diamond marks the expected
    displacement with ±1σ whiskers. ``x_range="mass"`` zooms every column to the bins that
    hold ``mass`` of the probability at every layer, plus a margin (a confident edge is then
    readable); ``"full"`` shows the whole W(n) range."""
    if x_range not in ("mass", "full"):
        raise InvalidArgumentError(f"x_range must be 'mass' or 'full', got {x_range!r}")
    num_layers = dist.num_layers
    titles = [
        f"{layer} · {edge}<br>E={dist.expected_px[li, e]:+.1f} px, σ={dist.std_px[li, e]:.1f} px"
        for li, layer in enumerate(dist.layers)
        for e, edge in enumerate(EDGES)
    ]
    fig = make_subplots(
        rows=num_layers,
        cols=4,
        shared_xaxes="columns",
        subplot_titles=titles,
        vertical_spacing=min(0.1, 0.6 / num_layers),
        horizontal_spacing=0.06,
    )
    colors = S.layer_colors(num_layers)
    for li, layer in enumerate(dist.layers):
        for e, edge in enumerate(EDGES):
            _distribution_cell(fig, dist, li, e, colors[li], layer, edge, axis)
    for e, edge in enumerate(EDGES):
        x_title = S.edge_axis(edge) if axis == "px" else f"{edge} edge: bin index n"
        fig.update_xaxes(title_text=x_title, row=num_layers, col=e + 1)
        fig.update_xaxes(range=list(dist.x_window(e, axis, x_range, mass)), col=e + 1)
    for li, layer in enumerate(dist.layers):
        fig.update_yaxes(title_text=f"{layer}: p", title_standoff=4, row=li + 1, col=1)
    fig.update_annotations(font_size=11)
    shown = (
        f"x range: the bins holding ≥ {mass:.1%} of every layer's probability, plus a margin"
        if x_range == "mass"
        else "x range: the full W(n) range"
    )
    _note(fig, f"{S.BAR_NOTE}; {shown}", y=0, yshift=-80)  # under ticks and 2-line x titles
    fig.update_layout(
        template=TEMPLATE,
        height=230 * num_layers + 160,
        showlegend=False,
        bargap=0,
        barmode="overlay",
        margin={"t": 90, "l": 70, "r": 20},
        title=title or f"Edge distributions of query {dist.query}, every layer",
    )
    return fit_text(fig, 100)


def _distribution_cell(
    fig, dist: EdgeDistributions, li: int, e: int, color: str, layer, edge, axis: str = "px"
):
    x, p = dist.bin_positions(e, axis), dist.probs[li, e]
    bounds = dist.bin_bounds(e, axis)
    width = np.diff(bounds)
    unit = "px" if axis == "px" else ""
    fig.add_trace(
        go.Bar(  # each bar over its bin's own span: left edge x + offset, width
            x=x,
            y=p,
            offset=bounds[:-1] - x if axis == "px" else -0.45,
            width=width if axis == "px" else 0.9,
            marker_color=color,
            name=f"{layer} {edge}",
            customdata=np.stack([np.arange(len(x)), dist.offsets_px[e]], axis=-1),
            hovertemplate="bin %{customdata[0]}: offset %{customdata[1]:+.2f} px, "
            "p=%{y:.4f}<extra></extra>",
        ),
        row=li + 1,
        col=e + 1,
    )
    if li > 0:  # the previous layer, as an outline
        prev = dist.probs[li - 1, e]
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([[bounds[0]], bounds]),
                y=np.concatenate([[0.0], prev, [0.0]]),
                mode="lines",
                line={"shape": "hv", "color": "#555", "width": 1.2},
                name=f"{dist.layers[li - 1]} (previous layer)",
                hoverinfo="skip",
            ),
            row=li + 1,
            col=e + 1,
        )
    expected = dist.expected_px[li, e] if axis == "px" else dist.expected_bin(li, e)
    fig.add_trace(
        go.Scatter(
            x=[expected],
            y=[float(p.max()) * 1.08],
            mode="markers",
            marker={"symbol": "diamond", "size": 9, "color": "#d62728"},
            error_x={"type": "constant", "value": float(dist.std_px[li, e]), "color": "#d62728"}
            if axis == "px"
            else None,
            name="expected ±1σ",
            hovertemplate="expected %{x:+.2f} " + unit + f" (σ {dist.std_px[li, e]:.2f} px)"
            "<extra></extra>",
        ),
        row=li + 1,
        col=e + 1,
    )


MESSAGE_WIDTH = 90  # characters per line of a message figure (fits a 1024 px page at 14 px)


def message_figure(text: str, title: str = "") -> go.Figure:
    """An empty figure that says ``text``: a tab's answer when there is nothing to plot (e.g.
    the distributions of a model trained without them)."""
    fig = go.Figure()
    fig.add_annotation(
        text=wrap(text, MESSAGE_WIDTH), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
        font={"size": 14},
    )  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(template=TEMPLATE, height=240, title=title)
    return fig


# ----------------------------------------------------------------------------- comparison
MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
NO_DISTRIBUTIONS_NOTE = "no distributions (--ablate fdr): its box edge per layer only"


def refinement_comparison_figure(cmp: RefinementComparison) -> go.Figure:
    """Per-stage IoU with the same objects, one colour per model: the mean over the objects
    (thick line) and every object (thin, faint). Models without a pre-head start at layer 1."""
    fig = go.Figure()
    for m, model in enumerate(cmp.models):
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        for i in range(model.iou.shape[1]):
            fig.add_trace(
                go.Scatter(
                    x=model.stages,
                    y=model.iou[:, i],
                    mode="lines",
                    line={"color": color, "width": 1},
                    opacity=0.3,
                    legendgroup=model.model,
                    showlegend=False,
                    hovertemplate=f"object {i} (query {int(model.queries[i])}): "
                    + "%{x}: IoU %{y:.3f}<extra>"
                    + model.model
                    + "</extra>",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=model.stages,
                y=model.mean_iou,
                mode="lines+markers",
                line={"color": color, "width": 3},
                name=f"{model.model}: mean of {model.iou.shape[1]}",
                legendgroup=model.model,
                hovertemplate="%{x}: mean IoU %{y:.3f}<extra>" + model.model + "</extra>",
            )
        )
    fig.update_xaxes(title_text="stage", categoryorder="array", categoryarray=cmp.stages)
    fig.update_yaxes(title_text=f"IoU with the {cmp.reference} (0–1)", range=[0, 1.05])
    if not len(cmp.labels):
        _note(fig, "no objects to compare", y=1.0)
    fig.update_layout(
        template=TEMPLATE,
        height=420,
        title=f"Per-layer IoU with the same {len(cmp.labels)} object(s) ({cmp.reference})",
    )
    return fig


def _edge_comparison_range(cmp: EdgeComparison, target: float) -> list[float]:
    """The x range of :func:`edge_comparison_figure`: every model's bins that hold
    ``DISTRIBUTION_MASS`` of each layer's probability (with :func:`mass_range`'s margin), every
    model's edge and the object's edge."""
    lo = hi = target
    for model in cmp.models:
        lo, hi = min(lo, *model.position_px), max(hi, *model.position_px)
        if model.has_distributions:
            order = np.argsort(model.bin_positions_px)
            left, right = mass_range(
                model.bin_positions_px[order], model.probs[:, order], DISTRIBUTION_MASS
            )
            lo, hi = min(lo, left), max(hi, right)
    margin = max(0.05 * (hi - lo), 2.0)
    return [float(lo - margin), float(hi + margin)]


def edge_comparison_figure(cmp: EdgeComparison) -> go.Figure:
    """One row per decoder layer: each model's bin probabilities for the edge, placed at the
    image coordinate each bin stands for (one colour per model), and a dotted line at each
    model's edge position; the dashed black line is the object's edge."""
    n = cmp.num_layers
    fig = make_subplots(
        rows=n,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.08, 0.4 / n),
        subplot_titles=[f"layer {i + 1}" for i in range(n)],
    )
    e = EDGES.index(cmp.edge)
    target = float(cmp.object_xyxy[e])
    notes = []
    for m, model in enumerate(cmp.models):
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        if not model.has_distributions:
            notes.append(f"{model.model}: {NO_DISTRIBUTIONS_NOTE}")
        for li in range(len(model.layers)):
            first = li == 0
            if model.has_distributions:
                x, p = model.bin_positions_px, model.probs[li]
                fig.add_trace(
                    go.Bar(
                        x=x,
                        y=p,
                        width=S.bar_widths(np.sort(x)),
                        marker_color=color,
                        opacity=0.55,
                        name=model.model,
                        legendgroup=model.model,
                        showlegend=first,
                        customdata=np.arange(len(x)),
                        hovertemplate="bin %{customdata}: %{x:.1f} px, p=%{y:.4f}<extra>"
                        + model.model
                        + "</extra>",
                    ),
                    row=li + 1,
                    col=1,
                )
            fig.add_vline(
                x=float(model.position_px[li]),
                line={"color": color, "dash": "dot", "width": 2},
                row=li + 1,
                col=1,
            )
            if not model.has_distributions and first:  # a legend entry for a line-only model
                fig.add_trace(
                    go.Scatter(
                        x=[None],
                        y=[None],
                        mode="lines",
                        line={"color": color, "dash": "dot"},
                        name=f"{model.model} (box edge only)",
                    ),
                    row=1,
                    col=1,
                )
        for li in range(n):
            fig.add_vline(x=target, line={"color": "#222", "dash": "dash"}, row=li + 1, col=1)
    queries = ", ".join(f"{m.model}: query {m.query}" for m in cmp.models)
    fig.update_xaxes(range=_edge_comparison_range(cmp, target))
    fig.update_xaxes(title_text=f"{cmp.edge} edge position (px of the original image)", row=n)
    for li in range(n):
        fig.update_yaxes(title_text=S.PROB_AXIS, row=li + 1, col=1)
    _note(
        fig,
        "dotted: each model's edge at that layer; dashed black: the object's edge"
        + ("; " + "; ".join(notes) if notes else ""),
        y=-0.06,
    )
    fig.update_layout(
        template=TEMPLATE,
        barmode="overlay",
        bargap=0,
        height=220 * n + 180,
        margin={"t": 110},
        title=f"The {cmp.edge} edge of the same object ({cmp.reference}) per layer"
        + subtitle(queries),
    )
    return fig


# ----------------------------------------------------------------------------- W(n)
def weighting_figure(curve: WeightingCurve, model: WeightingCurve | None = None) -> go.Figure:
    """Top: W(n)/reg_scale against the bin index, the evenly spaced bins over the same range,
    and the model's own W(n) when given. Bottom: the spacing between neighbouring bins."""
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.16,
        row_heights=[0.62, 0.38],
        subplot_titles=(_weighting_title(curve), "spacing between neighbouring bins"),
    )
    series = _weighting_series(curve, model)
    for c, label, style in series:
        fig.add_trace(
            go.Scatter(
                x=c.n,
                y=c.box_fraction if label != "uniform" else c.uniform_box_fraction,
                customdata=c.w if label != "uniform" else c.uniform,
                name=label,
                mode=style["mode"],
                line=style.get("line"),
                marker=style.get("marker"),
                hovertemplate="n=%{x}: W=%{customdata:.4f}, W/reg_scale=%{y:.4f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    for c, label, style in series:
        spacing = c.spacing if label != "uniform" else np.diff(c.uniform)
        fig.add_trace(
            go.Scatter(
                x=c.n[:-1] + 0.5,
                y=spacing / abs(c.reg_scale),
                name=f"{label} spacing",
                mode=style["mode"],
                line=style.get("line"),
                marker=style.get("marker"),
                showlegend=False,
                hovertemplate="between n=%{x:.1f}±0.5: %{y:.4f}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(title_text=S.BIN_AXIS, row=1, col=1)
    fig.update_yaxes(title_text=S.W_AXIS, row=1, col=1)
    fig.update_xaxes(title_text=S.BIN_AXIS, row=2, col=1)
    spacings = np.concatenate(
        [c.spacing if label != "uniform" else np.diff(c.uniform) for c, label, _ in series]
    ) / abs(curve.reg_scale)
    ticks = log_ticks(float(spacings.min()), float(spacings.max()))
    fig.update_yaxes(
        title_text=S.SPACING_AXIS,
        type="log",
        tickvals=ticks,
        ticktext=[f"{v:g}" for v in ticks],
        row=2,
        col=1,
    )
    _note(fig, UNIFORM_NOTE + "; spacing axis is logarithmic", y=-0.1)
    fig.update_layout(template=TEMPLATE, height=680, title="Weighting function W(n)")
    return fit_text(fig, 80)


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over ``[lo, hi]`` (both > 0): 1, 2 and 5 times the powers
    of ten inside it (the powers only beyond three decades), with one step beyond each end, so that every tick is labelled as the
    whole number it stands for (plotly's own minor labels read "2, 5, 0.1, 2, 5")."""
    if not (0 < lo <= hi and np.isfinite(hi)):
        raise ValueError(f"log ticks need 0 < lo <= hi, got {lo}, {hi}")
    mantissas = (1, 2, 5) if hi / lo <= 1000 else (1,)  # at most about 10 ticks
    steps = [
        m * 10.0**k
        for k in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
        for m in mantissas
    ]
    below = [v for v in steps if v <= lo][-1:]
    above = [v for v in steps if v >= hi][:1]
    return [float(f"{v:.3g}") for v in below + [v for v in steps if lo < v < hi] + above]


def _weighting_title(c: WeightingCurve) -> str:
    return (
        f"reg_max={c.reg_max}, up={c.up:g}, reg_scale={c.reg_scale:g}: step ratio {c.step:.4f}, "
        f"spacing {c.min_spacing:.4f}…{c.max_spacing:.4f} (W units)"
    )


def _weighting_series(curve: WeightingCurve, model: WeightingCurve | None):
    series = [
        (curve, "W(n)", {"mode": "lines+markers", "line": {"color": "#1f77b4"}}),
        (
            curve,
            "uniform",
            {
                "mode": "lines+markers",
                "line": {"color": "#7f7f7f", "dash": "dash"},
                "marker": {"size": 4},
            },
        ),
    ]
    if model is not None:
        label = f"model's W(n) (up={model.up:g}, reg_scale={model.reg_scale:g})"
        series.append(
            (
                model,
                label,
                {
                    "mode": "markers",
                    "marker": {"symbol": "circle-open", "size": 10, "color": "#d62728"},
                },
            )
        )
    return series


# ----------------------------------------------------------------------------- GO-LSD
def golsd_distribution_figure(report: GOLSDReport, query: int, edge: int | str) -> go.Figure:
    """The softened teacher (final layer) distribution of one query's edge as bars, and each
    student layer's softened distribution as a line, on the pixel offset axis."""
    q, e = report.check_query(query), S.edge_index(edge)
    x = report.offsets_px[q, e]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=x,
            y=report.teacher_probs[q, e],
            width=S.bar_widths(x),
            marker_color="#bbbbbb",
            marker_line_color=S.TEACHER_COLOR,
            marker_line_width=1,
            name=f"teacher ({report.teacher_layer})",
            hovertemplate="%{x:+.2f} px: p=%{y:.4f}<extra>teacher</extra>",
        )
    )
    colors = S.layer_colors(len(report.student_layers) + 1)
    for i, layer in enumerate(report.student_layers):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=report.student_probs[i, q, e],
                mode="lines+markers",
                line={"color": colors[i]},
                marker={"size": 5},
                name=f"student {layer} (KL {report.kl_edges[i, q, e]:.4f} nats)",
                hovertemplate="%{x:+.2f} px: p=%{y:.4f}<extra>" + layer + "</extra>",
            )
        )
    probs = np.concatenate([report.teacher_probs[q, e][None], report.student_probs[:, q, e]])
    fig.update_xaxes(
        title_text=S.edge_axis(EDGES[e], report.pixel_space), range=mass_range(x, probs)
    )
    fig.update_yaxes(title_text=S.softened_axis(report.temperature))
    fig.update_layout(
        template=TEMPLATE,
        height=500,
        bargap=0,
        title=f"GO-LSD, query {q}, {EDGES[e]} edge: teacher vs students · {report.match_text(q)}"
        + subtitle(report.note),
    )
    return fit_text(fig, 55)


def golsd_kl_figure(report: GOLSDReport, query: int) -> go.Figure:
    """KL(teacher ‖ student) of one query per student layer, stacked by edge (nats)."""
    q = report.check_query(query)
    fig = go.Figure()
    for e, edge in enumerate(EDGES):
        fig.add_trace(
            go.Bar(
                x=report.student_layers,
                y=report.kl_edges[:, q, e],
                name=f"{edge} edge",
                marker_color=S.EDGE_COLORS[edge],
                hovertemplate="%{x}: %{y:.5f} nats<extra>" + edge + "</extra>",
            )
        )
    weights = ", ".join(
        f"{layer}: {report.weights[i, q]:.3f}" for i, layer in enumerate(report.student_layers)
    )
    fig.update_xaxes(title_text="student layer (the teacher is " + report.teacher_layer + ")")
    fig.update_yaxes(title_text=S.kl_axis(report.temperature))
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=480,
        title=f"KL per student layer, query {q} · {report.match_text(q)} · DDF weight {weights}"
        + subtitle(report.note),
    )
    return fit_text(fig, 55)


def golsd_loss_figure(report: GOLSDReport) -> go.Figure:
    """Each student layer's ``loss_ddf`` split into the shares of matched and unmatched
    queries (the two stacked bars sum to the criterion's per-layer DDF loss)."""
    fig = go.Figure()
    for label, mask, color in (
        ("matched queries (weight = IoU)", report.matched, "#2ca02c"),
        ("unmatched queries (weight = teacher confidence)", ~report.matched, "#ff7f0e"),
    ):
        fig.add_trace(
            go.Bar(
                x=report.student_layers,
                y=report.contribution[:, mask].sum(1),
                name=label,
                marker_color=color,
                hovertemplate="%{x}: %{y:.6f}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="student layer (the teacher is " + report.teacher_layer + ")")
    fig.update_yaxes(title_text=S.loss_axis())
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=480,
        title=f"DDF loss per layer: {', '.join(f'{v:.5f}' for v in report.loss_ddf)} "
        f"({int(report.matched.sum())} matched queries, T = {report.temperature:g})"
        + subtitle(report.note),
    )
    return fit_text(fig, 55)


def golsd_weights_figure(
    report: GOLSDReport, top: int = 15, class_names: Sequence[str] | None = None
) -> go.Figure:
    """The ``top`` queries by their share of the DDF loss as a table (``report.to_table``)."""
    rows = report.to_table(top, class_names)
    columns = [c for c in (rows[0] if rows else {"query": None}) if c != "targets"]
    cells = [["" if r[c] is None else r[c] for r in rows] for c in columns]
    fig = go.Figure(
        go.Table(
            header={"values": columns, "fill_color": "#e8e8e8", "align": "left"},
            cells={"values": cells, "align": "left"},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        height=120 + 28 * max(len(rows), 1),
        title=f"DDF weights and KL (nats, T = {report.temperature:g}) of the top {len(rows)} "
        f"queries by loss share" + subtitle(report.note),
    )
    return fit_text(fig, 80)


__all__ = [
    "distribution_figure",
    "golsd_distribution_figure",
    "golsd_kl_figure",
    "golsd_loss_figure",
    "golsd_weights_figure",
    "refinement_figure",
    "weighting_figure",
]


# ----------------------------------------------------------------------------- video tracks
def track_figure(series: TrackSeries) -> go.Figure:
    """One track over time: the σ of each edge distribution (px), the score, and the box's
    width and height (px); frames where the uncertainty jumps are marked in every panel."""
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=(
            "σ of each edge's distribution (last decoder layer)",
            "Score",
            "Box size",
        ),
    )
    t = series.time_s
    hover = [f"frame {i}" for i in series.frame_index]
    colors = S.layer_colors(4)
    for e, edge in enumerate(EDGES):
        fig.add_trace(
            go.Scatter(x=t, y=series.sigma_px[:, e], mode="lines+markers", name=f"σ {edge}",
                       line={"color": colors[e]}, marker={"size": 4}, text=hover),
            row=1, col=1,
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=t, y=series.scores, mode="lines+markers", name="score",
                   line={"color": "#333"}, marker={"size": 4}, text=hover),
        row=2, col=1,
    )  # fmt: skip
    for values, name, dash in (
        (series.widths, "width", "solid"),
        (series.heights, "height", "dot"),
    ):
        fig.add_trace(
            go.Scatter(x=t, y=values, mode="lines", name=name, line={"color": "#0067A5", "dash": dash},
                       text=hover),
            row=3, col=1,
        )  # fmt: skip
    for j in series.jumps:
        fig.add_vline(x=float(t[j]), line={"color": "#BE0032", "width": 1, "dash": "dash"})
    if len(series.jumps):
        fig.add_trace(
            go.Scatter(x=t[series.jumps], y=series.sigma_px[series.jumps].max(axis=1),
                       mode="markers", name="uncertainty jump",
                       marker={"color": "#BE0032", "size": 9, "symbol": "x"},
                       text=[hover[j] for j in series.jumps]),
            row=1, col=1,
        )  # fmt: skip
    fig.update_yaxes(title_text="σ (px)", row=1, col=1)
    fig.update_yaxes(title_text="score", range=[0, 1.02], row=2, col=1)
    fig.update_yaxes(title_text="px", row=3, col=1)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_layout(
        template=TEMPLATE,
        height=620,
        title=f"Track #{series.track_id} · {series.name} · {len(series)} frames · "
        f"{len(series.jumps)} uncertainty jump(s)",
        legend={"orientation": "h", "y": -0.12},
        margin={"t": 80},
    )
    return fig
