"""Static PNG / SVG of the plotly figures, from the same figure objects the app shows
(plotly's own export: kaleido, which drives a local Chromium). There is no second plotting
stack: a figure is defined once, in ``analysis.figures`` or ``analysis.evaluation.figures``.

The browser is optional: :func:`dfine.optional.chromium_path` finds it once (or is told there
is none, ``DFINE_CHROMIUM=none``) and kaleido runs exactly that one. Without it
:func:`save_figures` raises :class:`~dfine.errors.MissingDependencyError` (one line: why, and
how to get one) before anything is started; :func:`save_html` needs no browser.

Each kaleido call starts a browser (about 3 s), so write several figures with one
:func:`save_figures` call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dfine.errors import InvalidArgumentError, missing
from dfine.optional import require_chromium

try:
    import plotly.graph_objects as go
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing("analysis.export", "plotly") from err

FORMATS = ("png", "svg")
WIDTH = 1100  # px, for figures that leave their width to the browser window
HEIGHT = 600  # px, for figures that leave their height to plotly
SCALE = 2  # PNG pixels per layout pixel (sharp on high-DPI screens); SVG ignores it


def _check(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise InvalidArgumentError(
            f"save_figure writes {' or '.join(FORMATS)} files, got {path.name!r}"
        )
    return path


def save_figures(
    items: Sequence[tuple[go.Figure, str | os.PathLike]], scale: float = SCALE
) -> list[Path]:
    """Write every ``(figure, path)`` as PNG or SVG (chosen by the suffix) in one kaleido
    session; returns the paths. A figure without a layout width (height) is drawn
    :data:`WIDTH` (:data:`HEIGHT`) px wide (high); PNGs have ``scale`` pixels per layout pixel.
    Without kaleido or a browser: :class:`~dfine.errors.MissingDependencyError`, and nothing
    is written."""
    paths = [_check(p) for _, p in items]
    if not paths:
        return []
    browser = require_chromium("PNG/SVG figure export")
    try:
        import kaleido
    except ImportError as err:
        raise missing("PNG/SVG figure export", "kaleido") from err
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    specs = [
        {
            "fig": fig.to_dict(),
            "path": path,
            "opts": {
                "format": path.suffix.lower().lstrip("."),
                "width": fig.layout.width or WIDTH,
                "height": fig.layout.height or HEIGHT,
                "scale": scale,
            },
        }
        for (fig, _), path in zip(items, paths)
    ]
    # the browser found above, and no MathJax from its CDN (no figure here uses LaTeX)
    kaleido.write_fig_from_object_sync(specs, kopts={"path": browser, "mathjax": False})
    return paths


def save_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a self-contained interactive HTML page (plotly.js inline: offline, no
    browser needed to write it); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def save_figure(fig: go.Figure, path: str | os.PathLike, scale: float = SCALE) -> Path:
    """Write ``fig`` as PNG or SVG (chosen by the suffix); returns the path."""
    return save_figures([(fig, path)], scale)[0]


__all__ = ["FORMATS", "save_figure", "save_figures", "save_html"]
