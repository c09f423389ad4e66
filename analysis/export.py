"""Static PNG / SVG of the plotly figures, from the same figure objects the app shows
(plotly's own export: kaleido, which drives a local Chromium). There is no second plotting
stack: a figure is defined once, in ``analysis.figures`` or ``analysis.evaluation.figures``.

Each kaleido call starts a browser (about 3 s), so write several figures with one
:func:`save_figures` call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

try:
    import plotly.graph_objects as go
    import plotly.io as pio
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("analysis.export needs plotly: pip install plotly kaleido") from err

FORMATS = ("png", "svg")
WIDTH = 1100  # px, for figures that leave their width to the browser window
HEIGHT = 600  # px, for figures that leave their height to plotly
SCALE = 2  # PNG pixels per layout pixel (sharp on high-DPI screens); SVG ignores it


def _check(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise ValueError(f"save_figure writes {' or '.join(FORMATS)} files, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_figures(
    items: Sequence[tuple[go.Figure, str | os.PathLike]], scale: float = SCALE
) -> list[Path]:
    """Write every ``(figure, path)`` as PNG or SVG (chosen by the suffix) in one kaleido
    session; returns the paths. A figure without a layout width (height) is drawn
    :data:`WIDTH` (:data:`HEIGHT`) px wide (high); PNGs have ``scale`` pixels per layout pixel. Fails with one line naming kaleido and
    Chromium when the export cannot run."""
    paths = [_check(p) for _, p in items]
    if not paths:
        return []
    widths = [fig.layout.width or WIDTH for fig, _ in items]
    heights = [fig.layout.height or HEIGHT for fig, _ in items]
    try:
        pio.write_images(
            [fig for fig, _ in items],
            paths,
            width=widths,
            height=heights,
            scale=scale,
            validate=False,
        )
    except Exception as err:  # kaleido reports a missing browser in several ways
        raise RuntimeError(
            f"static figure export failed ({type(err).__name__}: {err}); it needs kaleido "
            "(pip install kaleido) and Chromium or Chrome (apt-get install chromium, or set "
            "BROWSER_PATH)"
        ) from err
    return paths


def save_figure(fig: go.Figure, path: str | os.PathLike, scale: float = SCALE) -> Path:
    """Write ``fig`` as PNG or SVG (chosen by the suffix); returns the path."""
    return save_figures([(fig, path)], scale)[0]


__all__ = ["FORMATS", "save_figure", "save_figures"]
