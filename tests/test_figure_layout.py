"""The figures' layout rules (issue 25): every figure sizes to its panel (no fixed width),
titles wrap for the narrowest panel, legends lie in rows under the plot, a log axis labels
each tick with the whole number it stands for, subtitles are readable."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import pytest

from analysis import weighting_curve
from analysis.evaluation import figures as eval_figures
from analysis.figures import TITLE_CHARS, log_ticks, responsive, subtitle, weighting_figure, wrap


def _shown(line: str) -> str:
    return re.sub(r"<[^>]*>", "", line)


def test_responsive_fills_the_panel_wraps_the_title_and_puts_the_legend_below():
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], name="a long legend entry " * 3))
    title = "Edge uncertainty: σ of the distribution vs real error (matched boxes, IoU ≥ 0.5)"
    fig.update_layout(width=760, title=title + subtitle("ground truth: annotations of an image"))
    responsive(fig)
    assert fig.layout.width is None and fig.layout.autosize is True
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) > 2 and all(len(_shown(line)) <= TITLE_CHARS for line in lines)
    assert " ".join(_shown(line) for line in lines).startswith(title)
    assert "<span style='font-size:12px;color:#555'>ground truth:" in fig.layout.title.text
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.yref == "container"


def test_evaluation_figures_have_no_fixed_width():
    assert "width" not in eval_figures.LAYOUT
    assert set(eval_figures.LABELS) == set(eval_figures.FIGURES)  # a real label each


def test_wrap_never_breaks_inside_a_tag():
    text = "word " * 5 + "<span style='font-size:12px'>small words here</span>"
    out = wrap(text, 12)
    assert "<span style='font-size:12px'>" in out
    assert all(len(_shown(line)) <= 12 for line in out.split("<br>"))


def test_log_ticks_are_whole_numbers():
    assert log_ticks(0.019, 0.5) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    assert log_ticks(0.001, 30) == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # decades only
    with pytest.raises(ValueError):
        log_ticks(0.0, 1.0)
    fig = weighting_figure(weighting_curve(32, 0.5, 4))
    axis = fig.layout.yaxis2
    assert axis.type == "log" and list(axis.ticktext) == [f"{v:g}" for v in axis.tickvals]
    assert "0.02" in axis.ticktext and "0.5" in axis.ticktext  # not "2" and "5"
