"""Plotly figures of where the decoder looks (:mod:`analysis.attention_view`): the sampling
points over the image, the per-level attention heat maps, the encoder's objectness with the
selected queries, and the self-attention neighbours. Every axis is in pixels of the original
image (y down, as the image); the image is drawn underneath, scaled down to at most
:data:`BACKGROUND_SIDE` pixels."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

try:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("analysis.attention_figures needs plotly: pip install plotly") from err

from analysis import _style as S
from analysis._common import check_layer, class_name
from analysis.attention_view import AttentionView, QueryOrigin, SelfAttentionNeighbours
from analysis.figures import TEMPLATE, fit_text

BACKGROUND_SIDE = 960
"""The image under a figure is sent at most this many pixels on its longer side."""

# one colour per stride, the same in every model (bright: they sit on photos)
STRIDE_COLORS = {4: "#ffffff", 8: "#00e5ff", 16: "#ffd600", 32: "#ff3d9a", 64: "#ff8a00"}
HEAT_SCALE = [
    [0.0, "rgba(255, 240, 0, 0)"],
    [0.02, "rgba(255, 220, 0, 0.35)"],
    [0.4, "rgba(255, 120, 0, 0.75)"],
    [1.0, "rgba(200, 0, 40, 0.95)"],
]
OBJECTNESS_SCALE = [
    [0.0, "rgba(68, 1, 84, 0.05)"],
    [0.3, "rgba(59, 82, 139, 0.45)"],
    [0.6, "rgba(33, 145, 140, 0.7)"],
    [1.0, "rgba(253, 231, 37, 0.9)"],
]
WEIGHT_NOTE = "marker area ∝ attention weight"
# the legend on grey: white boxes and markers (drawn for photos) stay visible in it
DARK_LEGEND = {
    "orientation": "h", "x": 0, "bgcolor": "#5f6368", "font": {"color": "#ffffff"},
}  # fmt: skip


def stride_color(stride: int) -> str:
    return STRIDE_COLORS.get(int(stride), "#ffffff")


def background(image: Image.Image | np.ndarray, image_size: tuple[int, int]) -> dict:
    """A plotly layout image of ``image`` (RGB, of ``image_size``) as a JPEG data URI, placed
    over ``(0, 0)``–``(width, height)`` of axes ``x``/``y`` (y down)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if pil.size != tuple(image_size):
        raise ValueError(f"the image is {pil.size} but the view is of a {image_size} image")
    pil = pil.convert("RGB")
    pil.thumbnail((BACKGROUND_SIDE, BACKGROUND_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=85)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    w, h = image_size
    return {
        "source": uri, "x": 0, "y": 0, "sizex": w, "sizey": h, "xanchor": "left",
        "yanchor": "top", "sizing": "stretch", "layer": "below",
    }  # fmt: skip


def _add_background(fig: go.Figure, bg: dict, axis: int = 1) -> None:
    suffix = "" if axis == 1 else str(axis)
    fig.add_layout_image({**bg, "xref": f"x{suffix}", "yref": f"y{suffix}"})


def _image_axes(fig: go.Figure, window: Sequence[float], axis: int = 1, title: bool = True) -> None:
    """Axis ``axis`` shows ``window`` ``(x1, y1, x2, y2)`` in pixels, y down, equal scale."""
    x1, y1, x2, y2 = (float(v) for v in window)
    suffix = "" if axis == 1 else str(axis)
    fig.layout[f"xaxis{suffix}"].update(
        range=[x1, x2], showgrid=False, zeroline=False, constrain="domain",
        title_text="x (px)" if title else None,
    )  # fmt: skip
    fig.layout[f"yaxis{suffix}"].update(
        range=[y2, y1], showgrid=False, zeroline=False, scaleanchor=f"x{suffix}",
        scaleratio=1, constrain="domain", title_text="y (px)" if title else None,
    )  # fmt: skip


def _lift_subplot_titles(fig: go.Figure) -> go.Figure:
    """Subplot titles a little higher, clear of a tick label at the image's top edge, and the
    top margin as much larger (call after ``fit_text``, which sets it)."""
    subplot = {"yanchor": "bottom", "xref": "paper"}
    fig.update_annotations(yshift=12, selector=subplot)
    title_lines = 1 + (fig.layout.title.text or "").count("<br>")
    sub_lines = max(
        (1 + (a.text or "").count("<br>") for a in fig.select_annotations(selector=subplot)),
        default=0,
    )
    # plotly puts the title's first baseline at the middle of the top margin and the further
    # lines below it: the margin's lower half holds those lines (about 19 px each), the lifted
    # subplot titles (about 18 px a line, 12 px lift) and a gap
    need = 2 * (19 * (title_lines - 1) + 18 * sub_lines + 12 + 16) + 24
    fig.update_layout(margin={"t": max(fig.layout.margin.t + 14, need)})
    return fig


def _box_trace(box: Sequence[float], name: str, color: str, dash: str = "solid", width=2.5):
    x1, y1, x2, y2 = (float(v) for v in box)
    return go.Scatter(
        x=[x1, x2, x2, x1, x1],
        y=[y1, y1, y2, y2, y1],
        mode="lines",
        line={"color": color, "dash": dash, "width": width},
        name=name,
        hovertemplate=f"{name}<br>({x1:.0f}, {y1:.0f})–({x2:.0f}, {y2:.0f}) px<extra></extra>",
    )


def window(
    view: AttentionView, layer: int, heads: Sequence[int] | None = None, margin: float = 0.12
) -> tuple[float, float, float, float]:
    """The part of the image a per-layer figure shows: the layer's boxes and the chosen heads'
    points, plus ``margin`` of that size on each side (at least 6 % of the image), kept
    within 5 % around the image."""
    lay = check_layer(layer, view.num_layers)
    pts = view.points_px[lay, view.check_heads(heads)].reshape(-1, 2)
    boxes = np.stack([view.reference_xyxy[lay], view.boxes_xyxy[lay]]).reshape(-1, 2)
    return _fit(np.concatenate([pts, boxes]), view.image_size, margin)


def _fit(
    xy: np.ndarray, image_size: tuple[int, int], margin: float
) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` around points ``xy [N, 2]``: ``margin`` of their extent on each side
    (at least 6 % of the image), within 5 % around the image."""
    lo, hi = xy.min(0), xy.max(0)
    size = np.array(image_size, dtype=np.float64)
    pad = np.maximum((hi - lo) * margin, 0.06 * size)
    lo, hi = np.maximum(lo - pad, -0.05 * size), np.minimum(hi + pad, 1.05 * size)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


# ----------------------------------------------------------------------------- sampling points
def attention_points_figure(
    view: AttentionView,
    image: Image.Image | np.ndarray,
    layer: int = -1,
    heads: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """The layer's sampling points of the chosen ``heads`` (default all) over the image, one
    colour per feature level (stride), marker area proportional to the point's weight; the box
    the layer sampled around (dashed) and the box it output (solid)."""
    lay = check_layer(layer, view.num_layers)
    picked = view.check_heads(heads)
    fig = go.Figure()
    _add_background(fig, background(image, view.image_size))
    fig.add_trace(_box_trace(view.reference_xyxy[lay], "input box (sampled around)", "#ffffff",
                             "dash", 2))  # fmt: skip
    fig.add_trace(_box_trace(view.boxes_xyxy[lay], f"{view.layers[lay]} output box", "#00c853"))
    wmax = float(view.weights[lay, picked].max()) or 1.0
    head_ix, point_ix = np.meshgrid(picked, np.arange(view.point_level.size), indexing="ij")
    for v, stride in enumerate(view.strides):
        mask = view.point_level[point_ix] == v
        w = view.weights[lay, head_ix[mask], point_ix[mask]]
        xy = view.points_px[lay, head_ix[mask], point_ix[mask]]
        share = view.level_shares(lay, picked)[v]
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                marker={
                    "size": 5 + 22 * np.sqrt(w / wmax),
                    "color": stride_color(stride),
                    "opacity": 0.85,
                    "line": {"color": "#111111", "width": 1},
                },
                name=f"stride {stride} ({share:.0%} of the weight)",
                customdata=np.stack([head_ix[mask] + 1, w], -1),
                hovertemplate="head %{customdata[0]:.0f}, weight %{customdata[1]:.4f}<br>"
                "(%{x:.1f}, %{y:.1f}) px<extra>stride " + str(stride) + "</extra>",
            )
        )
    _image_axes(fig, window(view, lay, picked))
    shown = "all heads" if picked.size == view.num_heads else _heads_text(picked)
    fig.update_layout(
        template=TEMPLATE,
        height=560,
        title=title
        or f"Where query {view.query} sampled at {view.layers[lay]} of {view.num_layers} · "
        f"{shown} · {WEIGHT_NOTE}",
        legend={**DARK_LEGEND, "y": -0.14},
        margin={"l": 60, "r": 20, "b": 90},
    )
    return fit_text(fig, 60)


def _heads_text(heads: np.ndarray) -> str:
    return "head" + ("s " if heads.size > 1 else " ") + ", ".join(str(h + 1) for h in heads)


# ----------------------------------------------------------------------------- heat maps
def attention_heat_figure(
    view: AttentionView,
    image: Image.Image | np.ndarray,
    layer: int = -1,
    heads: Sequence[int] | None = None,
) -> go.Figure:
    """One panel per feature level: the share of the layer's attention mass (mean over the
    chosen heads) that fell on each cell of the level's grid, over the image, with the layer's
    output box; one colour scale for every level."""
    lay = check_layer(layer, view.num_layers)
    picked = view.check_heads(heads)
    maps = [view.heat_map(lay, v, picked) for v in range(len(view.strides))]
    zmax = max(float(m.max()) for m in maps) or 1.0
    titles = [f"stride {s}: {m.sum():.0%} of the mass" for s, m in zip(view.strides, maps)]
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=titles, horizontal_spacing=0.06)
    bg = background(image, view.image_size)
    win = window(view, lay, picked)
    for v, heat in enumerate(maps):
        fig.add_trace(
            go.Heatmap(
                x=view.cell_x[v],
                y=view.cell_y[v],
                z=heat,
                zmin=0,
                zmax=zmax,
                colorscale=HEAT_SCALE,
                showscale=v == 0,
                colorbar={"title": {"text": "share of the mass", "side": "right"}, "len": 0.9},
                hovertemplate="cell (%{x:.0f}, %{y:.0f}) px: %{z:.2%}<extra>stride "
                + str(view.strides[v])
                + "</extra>",
            ),
            row=1,
            col=v + 1,
        )
        box = _box_trace(view.boxes_xyxy[lay], f"{view.layers[lay]} output box", "#00c853", width=2)
        box.showlegend = v == 0
        fig.add_trace(box, row=1, col=v + 1)
        _add_background(fig, bg, v + 1)
        _image_axes(fig, win, v + 1, title=v == 0)
    shown = "all heads" if picked.size == view.num_heads else _heads_text(picked)
    fig.update_layout(
        template=TEMPLATE,
        height=440,
        title=f"Attention mass per feature cell, query {view.query}, {view.layers[lay]} · {shown}",
        showlegend=False,
        margin={"l": 60, "r": 20},
    )
    return _lift_subplot_titles(fit_text(fig, 90))


# ----------------------------------------------------------------------------- query origin
def query_origin_figure(origin: QueryOrigin, image: Image.Image | np.ndarray) -> go.Figure:
    """One panel per feature level: the encoder's objectness over the image, the positions the
    top-k selection kept (open circles), this query's position (star) and its initial box b0
    (dashed)."""
    n = len(origin.strides)
    counts = np.bincount(origin.selected_level, minlength=n)
    titles = [
        f"stride {s}: {c} of {origin.num_selected} queries" for s, c in zip(origin.strides, counts)
    ]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.06)
    bg = background(image, origin.image_size)
    w, h = origin.image_size
    for v in range(n):
        fig.add_trace(
            go.Heatmap(
                x=origin.cell_x[v],
                y=origin.cell_y[v],
                z=origin.objectness[v],
                zmin=0,
                zmax=1,
                colorscale=OBJECTNESS_SCALE,
                showscale=v == 0,
                colorbar={"title": {"text": "objectness", "side": "right"}, "len": 0.9},
                hovertemplate="(%{x:.0f}, %{y:.0f}) px: %{z:.3f}<extra>stride "
                + str(origin.strides[v])
                + "</extra>",
            ),
            row=1,
            col=v + 1,
        )
        kept = origin.selected_level == v
        fig.add_trace(
            go.Scatter(
                x=origin.selected_px[kept, 0],
                y=origin.selected_px[kept, 1],
                mode="markers",
                marker={"symbol": "circle-open", "size": 6, "color": "#ffffff",
                        "line": {"width": 1.5}},
                name="selected positions",
                showlegend=v == 0,
                customdata=np.flatnonzero(kept),
                hovertemplate="query %{customdata}<extra>selected</extra>",
            ),
            row=1,
            col=v + 1,
        )  # fmt: skip
        b0 = _box_trace(origin.init_box_xyxy, f"b0 of query {origin.query}", "#ff1744", "dash",
                        2.5 if v == origin.level else 1.2)  # fmt: skip
        b0.showlegend = v == 0
        fig.add_trace(b0, row=1, col=v + 1)
        _add_background(fig, bg, v + 1)
        _image_axes(fig, (0, 0, w, h), v + 1, title=v == 0)
    x, y = origin.selected_px[origin.query]
    fig.add_trace(
        go.Scatter(
            x=[x], y=[y], mode="markers",
            marker={"symbol": "star", "size": 18, "color": "#ff1744",
                    "line": {"color": "#ffffff", "width": 1.5}},
            name=f"query {origin.query}'s position",
            hovertemplate=f"query {origin.query}: objectness {origin.objectness_value:.3f}"
            "<extra></extra>",
        ),
        row=1,
        col=origin.level + 1,
    )  # fmt: skip
    row, col = origin.cell
    fig.update_layout(
        template=TEMPLATE,
        height=460,
        title=f"Where query {origin.query} came from: stride {origin.strides[origin.level]}, "
        f"cell (row {row}, column {col}), objectness {origin.objectness_value:.3f} · rank "
        f"{origin.query + 1} of the encoder's top {origin.num_selected}",
        legend={**DARK_LEGEND, "y": -0.16},
        margin={"l": 60, "r": 20, "b": 80},
    )
    return _lift_subplot_titles(fit_text(fig, 90))


# ----------------------------------------------------------------------------- self-attention
def self_attention_figure(
    nb: SelfAttentionNeighbours,
    image: Image.Image | np.ndarray,
    layer: int = -1,
    class_names: Sequence[str] | None = None,
) -> go.Figure:
    """Left: the self-attention weights of the queries this query attends to most at
    ``layer``, each with its class and score as the layer saw it → its final score, and the IoU
    of its box with this query's. Right: their boxes (one colour each, as the bars) and this
    query's box (white), as the layer saw them."""
    lay = check_layer(layer, nb.num_layers)
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.08,
        subplot_titles=("self-attention weight (mean over heads)", "boxes as the layer saw them"),
    )  # fmt: skip
    k = nb.neighbours.shape[1]
    labels = []
    for j in range(k):
        q = int(nb.neighbours[lay, j])
        name = class_name(class_names, int(nb.labels[lay, j]))
        labels.append(
            f"q{q} {name}<br>{nb.scores[lay, j]:.2f} → {nb.final_scores[lay, j]:.2f} · "
            f"IoU {nb.iou[lay, j]:.2f}"
        )
    fig.add_trace(
        go.Bar(
            y=labels,
            x=nb.weights[lay],
            orientation="h",
            marker_color=[S.detection_color(j) for j in range(k)],
            text=[f"{w:.3f}" for w in nb.weights[lay]],
            textposition="auto",
            hovertemplate="%{y}: weight %{x:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    _add_background(fig, background(image, nb.image_size), 2)
    for j in reversed(range(k)):  # weakest first: the strongest is drawn on top
        q = int(nb.neighbours[lay, j])
        trace = _box_trace(nb.boxes_xyxy[lay, j], f"query {q}", S.detection_color(j), width=2)
        trace.hovertemplate = f"{labels[j].replace('<br>', ': ')}, weight {nb.weights[lay, j]:.3f}"
        trace.hovertemplate += "<extra></extra>"
        fig.add_trace(trace, row=1, col=2)
    fig.add_trace(
        _box_trace(nb.query_xyxy[lay], f"query {nb.query} (this one)", "#ffffff", width=3.5),
        row=1,
        col=2,
    )
    xy = np.concatenate([nb.boxes_xyxy[lay].reshape(-1, 2), nb.query_xyxy[lay].reshape(-1, 2)])
    _image_axes(fig, _fit(xy, nb.image_size, 0.1), 2)
    fig.update_yaxes(autorange="reversed", automargin=True, row=1, col=1)
    fig.update_xaxes(title_text="weight (0–1)", row=1, col=1)
    fig.update_layout(
        template=TEMPLATE,
        height=480,
        showlegend=False,
        title=f"Why no duplicate: the {k} queries query {nb.query} attends to most at "
        f"{nb.layers[lay]} (itself: {nb.self_weight[lay]:.3f}); class score as the layer saw "
        "it → final score",
        margin={"l": 60, "r": 20},
    )
    return _lift_subplot_titles(fit_text(fig, 90))


__all__ = [
    "attention_heat_figure",
    "attention_points_figure",
    "query_origin_figure",
    "self_attention_figure",
]
