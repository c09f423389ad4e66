"""Write a :class:`DatasetReport` to a folder: ``metrics.json``, error-gallery thumbnails
(``gallery/``), an interactive ``index.html`` that works offline (plotly.js embedded once; no
network access, no browser needed to write it) and, when a Chromium is there
(:func:`dfine.optional.chromium_path`), every figure as PNG and SVG (``figures/``, from the
same plotly objects the app shows, through kaleido). Without one the PNG/SVG are skipped and
:attr:`ReportFiles.skipped` says why and how to get them."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import plotly.offline

from analysis.evaluation.errors import GALLERY_KINDS
from analysis.evaluation.figures import accuracy_latency_figure, all_figures
from analysis.evaluation.report import DatasetReport
from analysis.evaluation.thumbnails import caption, thumbnail
from analysis.export import FORMATS, save_figures
from dfine.budget import BudgetSweep
from dfine.errors import MissingDependencyError
from dfine.files import atomic_write


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: ``figures`` is None when the PNG/SVG were skipped,
    and ``skipped`` then says why and how to get them (one line)."""

    metrics: Path
    index: Path
    figures: Path | None
    skipped: str | None = None


def write_static(figures: dict, folder: Path) -> list[Path]:
    """PNG and SVG of every figure (one kaleido session for all)."""
    items = [(fig, folder / f"{name}.{ext}") for name, fig in figures.items() for ext in FORMATS]
    return save_figures(items, scale=1)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_thumbnails(report: DatasetReport, folder: Path) -> dict[str, list[tuple[str, str]]]:
    """Thumbnail PNGs of the gallery; kind → [(file name, caption)]."""
    files = report.info.get("files") or []
    names = report.info.get("class_names")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple[str, str]]] = {}
    for kind in GALLERY_KINDS:
        out[kind] = []
        for i, item in enumerate(report.gallery.get(kind, [])):
            if item.index >= len(files):
                continue
            name = f"{kind.replace(' ', '_')}_{i:02d}.png"
            thumbnail(item, files[item.index], names).save(folder / name)
            cap = f"{caption(item, names)} · {Path(files[item.index]).name}"
            out[kind].append((name, cap))
    return out


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f3f3f3}.fig{margin:10px 0 28px}
.gal{display:flex;flex-wrap:wrap;gap:8px}.gal figure{margin:0;width:200px;font-size:11px}
.gal img{max-width:192px;border:1px solid #ccc}"""


def write_report(
    report: DatasetReport,
    out_dir: str | os.PathLike,
    static: bool = True,
    budget: BudgetSweep | None = None,
) -> ReportFiles:
    """Write the report folder; returns what was written. ``static``: PNG and SVG of every
    figure too, when kaleido and a browser are there (else skipped, with the reason).
    ``budget``: the accuracy–latency sweep over decoder depth × queries (``metrics.json``'s
    ``budget_sweep``, a table and the ``accuracy_latency`` figure)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    if budget is not None:
        data["budget_sweep"] = budget.to_dict()
    metrics_path = atomic_write(
        out / "metrics.json", lambda p: p.write_text(json.dumps(data, indent=1))
    )
    figures = all_figures(report)
    figures_dir: Path | None = None
    skipped = None
    if budget is not None:
        figures["accuracy_latency"] = accuracy_latency_figure(budget)
    if static:
        try:
            write_static(figures, out / "figures")
            figures_dir = out / "figures"
        except MissingDependencyError as err:  # no browser / kaleido: the rest still works
            skipped = f"PNG/SVG figures skipped ({err})"
    thumbs = write_thumbnails(report, out / "gallery")
    m = report.metrics
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dfine dataset report</title>",
        f"<style>{CSS}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
        "<h1>Dataset report</h1>",
        f"<p>{html.escape(str(report.info.get('weights', '')))} on "
        f"{html.escape(str(report.info.get('annotations', '')))}: "
        f"{report.info.get('images')} images. AP {m['AP']:.4f} · AP50 {m['AP50']:.4f} · "
        f"AP75 {m['AP75']:.4f}</p>",
        "<h2>COCO metrics</h2>",
        _table([m], list(m)),
    ]
    if report.stages:
        parts += [
            "<h2>Per-stage AP</h2>",
            _table(
                [s.to_dict() for s in report.stages],
                ["name", "AP", "AP50", "AP75", "AP_final_scores", "AP50_final_scores",
                 "AP75_final_scores", "mean_iou"],
            ),
        ]  # fmt: skip
    if report.calibration:
        parts += [
            "<h2>Edge-uncertainty calibration</h2>",
            _table(
                [c.to_dict() for c in report.calibration],
                ["stage", "edges", "coverage_1sigma", "coverage_2sigma", "spearman",
                 "mean_abs_error_px", "mean_sigma_px", "mean_abs_error_units"],
            ),
        ]  # fmt: skip
    if budget is not None:
        parts += [
            f"<h2>Accuracy vs latency: decoder depth × queries ({budget.images} images, "
            f"{budget.threads} threads; ★ Pareto front)</h2>",
            _table(
                [{**asdict(p), "pareto": "★" if p.pareto else ""} for p in budget.points],
                ["runtime", "decoder_layers", "num_queries", "AP", "AP50", "AP75", "median_ms",
                 "pareto"],
            ),
        ]  # fmt: skip
    parts += [
        "<h2>Per class</h2>",
        _table(
            [c.to_dict() for c in report.per_class],
            ["name", "AP", "AP50", "AP75", "APs", "APm", "APl", "gt_count", "det_count",
             "best_threshold", "best_f1", "best_precision", "best_recall"],
        ),
        "<h2>Figures</h2>",
    ]  # fmt: skip
    for name, fig in figures.items():
        links = (
            f" (<a href='figures/{name}.png'>PNG</a>, <a href='figures/{name}.svg'>SVG</a>)"
            if figures_dir is not None
            else ""
        )
        parts.append(
            f"<div class='fig' id='{name}'>{fig.to_html(full_html=False, include_plotlyjs=False)}"
            f"<div>{html.escape(name)}{links}</div></div>"
        )
    parts.append("<h2>Error gallery</h2>")
    for kind, items in thumbs.items():
        parts.append(f"<h3>{html.escape(kind)} ({len(items)})</h3><div class='gal'>")
        parts += [
            f"<figure><a href='gallery/{f}'><img src='gallery/{f}' alt='{html.escape(c)}'></a>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>"
            for f, c in items
        ]
        parts.append("</div>")
    parts.append("</body></html>")
    text = "".join(parts)
    index = atomic_write(out / "index.html", lambda p: p.write_text(text, encoding="utf-8"))
    return ReportFiles(metrics_path, index, figures_dir, skipped)
