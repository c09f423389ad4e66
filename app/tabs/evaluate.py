"""The Evaluate tab: a whole dataset through the model, with ``analysis.evaluation``'s views —
COCO metrics, per-stage AP, calibration of the edge uncertainty and of the scores, per-class
AP, PR curves, confusion matrix and a clickable error gallery (a click opens the image in
Detect, with its ground truth known to the analysis tabs).

Data: the bundled synthetic val split (generated deterministically at first use into the
cache folder) or an uploaded zip (COCO or YOLO layout; ``app.archive`` checks it and
extracts it into a per-request temporary folder, removed afterwards). The main action is
the named endpoint ``/evaluate``; one evaluation runs at a time (its own queue), with a
progress bar over the images, and Cancel stops it between batches.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch

from analysis.evaluation import DatasetReport, EvalSettings, evaluate_dataset
from analysis.evaluation.errors import GALLERY_KINDS
from analysis.evaluation.figures import (
    FIGURES,
    LABELS,
    accuracy_latency_figure,
    stage_ap_comparison_figure,
)
from analysis.evaluation.thumbnails import caption, thumbnail
from analysis.figures import message_figure
from app.archive import LIMITS_TEXT, extract_zip, find_dataset
from app.errors import UserError, user_errors
from app.ground_truth import GroundTruth
from app.results import file_digest
from app.state import AppState
from app.tabs.common import Controls, bind
from app.tabs.compare import NONE_CHOICE
from dfine.argtypes import SWEEP_IMAGES
from dfine.budget import sweep_budgets
from dfine.data.synth import make_synthetic_dataset
from dfine.guard import load_val
from dfine.zoo import cache_dir

BUNDLED = "bundled synthetic val split"
UPLOAD = "uploaded zip"
BUNDLED_IMAGES = 24
BUNDLED_SEED = 0
GALLERY_PER_KIND = 6

TEXT = f"""Evaluate the model on a **whole dataset** — one traced forward per image. You get the
COCO metrics, **every stage scored as its own detector** (encoder proposals b0, pre-head,
each decoder layer; with its own scores and with the final layer's scores on its boxes: the
FDR refinement in one picture), the **calibration of the edge distributions** (is the true
edge inside ±1σ ≈ 68 % and ±2σ ≈ 95 % of the time? Spearman ρ of σ with the real error), score
calibration, per-class AP, PR curves, a confusion matrix with background and an **error
gallery** — click a thumbnail to open that image in Detect.

Data: the bundled synthetic split ({BUNDLED_IMAGES} images, made on first use), or a zip of
images with a COCO `instances_*.json`, or in the YOLO layout (`images/`, `labels/`,
`data.yaml`). Zip limits: {LIMITS_TEXT}. The upload is unpacked into a temporary folder
that is deleted afterwards. One evaluation runs at a time; results are cached by (weights,
dataset, settings)."""


def bundled_split(cache_root: Path | None = None) -> Path:
    """The bundled synthetic val split: ``dfine.data.synth`` with a fixed seed, generated once
    into ``<cache>/evaluate/synth_val_<n>_seed<s>`` (atomically: into a temporary folder,
    then renamed)."""
    root = (cache_root or cache_dir()) / "evaluate"
    folder = root / f"synth_val_{BUNDLED_IMAGES}_seed{BUNDLED_SEED}"
    if (folder / "annotations" / "instances_val.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="synth-", dir=root))
    try:
        make_synthetic_dataset(
            tmp, num_train=0, num_val=BUNDLED_IMAGES, seed=BUNDLED_SEED, workers=0
        )
        try:
            os.replace(tmp, folder)
        except OSError:  # another request made it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    return df.round(4)


def summary_markdown(report: DatasetReport) -> str:
    m = report.metrics
    info = report.info
    how = "from the cache" if info.get("cached") else f"in {info.get('seconds', 0):.1f} s"
    lines = [
        f"**{info.get('images')} images**, computed {how}. "
        f"**AP {m['AP']:.4f}** · AP50 {m['AP50']:.4f} · AP75 {m['AP75']:.4f} · "
        f"APs {m['APs']:.4f} · APm {m['APm']:.4f} · APl {m['APl']:.4f} · AR100 {m['AR100']:.4f}",
    ]
    if report.stages:
        first, last = report.stages[0], report.stages[-1]
        lines.append(
            f"Refinement: AP {first.AP:.3f} ({first.name}) → {last.AP:.3f} ({last.name}); "
            f"mean IoU of matched boxes {first.mean_iou or 0:.3f} → {last.mean_iou or 0:.3f}."
        )
    if report.calibration and report.calibration[-1].edges:
        c = report.calibration[-1]
        lines.append(
            f"Final layer edges inside ±1σ: {c.coverage_1sigma:.1%}, ±2σ: "
            f"{c.coverage_2sigma:.1%} (Gaussian: 68.3 %, 95.4 %); Spearman ρ(σ, |error|) "
            f"{'—' if c.spearman is None else f'{c.spearman:.3f}'}."
        )
    return "\n\n".join(lines)


def _cancel_event(state: AppState, request: gr.Request | None) -> threading.Event:
    """The cancel flag of this browser session (the API's calls share one)."""
    key = getattr(request, "session_hash", None) or "api"
    return state.memo("evaluate-cancel").get(key, threading.Event)


def cancel(state: AppState, request: gr.Request = None) -> str:  # type: ignore[assignment]
    """Ask the running evaluation of this session to stop after its current batch."""
    _cancel_event(state, request).set()
    return "Cancelling the evaluation…"


@user_errors
def evaluate(
    state: AppState,
    source: str,
    dataset_zip: str | None,
    model: str | None,
    threshold: float,
    per_layer: bool,
    calibration: bool,
    request: gr.Request = None,  # type: ignore[assignment]
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's idiom)
) -> tuple:
    """``/evaluate``: summary, stage / calibration / per-class tables, the figures
    (:data:`analysis.evaluation.figures.FIGURES` order), the error gallery and, for clicks,
    the gallery's images with their ground truth."""
    stop = _cancel_event(state, request)
    stop.clear()
    entry = state.store.entry(model)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"The score threshold must be in [0, 1], got {threshold}.")
    settings = EvalSettings(
        threshold=threshold, per_layer=bool(per_layer), calibration=bool(calibration)
    )

    def on_batch(done: int, total: int) -> None:
        if stop.is_set():
            raise UserError("The evaluation was cancelled.")
        progress((done, total), desc="Evaluating", unit="images")

    with dataset(source, dataset_zip, progress) as (data, images):
        report = evaluate_dataset(
            entry.source, data, images=images, settings=settings, on_batch=on_batch
        )
        return _outputs(state, report)  # while an upload's folder exists: thumbnails, copies


@contextmanager
def dataset(
    source: str, dataset_zip: str | None, progress: gr.Progress
) -> Iterator[tuple[Path, Path | None]]:
    """The chosen data as ``(annotations or folder, images folder or None)`` for
    :func:`evaluate_dataset`: the bundled split, or the uploaded zip checked and extracted
    into a temporary folder that is removed on exit."""
    if source == UPLOAD:
        if not dataset_zip:
            raise UserError("Upload a zip of the dataset first (or pick the bundled split).")
        with tempfile.TemporaryDirectory(prefix="dfine-eval-") as tmp:
            progress(0, desc="Checking the zip")
            extract_zip(dataset_zip, tmp)
            found = find_dataset(tmp)
            yield found.annotations, found.images
        return
    progress(0, desc="Preparing the bundled split")
    yield bundled_split(), None


BUDGET_COLUMNS = ["runtime", "decoder_layers", "num_queries", "AP", "AP50", "AP75", "median_ms",
                  "pareto"]  # fmt: skip


@user_errors
def evaluate_budget(
    state: AppState,
    source: str,
    dataset_zip: str | None,
    model: str | None,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (gradio's idiom)
) -> tuple[str, pd.DataFrame, Any]:
    """``/evaluate_budget``: AP, AP50, AP75 and median ms per image (PyTorch, batch 1,
    interleaved) of the model at every decoder depth × query budget on the first
    :data:`dfine.budget.SWEEP_IMAGES` images of the data, the Pareto front marked; a
    summary, the table and :func:`accuracy_latency_figure`."""
    entry = state.store.entry(model)
    with dataset(source, dataset_zip, progress) as (data, images):
        val = load_val(data, SWEEP_IMAGES, images)
        sweep = sweep_budgets(entry.source, val, threads=torch.get_num_threads())
    rows = [{**asdict(p), "pareto": "★" if p.pareto else ""} for p in sweep.points]
    fast = min(sweep.points, key=lambda p: p.median_ms)
    best = max(sweep.points, key=lambda p: p.AP)
    text = (
        f"**{sweep.images} images**, {sweep.threads} threads, PyTorch (deployed). Most accurate: "
        f"{best.label} (AP {best.AP:.4f}, {best.median_ms:.1f} ms); fastest: {fast.label} "
        f"(AP {fast.AP:.4f}, {fast.median_ms:.1f} ms). ★ = Pareto front. Choose a budget in "
        "the Model tab, or `--decoder-layers K --num-queries Q` in the CLI."
    )
    return text, _frame(rows, BUDGET_COLUMNS), accuracy_latency_figure(sweep)


COMPARE_COLUMNS = ["model", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
CHOOSE_TEXT = "Choose a second model to evaluate it beside the first on the same data."


@user_errors
def compare(
    state: AppState,
    source: str,
    dataset_zip: str | None,
    model: str | None,
    other: str | None,
    threshold: float,
    per_layer: bool,
    calibration: bool,
    request: gr.Request = None,  # type: ignore[assignment]
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's idiom)
) -> tuple[str, pd.DataFrame, Any]:
    """``/evaluate_compare``: the first model (Detect's picker) and ``other`` evaluated on
    the same data with the same settings (each cached as ``/evaluate``'s): a summary, the
    COCO AP table (a row per model) and the per-stage AP figure of both."""
    if not other:
        return CHOOSE_TEXT, _frame([], COMPARE_COLUMNS), message_figure(CHOOSE_TEXT)
    entries = [state.store.entry(model), state.store.entry(other)]
    if entries[0].key == entries[1].key:
        raise UserError("The second model is the first one; choose another model to compare.")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"The score threshold must be in [0, 1], got {threshold}.")
    settings = EvalSettings(
        threshold=threshold, per_layer=bool(per_layer), calibration=bool(calibration)
    )
    stop = _cancel_event(state, request)
    stop.clear()
    names = [e.label if len(e.label) <= 40 else e.label[:39] + "…" for e in entries]
    reports = []
    with dataset(source, dataset_zip, progress) as (data, images):
        for i, (entry, name) in enumerate(zip(entries, names)):

            def on_batch(done: int, total: int, i: int = i, name: str = name) -> None:
                if stop.is_set():
                    raise UserError("The evaluation was cancelled.")
                progress((i * total + done, 2 * total), desc=f"Evaluating {name}", unit="images")

            reports.append(
                evaluate_dataset(
                    entry.source, data, images=images, settings=settings, on_batch=on_batch
                )
            )
    table = _frame([{"model": n, **r.metrics} for n, r in zip(names, reports)], COMPARE_COLUMNS)
    figure = stage_ap_comparison_figure(reports, names) or message_figure(
        "Tick “Per-stage AP” to compare the stages of both models."
    )
    return _compare_markdown(reports, names), table, figure


def _compare_markdown(reports: list[DatasetReport], names: list[str]) -> str:
    (a, b), (na, nb) = reports, names
    delta = b.metrics["AP"] - a.metrics["AP"]
    lines = [
        f"**{a.info.get('images')} images**, the same data and settings for both. "
        f"**{na}**: AP {a.metrics['AP']:.4f} · **{nb}**: AP {b.metrics['AP']:.4f} "
        f"(second − first: {delta:+.4f})."
    ]
    if a.stages and b.stages:
        lines.append(
            " · ".join(
                f"{n}: AP {r.stages[0].AP:.3f} ({r.stages[0].name}) → {r.stages[-1].AP:.3f} "
                f"({r.stages[-1].name})"
                for n, r in zip(names, reports)
            )
        )
        heads = [any(s.name == "pre-head" for s in r.stages) for r in reports]
        if any(heads) and not all(heads):
            lines.append("A model trained without FDR (`--ablate fdr`) has no pre-head stage.")
    return "\n\n".join(lines)


def _outputs(state: AppState, report: DatasetReport) -> tuple:
    stages = _frame(
        [s.to_dict() for s in report.stages],
        ["name", "AP", "AP50", "AP75", "AP_final_scores", "mean_iou"],
    )
    calib = _frame(
        [c.to_dict() for c in report.calibration],
        ["stage", "edges", "coverage_1sigma", "coverage_2sigma", "spearman",
         "mean_abs_error_px", "mean_sigma_px"],
    )  # fmt: skip
    classes = _frame(
        [c.to_dict() for c in report.per_class],
        ["name", "AP", "AP50", "AP75", "APs", "APm", "APl", "gt_count", "det_count",
         "best_threshold", "best_f1"],
    )  # fmt: skip
    plots = [fn(report) for fn in FIGURES.values()]
    files = report.info.get("files") or []
    names = report.info.get("class_names")
    copies: dict[int, str] = {}
    gallery, items = [], []
    for kind in GALLERY_KINDS:
        for item in report.gallery.get(kind, [])[:GALLERY_PER_KIND]:
            src = files[item.index]
            if item.index not in copies:  # keep the image: an upload's folder goes
                dst = state.outputs.path(Path(src).name)
                shutil.copyfile(src, dst)
                copies[item.index] = str(dst)
            thumb = state.outputs.path(f"{kind.replace(' ', '_')}.png")
            thumbnail(item, src, names).save(thumb)
            gallery.append((str(thumb), caption(item, names)))
            items.append(copies[item.index])
    clicks = {"items": items, "truths": _truths(report, copies)}
    return (summary_markdown(report), stages, calib, classes, *plots, gallery, clicks)


def _truths(report: DatasetReport, copies: dict[int, str]) -> dict[str, Any]:
    """Ground truth of every copied image (COCO xywh pixels, contiguous labels), by path."""
    path = report.info.get("annotations")
    if not path or not Path(path).is_file():
        return {}
    coco = json.loads(Path(path).read_text(encoding="utf-8"))
    label = {c: i for i, c in enumerate(sorted(c["id"] for c in coco["categories"]))}
    files = report.info.get("files") or []
    by_name = {Path(files[i]).name: p for i, p in copies.items()}
    out = {}
    for im in coco["images"]:
        p = by_name.get(Path(im["file_name"]).name)
        if p is None:
            continue
        anns = [
            a for a in coco["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd")
        ]
        out[p] = {
            "file_name": im["file_name"],
            "size": [im["width"], im["height"]],
            "xywh": [a["bbox"] for a in anns],
            "labels": [label[a["category_id"]] for a in anns],
        }
    return out


def open_item(state: AppState, clicks: dict | None, evt: gr.SelectData) -> tuple[Any, Any]:
    """A click on a gallery thumbnail: its image into Detect (its ground truth into the
    annotated examples, so GO-LSD uses it), and Detect selected."""
    items = (clicks or {}).get("items") or []
    if evt.index is None or not 0 <= int(evt.index) < len(items):
        raise gr.Error("Run an evaluation first, then click a thumbnail.")
    path = items[int(evt.index)]
    truth = (clicks or {}).get("truths", {}).get(path)
    if truth is not None:
        xywh = np.asarray(truth["xywh"], np.float64).reshape(-1, 4)
        state.examples.add(
            file_digest(path),
            GroundTruth(
                file_name=truth["file_name"],
                image_size=tuple(truth["size"]),
                boxes_xyxy=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                labels=np.asarray(truth["labels"], np.int64),
                names=tuple(state.store.get(None).class_names),
            ),
        )
    return path, gr.Tabs(selected="detect")


@dataclass(frozen=True)
class _CompareRow:
    button: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe
    plot: gr.Plot


def _compare_row(state: AppState) -> tuple[gr.Dropdown, _CompareRow]:
    """The "compare with a second model" controls and outputs (their choices follow the
    loaded and uploaded models each time the accordion opens)."""
    with gr.Accordion("Compare with a second model (same data, same settings)", open=False) as acc:
        with gr.Row():
            other = gr.Dropdown(
                choices=[NONE_CHOICE, *state.store.choices()], value="", allow_custom_value=True,
                label="Second model (any loaded, zoo or uploaded model; e.g. an --ablate variant)",
                scale=3, elem_id="evaluate-compare-model",
            )  # fmt: skip
            button = gr.Button("Evaluate both", scale=1, elem_id="evaluate-compare-button")
        row = _CompareRow(
            button,
            gr.Markdown(elem_id="evaluate-compare-summary"),
            gr.Dataframe(label="COCO AP of both models", interactive=False,
                         elem_id="evaluate-compare-table"),
            gr.Plot(label="Per-stage AP of both models", elem_id="evaluate-compare-plot"),
        )  # fmt: skip
    acc.expand(
        lambda: gr.update(choices=[NONE_CHOICE, *state.store.choices()]),
        outputs=other,
        api_visibility="private",
    )
    return other, row


def build(state: AppState, controls: Controls) -> None:
    """The Evaluate tab."""
    with gr.Tab("Evaluate", id="evaluate"):
        gr.Markdown(TEXT, elem_classes="dfine-note")
        with gr.Row():
            source = gr.Radio([BUNDLED, UPLOAD], value=BUNDLED, label="Dataset", scale=2)
            upload = gr.File(
                label="Dataset zip (COCO or YOLO layout)", file_types=[".zip"], scale=2,
                height=220, min_width=240, elem_id="evaluate-zip",
            )  # fmt: skip
        with gr.Row():
            threshold = gr.Slider(
                0.0, 1.0, value=0.5, step=0.05, scale=2,
                label="Score threshold of the confusion matrix, gallery and matches (0–1)",
            )  # fmt: skip
            per_layer = gr.Checkbox(value=True, label="Per-stage AP", scale=1)
            calibration = gr.Checkbox(value=True, label="Edge-σ calibration", scale=1)
            run = gr.Button("Evaluate", variant="primary", scale=1, elem_id="evaluate-button")
            stop = gr.Button("Cancel", scale=1, elem_id="evaluate-cancel")
        other, compared = _compare_row(state)
        summary = gr.Markdown(elem_id="evaluate-summary")
        gallery = gr.Gallery(
            label="Error gallery (click: open in Detect)", columns=6, height=300,
            allow_preview=False, elem_id="evaluate-gallery",
        )  # fmt: skip
        with gr.Row():
            stages = gr.Dataframe(label="Per-stage AP", interactive=False)
            calib = gr.Dataframe(label="Edge-σ calibration per layer", interactive=False)
        plots = []
        names = list(FIGURES)
        for i in range(0, len(names), 2):
            with gr.Row(equal_height=False):
                plots += [
                    gr.Plot(label=LABELS[name], elem_id=f"evaluate-plot-{i + k}", min_width=320)
                    for k, name in enumerate(names[i : i + 2])
                ]
        classes = gr.Dataframe(label="Per class", interactive=False)
        clicks = gr.State({})
        with gr.Accordion("Accuracy vs latency: decoder depth × queries", open=False):
            budget_button = gr.Button(
                f"Measure (first {SWEEP_IMAGES} images, PyTorch)", elem_id="evaluate-budget"
            )
            budget_text = gr.Markdown(elem_id="evaluate-budget-summary")
            with gr.Row():
                budget_table = gr.Dataframe(label="Depth × queries", interactive=False)
                budget_plot = gr.Plot(elem_id="evaluate-budget-plot")
    event = run.click(
        bind(state, evaluate),
        inputs=[source, upload, controls.model, threshold, per_layer, calibration],
        outputs=[summary, stages, calib, classes, *plots, gallery, clicks],
        api_name="evaluate",
        concurrency_limit=1,
        concurrency_id="evaluate",
    )
    compare_event = compared.button.click(
        bind(state, compare),
        inputs=[source, upload, controls.model, other, threshold, per_layer, calibration],
        outputs=[compared.summary, compared.table, compared.plot],
        api_name="evaluate_compare",
        concurrency_limit=1,
        concurrency_id="evaluate",
    )
    budget_button.click(
        bind(state, evaluate_budget),
        inputs=[source, upload, controls.model],
        outputs=[budget_text, budget_table, budget_plot],
        api_name="evaluate_budget",
        concurrency_limit=1,
        concurrency_id="evaluate",
    )
    stop.click(
        bind(state, cancel), outputs=summary, cancels=[event, compare_event],
        api_visibility="private",
    )  # fmt: skip
    upload.upload(lambda _: UPLOAD, inputs=upload, outputs=source, api_visibility="private")

    opened = gallery.select(
        bind(state, open_item),
        inputs=clicks,
        outputs=[controls.image, controls.tabs],
        api_visibility="private",
    )
    controls.replaced(opened.success, detect=True)  # Detect describes the opened image
