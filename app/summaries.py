"""What the endpoints say in words and draw besides the analysis figures: summaries,
picker labels, the model description, the GO-LSD targets image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

import analysis
from app.ground_truth import GroundTruth
from app.models import LoadedModel
from app.paths import FIXTURE_BANNER
from dfine import draw as drawing
from dfine import zoo
from dfine.config import ABLATION_NOTES, FAMILY_NOTES
from dfine.detections import Detections

if TYPE_CHECKING:
    from app.state import Selection

GOLSD_QUERY_CHOICES = 20
"""How many queries the GO-LSD picker offers (the largest contributors to the loss)."""


def detection_label(index: int, dets: Detections) -> str:
    """``"3: person 0.912"``: how pickers name detection ``index`` of ``dets``."""
    return f"{index}: {dets.names[index]} {dets.scores[index]:.3f}"


def speed_text(sel: Selection) -> str:
    speed = sel.result.detections.speed
    parts = " · ".join(f"{k} {speed[k]:.1f} ms" for k in ("preprocess", "inference", "postprocess"))
    parts += (
        " on PyTorch f32, traced: this one pass feeds every analysis tab (the webcam and a "
        "video without tracking run the fastest runtime installed)"
    )
    if sel.cached:
        return (
            f"**Speed** (this server's CPU) of the forward pass reused here: {parts} — this image "
            "was run before with this model and size (by you or at start-up), so nothing was "
            "recomputed"
        )
    return f"**Speed** (this server's CPU, computed now): {parts}"


COCO_SUGGESTION = "dfine_n_coco"
"""The zoo model the app suggests for photos (the smallest COCO model)."""


def model_note(loaded: LoadedModel) -> str:
    """What the selected model knows, shown under the Detect tab's model picker."""
    names = loaded.class_names
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    h, w = loaded.input_size
    text = f"**Knows {len(names)} classes**: {shown} · **trained at** {w}×{h} px."
    if loaded.is_synthetic:
        text += (
            " A demo model of synthetic shapes: try the synthetic examples; for photos load "
            f"a COCO model ({COCO_SUGGESTION} in the list above)."
        )
    return text


def coco_hint() -> str:
    """How to get a COCO model, online or offline (its download size and where to put it)."""
    e = zoo.get(COCO_SUGGESTION)
    path = zoo.cache_dir() / e.filename
    return (
        f"This demo model knows only 8 synthetic shapes, so a photo gives little or nothing. "
        f"For everyday objects pick **{e.name}** (80 COCO classes, AP {e.ap:g}) in the Model "
        f"list: about {e.params_m * 4.1:.0f} MB, downloaded on first use. Offline, download "
        f"{e.url} elsewhere and save it as `{path}`."
    )


def detect_summary(sel: Selection, example: bool = False) -> str:
    """The Detect tab's summary; ``example``: the image is one of the synthetic examples."""
    n, total = len(sel.detections), len(sel.result.detections)
    w, h = sel.result.image_size
    count = f"**{n} detection{'s' if n != 1 else ''}** with score above {sel.threshold:g}"
    if n == sel.max_detections and total > n:
        count += (
            f" (showing the top {n} of {int((sel.result.detections.scores > sel.threshold).sum())})"
        )
    name = Path(str(sel.inputs.image)).name.replace("`", "'")
    lines = [
        f"{count} in `{name}` · image {w}×{h} px · network input {sel.result.size}×{sel.result.size} px"
        + (" (letterboxed: aspect ratio kept, grey padding)" if sel.result.letterbox else "")
        + f" · model: {sel.model.entry.label}",
        speed_text(sel),
    ]
    trained = sel.model.input_size
    if (sel.result.size, sel.result.size) != tuple(trained):
        lines.append(
            f"⚠️ Network input {sel.result.size}×{sel.result.size} px, but this model was trained "
            f"at {trained[1]}×{trained[0]} px: it usually finds less at another size. Choose "
            f"{trained[0]} for its best results."
        )
    if n == 0:
        lines.append("Nothing scored above the threshold: lower it to see weaker detections.")
    if sel.model.is_synthetic and not example:
        lines.append(coco_hint())
    if sel.model.entry.is_fixture:
        lines.append(f"⚠️ {FIXTURE_BANNER}.")
    return "\n\n".join(lines)


def distribution_title(sel: Selection, index: int) -> str:
    dets = sel.detections
    return (
        f"Edge distributions of detection {index} ({dets.names[index]}, score "
        f"{dets.scores[index]:.3f}, query {int(sel.queries[index])}), every decoder layer"
    )


def weighting_summary(
    curve: analysis.WeightingCurve, own: analysis.WeightingCurve, loaded: LoadedModel
) -> str:
    same = (curve.reg_max, curve.up, curve.reg_scale) == (own.reg_max, own.up, own.reg_scale)
    return (
        f"**Your parameters**: reg_max = {curve.reg_max}, up = {curve.up:g}, reg_scale = "
        f"{curve.reg_scale:g} → range ±{2 * curve.up * curve.reg_scale:g} W units "
        f"(±{2 * curve.up:g} × box size), step ratio {curve.step:.4f}, smallest step "
        f"{curve.min_spacing:.4f}, largest {curve.max_spacing:.4f} "
        f"({curve.spacing_ratio:.0f}× the smallest).\n\n"
        f"**The model** ({loaded.entry.label}): reg_max = {own.reg_max}, up = {own.up:g}, "
        f"reg_scale = {own.reg_scale:g} (red circles)"
        + (" — the same as your parameters." if same else ".")
    )


def query_label(report: analysis.GOLSDReport, q: int, names: Sequence[str]) -> str:
    t = int(report.union_target[q])
    if t >= 0:
        label = int(report.target_labels[t])
        name = names[label] if 0 <= label < len(names) else f"class {label}"
        match = f"matched to target {t} ({name})"
    else:
        match = "unmatched"
    return f"query {q}: {match}, loss share {report.contribution[:, q].sum():.3g}"


def query_choices(report: analysis.GOLSDReport, q: int, names: Sequence[str]) -> list[str]:
    ranked = [int(i) for i in report.ranked_queries()[:GOLSD_QUERY_CHOICES]]
    if q not in ranked:
        ranked.append(q)
    return [query_label(report, i, names) for i in ranked]


def golsd_summary(report: analysis.GOLSDReport, sel: Selection, truth: GroundTruth | None) -> str:
    source = (
        f"annotations of the synthetic example {truth.file_name}"
        if truth is not None
        else f"the {len(report.target_labels)} detections above {sel.threshold:g} shown in the "
        "Detect tab"
    )
    losses = ", ".join(
        f"{layer}: {v:.5f}" for layer, v in zip(report.student_layers, report.loss_ddf)
    )
    return (
        f"### {report.note}\n"
        f"Targets: {source} ({len(report.target_labels)} boxes) · "
        f"{int(report.matched.sum())} of {report.num_queries} queries matched (union of the "
        f"matches of {len(report.match_sets)} output sets) · teacher: {report.teacher_layer} · "
        f"temperature T = {report.temperature:g}\n\n"
        f"DDF loss per student layer (before the loss weight): {losses}"
    )


def compact(fig: go.Figure) -> go.Figure:
    """Smaller titles, for figures shown side by side."""
    return fig.update_layout(title_font_size=12)


def targets_image(
    sel: Selection, report: analysis.GOLSDReport, names: Sequence[str], q: int
) -> Image.Image:
    """The targets drawn on the image, and the chosen query's final box in white."""
    n = len(report.target_labels)
    targets = Detections(
        boxes=report.target_boxes_xyxy.reshape(-1, 4),
        scores=np.ones(n, dtype=np.float32),
        labels=report.target_labels,
        class_names=tuple(names),
        image_size=sel.result.image_size,
        image=sel.result.image,
    )
    canvas = targets.plot(show_scores=False)
    box = analysis.refinement(sel.result.trace, [q], sel.result.image_size).boxes_xyxy[-1, 0]
    draw = ImageDraw.Draw(canvas)
    x1, y1, x2, y2 = (float(v) for v in box)
    rect = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    lw = max(round(sum(canvas.size) / 2 * 0.004), 2)
    draw.rectangle(rect, outline=(0, 0, 0), width=lw + 2)
    draw.rectangle(rect, outline=(255, 255, 255), width=lw)
    fnt = drawing.font(drawing.sizes_for(*canvas.size)[1])
    drawing.tag(draw, (rect[0], rect[3]), f"query {q}", (0, 0, 0), fnt)
    return canvas


def model_markdown(loaded: LoadedModel) -> str:
    """Size, classes, parameter count and input size of a loaded model, as markdown."""
    cfg = loaded.model.config
    h, w = loaded.input_size
    names = loaded.class_names
    shown = ", ".join(names[:30]) + (f", … ({len(names) - 30} more)" if len(names) > 30 else "")
    size = f"{loaded.file_bytes / 2**20:.1f} MiB" if loaded.file_bytes else "unknown"
    decoder = cfg.decoder
    rows = [
        ("Model", loaded.entry.label),
        ("Key (the API's model value)", f"`{loaded.entry.key}`"),
        ("Architecture", f"D-FINE-{cfg.size.upper()}, {decoder.num_layers} decoder layers"),
        ("Family", f"`{cfg.family}`: {FAMILY_NOTES[cfg.family]}"),
        ("Parameters", f"{loaded.num_parameters / 1e6:.2f} M ({loaded.num_parameters:,})"),
        ("Input size", f"{w}×{h} px (the model's own; any multiple of 32 works)"),
        ("FDR", f"reg_max = {decoder.reg_max}, so {decoder.reg_max + 1} bins per edge")
        if decoder.distributions
        else ("FDR", "none: RT-DETR-style box deltas, no distributions"),
        ("Ablation", f"`{decoder.ablation}` ({ABLATION_NOTES[decoder.ablation]})"),
        ("Checkpoint file", size),
        ("Classes", f"{loaded.num_classes}: {shown}"),
    ]
    text = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    if loaded.entry.is_fixture:
        text = f"⚠️ **{FIXTURE_BANNER}.**\n\n" + text
    return text
