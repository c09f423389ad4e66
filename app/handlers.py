"""One plain function per endpoint: what each tab's button does, testable without a server.

Every handler takes the values of the UI's input components and returns the values of its
outputs; any problem becomes a readable ``gr.Error`` (see :mod:`app.errors`). The image
endpoints share their first five inputs, the Detect tab's controls:
``image`` (a file path), ``threshold`` (0–1), ``size`` (network input, px), ``model`` (a key of
the :class:`~app.models.ModelStore`) and ``max_detections``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image

import analysis
from analysis import figures
from app import tables
from app.checks import (
    check_image,
    check_max_detections,
    check_sigma,
    check_size,
    check_stage,
    check_threshold,
    first_int,
    number,
)
from app.errors import UserError, user_errors
from app.files import OutputDir
from app.ground_truth import AnnotatedExamples, GroundTruth
from app.models import DEFAULT_KEY, LoadedModel, ModelStore
from app.results import ResultCache, Selection, TraceResult, file_digest
from app.summaries import (
    compact,
    detect_summary,
    detection_label,
    distribution_title,
    golsd_summary,
    model_markdown,
    query_choices,
    query_label,
    targets_image,
    weighting_summary,
)
from dfine.io import ImageLoadError

DEFAULT_REFINEMENT_SELECTION = 5
FIGURE_FORMATS = ("png", "svg")
TARGET_MODES = ("auto", "annotations", "pseudo")


# --------------------------------------------------------------------------- input checks
@dataclass(frozen=True)
class ModelW:
    """What ``analysis.model_weighting`` reads from a trace, taken from a model instead."""

    project: torch.Tensor
    reg_max: int
    up: float
    reg_scale: float

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelW:
        decoder = loaded.model.decoder
        project = decoder.project().detach().cpu()
        return cls(project, project.shape[0] - 1, float(decoder.up), float(decoder.reg_scale))


class Handlers:
    """The app's endpoints over one shared model store, result cache and examples."""

    def __init__(
        self,
        store: ModelStore | None = None,
        cache: ResultCache | None = None,
        examples: AnnotatedExamples | None = None,
        outputs: OutputDir | None = None,
    ) -> None:
        self.store = store or ModelStore()
        self.cache = cache or ResultCache()
        self.examples = examples if examples is not None else AnnotatedExamples()
        self.outputs = outputs or OutputDir()
        self._reports: OrderedDict[tuple, analysis.GOLSDReport] = OrderedDict()
        self._reports_lock = threading.Lock()

    # ----------------------------------------------------------------------- shared step
    def select(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        progress: gr.Progress | None = None,
    ) -> Selection:
        """Check the shared inputs, run (or reuse) the forward pass, apply the threshold."""
        path = check_image(image)
        threshold = check_threshold(threshold)
        size = check_size(size)
        max_detections = check_max_detections(max_detections)
        entry = self.store.entry(model)
        digest = file_digest(path)

        def compute() -> TraceResult:
            if progress is not None and not self.store.is_loaded(entry.key):
                progress(0.05, desc=f"Loading {entry.label}")
            loaded = self.store.get(entry.key)
            if progress is not None:
                progress(0.4, desc="Running D-FINE on the image")
            try:
                dets, trace, queries = loaded.detector(size).trace(path)
            except ImageLoadError as e:  # name the file, not the server's folder
                raise ImageLoadError(str(e).replace(path, Path(path).name)) from None
            return TraceResult(dets, trace, queries.cpu().numpy(), entry.key, size)

        result, cached = self.cache.get((digest, entry.key, size), compute)
        loaded = self.store.get(entry.key)
        dets, queries = result.select(threshold, max_detections)
        return Selection(result, loaded, dets, queries, threshold, max_detections, digest, cached)

    def warm(self, images: Sequence[str | Path]) -> int:
        """Run the default model once on ``images`` (the bundled examples) at its default input
        size, so that a first click on an example is answered from the cache. Returns how many
        were computed (the others were cached already)."""
        default = self.store.get(None)
        computed = 0
        for image in images:
            sel = self.select(str(image), 0.5, default.default_size, DEFAULT_KEY, 1)
            computed += not sel.cached
        return computed

    # ----------------------------------------------------------------------- /detect
    @user_errors
    def detect(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (gradio's idiom)
    ) -> tuple[Image.Image, pd.DataFrame, str, str]:
        """Annotated image, detections table (pixels), JSON file, summary with speed."""
        sel = self.select(image, threshold, size, model, max_detections, progress)
        dets = sel.detections
        annotated = dets.plot() if len(dets) else Image.fromarray(sel.result.image)
        json_path = self.outputs.path(f"detections_{Path(str(image)).stem}.json")
        dets.to_json(json_path)
        return annotated, tables.detections(dets), str(json_path), detect_summary(sel)

    # ----------------------------------------------------------------------- /trace
    @user_errors
    def trace(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        detections: Sequence[str] | str | None,
        stage: int | float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Image.Image, go.Figure, pd.DataFrame]:
        """The chosen detections at one stage (previous stage ghosted), the IoU-to-final and
        edge-movement chart, and the per-stage table."""
        sel = self.select(image, threshold, size, model, max_detections, progress)
        sel.require_detections()
        picked = self._picked(sel, detections)
        stages = sel.result.trace.num_layers + 2
        stage_i = check_stage(stage, stages)
        names = sel.model.class_names
        ref = analysis.refinement(
            sel.result.trace,
            sel.queries[picked],
            sel.result.image_size,
            sel.detections.labels[picked],
        )
        overlay = analysis.refinement_overlay(sel.result.image, ref, stage_i, class_names=names)
        fig = figures.refinement_figure(ref, 0, names)
        fig.update_layout(
            title=f"Layer-by-layer box refinement · showing stage: {ref.stages[stage_i]}"
        )
        return overlay, fig, tables.refinement(ref, picked, names)

    def _picked(self, sel: Selection, detections: Sequence[str] | str | None) -> list[int]:
        values = [detections] if isinstance(detections, (str, int)) else list(detections or [])
        picked = [i for i in (first_int(v, "detection") for v in values) if i is not None]
        if not picked:
            return list(range(min(DEFAULT_REFINEMENT_SELECTION, len(sel.detections))))
        for i in picked:
            _check_detection_index(i, sel)
        return list(dict.fromkeys(picked))

    # ----------------------------------------------------------------------- /distributions
    @user_errors
    def distributions(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        detection: str | int | None,
        sigma_scale: float,
        overlay_all: bool = True,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[go.Figure, Image.Image, pd.DataFrame]:
        """The four edges × layers figure on the pixel axis, the ±kσ overlay, the stats."""
        sel = self.select(image, threshold, size, model, max_detections, progress)
        index, dist = _edge_distributions(sel, detection)
        scale = check_sigma(sigma_scale)
        fig = figures.distribution_figure(dist, title=distribution_title(sel, index))
        shown = np.arange(len(sel.detections)) if overlay_all else np.array([index])
        overlay = analysis.uncertainty_overlay(
            sel.result.image,
            sel.detections[shown],
            sel.result.trace,
            sel.queries[shown],
            scale=scale,
        )
        return fig, overlay, tables.edge_stats(dist)

    @user_errors
    def export_distributions(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        detection: str | int | None,
        fmt: str,
    ) -> str:
        """The distributions figure as a PNG or SVG file (matplotlib)."""
        sel = self.select(image, threshold, size, model, max_detections)
        index, dist = _edge_distributions(sel, detection)
        fig = analysis.static.distribution_figure(dist, title=distribution_title(sel, index))
        return self._save(fig, f"edge_distributions_detection{index}", fmt)

    def _save(self, fig: Any, stem: str, fmt: str) -> str:
        fmt = str(fmt or "png").lower().lstrip(".")
        if fmt not in FIGURE_FORMATS:
            raise UserError(f"Figures can be saved as {' or '.join(FIGURE_FORMATS)}, not {fmt!r}.")
        path = self.outputs.path(f"{stem}.{fmt}")
        analysis.static.save_figure(fig, path)
        return str(path)

    # ----------------------------------------------------------------------- /weighting
    @user_errors
    def weighting(
        self, reg_max: int, up: float, reg_scale: float, model: str | None
    ) -> tuple[go.Figure, pd.DataFrame, str]:
        """W(n) for the parameters, the evenly spaced bins, and the model's own W(n)."""
        curve = _curve(reg_max, up, reg_scale)
        loaded = self.store.get(model)
        own = analysis.model_weighting(ModelW.of(loaded))
        fig = figures.weighting_figure(curve, model=own)
        return fig, tables.weighting(curve), weighting_summary(curve, own, loaded)

    @user_errors
    def export_weighting(
        self, reg_max: int, up: float, reg_scale: float, model: str | None, fmt: str
    ) -> str:
        curve = _curve(reg_max, up, reg_scale)
        own = analysis.model_weighting(ModelW.of(self.store.get(model)))
        fig = analysis.static.weighting_figure(curve, model=own)
        return self._save(fig, f"weighting_regmax{curve.reg_max}", fmt)

    # ----------------------------------------------------------------------- /golsd
    @user_errors
    def golsd(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        targets: str,
        query: str | int | None,
        edge: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, Image.Image, str, go.Figure, go.Figure, go.Figure, pd.DataFrame]:
        """Summary, the targets drawn on the image, the query shown (``"query 12: …"``), teacher
        vs student distributions of its edge, its KL per layer, the loss split and the
        weights of the top queries."""
        sel = self.select(image, threshold, size, model, max_detections, progress)
        mode = str(targets or "auto")
        if mode not in TARGET_MODES:
            raise UserError(f"Targets must be one of {', '.join(TARGET_MODES)}, got {mode!r}.")
        if edge not in analysis.EDGES:
            raise UserError(f"The edge must be one of {', '.join(analysis.EDGES)}, got {edge!r}.")
        if progress is not None:
            progress(0.7, desc="Matching queries to targets (GO-LSD)")
        report, truth = self._report(sel, mode)
        q = first_int(query, "query")
        q = int(report.ranked_queries()[0]) if q is None else q
        if not 0 <= q < report.num_queries:
            raise UserError(f"The query must be between 0 and {report.num_queries - 1}, got {q}.")
        names = truth.names if truth is not None else sel.model.class_names
        return (
            golsd_summary(report, sel, truth),
            targets_image(sel, report, names, q),
            query_label(report, q, names),
            compact(figures.golsd_distribution_figure(report, q, edge)),
            compact(figures.golsd_kl_figure(report, q)),
            compact(figures.golsd_loss_figure(report)),
            tables.golsd(report, names),
        )

    def _report(self, sel: Selection, mode: str) -> tuple[analysis.GOLSDReport, GroundTruth | None]:
        truth = self.examples.find(sel.digest) if mode != "pseudo" else None
        if mode == "annotations" and truth is None:
            raise UserError(
                "This image has no annotations: only the synthetic examples do. Pick one of "
                "them, or choose 'pseudo ground truth' to use the model's own detections."
            )
        key = (sel.digest, sel.result.model_key, sel.result.size, truth is None)
        key += (sel.threshold, sel.max_detections) if truth is None else ()
        with self._reports_lock:
            if key in self._reports:
                self._reports.move_to_end(key)
                return self._reports[key], truth
        report = analysis.golsd(
            sel.result.trace,
            self._targets(sel, truth),
            sel.model.criterion(),
            image_size=sel.result.image_size,
            pseudo=truth is None,
        )
        with self._reports_lock:
            self._reports[key] = report
            while len(self._reports) > 8:
                self._reports.popitem(last=False)
        return report, truth

    @staticmethod
    def _targets(sel: Selection, truth: GroundTruth | None) -> list[dict[str, Any]]:
        if truth is None:
            if len(sel.detections) == 0:
                raise UserError(
                    f"No detections above the threshold {sel.threshold:g} to use as pseudo "
                    "ground truth; lower the threshold in the Detect tab."
                )
            return analysis.pseudo_targets(sel.detections, min_score=0.0)
        if truth.image_size != sel.result.image_size:
            raise UserError("The annotations are for an image of another size.")
        if len(truth.labels) and truth.labels.max() >= sel.model.num_classes:
            raise UserError(
                f"The annotations use {len(truth.names)} classes but the model has only "
                f"{sel.model.num_classes}; use pseudo ground truth with this model."
            )
        return truth.targets()

    # ----------------------------------------------------------------------- /model
    @user_errors
    def model_info(
        self,
        choice: str | None,
        checkpoint: str | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple[str, str]:
        """Load a bundled/zoo model or an uploaded checkpoint: its description and its key
        (the ``model`` value of the other endpoints)."""
        if checkpoint:
            if progress is not None:
                progress(0.1, desc="Checking the uploaded checkpoint")
            loaded = self.store.add_upload(checkpoint)
        else:
            entry = self.store.entry(choice)
            if progress is not None and not self.store.is_loaded(entry.key):
                progress(0.05, desc=f"Loading {entry.label}")
            loaded = self.store.get(entry.key)
        return model_markdown(loaded), loaded.entry.key

    # ----------------------------------------------------------------------- UI helpers
    def pickers(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
    ) -> tuple[dict, dict, dict, dict]:
        """After a detection: the choices of the Refinement, Distributions and GO-LSD pickers
        and the stage slider's range (no recomputation: the result is cached)."""
        sel = self.select(image, threshold, size, model, max_detections)
        labels = [detection_label(i, sel.detections) for i in range(len(sel.detections))]
        last = sel.result.trace.num_layers + 1
        return (
            gr.update(choices=labels, value=labels[:DEFAULT_REFINEMENT_SELECTION]),
            gr.update(maximum=last, value=last),
            gr.update(choices=labels, value=labels[0] if labels else None),
            gr.update(choices=[], value=None),
        )

    def nearest_detection(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        point: Sequence[float],
    ) -> str:
        """The picker label of the detection at image pixel ``point`` (x, y): the smallest box
        containing it, else the box whose edge is nearest."""
        sel = self.select(image, threshold, size, model, max_detections)
        sel.require_detections()
        return detection_label(nearest_box(sel.detections.boxes, point), sel.detections)

    def model_defaults(self, model: str | None) -> float:
        """The threshold that suits a model (the fixture's scores are about 0.05)."""
        return self.store.entry(model).default_threshold

    def use_model(self, key: str) -> tuple[dict, float]:
        """Select model ``key`` in the Detect tab (its list now includes uploads) and set the
        threshold that suits it."""
        choices = self.store.choices()
        return gr.update(choices=choices, value=key), self.model_defaults(key)

    def golsd_queries(
        self,
        image: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        targets: str,
        query: str | None,
    ) -> dict:
        """The GO-LSD query picker's choices: the top contributors and the query shown."""
        sel = self.select(image, threshold, size, model, max_detections)
        report, truth = self._report(sel, str(targets or "auto"))
        names = truth.names if truth is not None else sel.model.class_names
        q = first_int(query, "query")
        q = int(report.ranked_queries()[0]) if q is None else q
        return gr.update(choices=query_choices(report, q, names), value=query)


# --------------------------------------------------------------------------- helpers
def nearest_box(boxes: np.ndarray, point: Sequence[float]) -> int:
    x, y = (float(v) for v in point[:2])
    x1, y1, x2, y2 = boxes.T
    inside = (x1 <= x) & (x <= x2) & (y1 <= y) & (y <= y2)
    if inside.any():
        area = np.where(inside, (x2 - x1) * (y2 - y1), np.inf)
        return int(np.argmin(area))
    dx = np.maximum(np.maximum(x1 - x, 0), x - x2)
    dy = np.maximum(np.maximum(y1 - y, 0), y - y2)
    return int(np.argmin(np.hypot(dx, dy)))


def _check_detection_index(index: int, sel: Selection) -> int:
    n = len(sel.detections)
    if not 0 <= index < n:
        raise UserError(
            f"There is no detection {index}: {n} detection{'s' if n != 1 else ''} are above the "
            f"threshold {sel.threshold:g} (numbered 0 to {n - 1}). Press Detect to refresh the list."
        )
    return index


def _detection_or_first(detection: str | int | None, sel: Selection) -> int:
    index = first_int(detection, "detection")
    return 0 if index is None else _check_detection_index(index, sel)


def _edge_distributions(
    sel: Selection, detection: str | int | None
) -> tuple[int, analysis.EdgeDistributions]:
    """The chosen detection (default: the first) and its four edge distributions."""
    sel.require_detections()
    index = _detection_or_first(detection, sel)
    dist = analysis.edge_distributions(
        sel.result.trace, int(sel.queries[index]), sel.result.image_size
    )
    return index, dist


def _curve(reg_max: int, up: float, reg_scale: float) -> analysis.WeightingCurve:
    reg_max_f = number(reg_max, "reg_max")
    if reg_max_f != int(reg_max_f):
        raise UserError(f"reg_max must be an even whole number, got {reg_max_f:g}.")
    try:
        return analysis.weighting_curve(
            int(reg_max_f), number(up, "up"), number(reg_scale, "reg_scale")
        )
    except ValueError as e:
        raise UserError(f"{e}.") from e


__all__ = [
    "Handlers",
    "Selection",
    "check_image",
    "check_max_detections",
    "check_size",
    "check_threshold",
    "detection_label",
    "first_int",
    "model_markdown",
    "nearest_box",
]
