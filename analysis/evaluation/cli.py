"""The analysis half of ``dfine val --report DIR --per-layer --calibration``: one traced pass,
the tables printed, the report folder written (``analysis.evaluation.html``)."""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

from analysis.evaluation.collect import EvalSettings
from analysis.evaluation.html import write_report
from analysis.evaluation.report import DatasetReport, evaluate_dataset
from dfine.budget import sweep_budgets
from dfine.guard import load_val


def stage_table(report: DatasetReport) -> str:
    """Per-stage AP as a Markdown table."""
    lines = [
        "| stage | AP | AP50 | AP75 | AP (final-layer scores) | mean IoU of matched boxes |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.stages:
        fin = "—" if s.AP_final_scores is None else f"{s.AP_final_scores:.4f}"
        iou = "—" if s.mean_iou is None else f"{s.mean_iou:.4f}"
        lines.append(f"| {s.name} | {s.AP:.4f} | {s.AP50:.4f} | {s.AP75:.4f} | {fin} | {iou} |")
    return "\n".join(lines)


def calibration_table(report: DatasetReport) -> str:
    """Edge-σ calibration per layer as a Markdown table."""
    lines = [
        "| layer | edges | inside ±1σ | inside ±2σ | Spearman ρ(σ, abs error) | mean abs error (px) "
        "| mean σ (px) |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v, spec=".4f"):
        return "—" if v is None else format(v, spec)

    for c in report.calibration:
        lines.append(
            f"| {c.stage} | {c.edges} | {f(c.coverage_1sigma)} | {f(c.coverage_2sigma)} | "
            f"{f(c.spearman)} | {f(c.mean_abs_error_px, '.2f')} | {f(c.mean_sigma_px, '.2f')} |"
        )
    return "\n".join(lines)


def attention_table(report: DatasetReport) -> str:
    """Per decoder layer, the share of the attention mass inside the detections' boxes, within
    ±band of an edge and outside, true vs false positives, as a Markdown table."""
    a = report.attention
    tp, fp = a.true_positives, a.false_positives
    band = f"{a.band:.0%}"
    lines = [
        f"| layer | TP inside | TP near an edge (±{band}) | TP outside | FP inside | "
        f"FP near an edge (±{band}) | FP outside |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(a.layers):
        cells = [f"{g.inside[i]:.3f} | {g.near_edge[i]:.3f} | {g.outside[i]:.3f}" for g in (tp, fp)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines.append(f"\n{tp.count} true positives, {fp.count} false positives")
    return "\n".join(lines)


def run_report(args: argparse.Namespace) -> int:
    """``dfine val`` with ``--report``, ``--per-layer`` or ``--calibration``."""
    settings = EvalSettings(
        size=args.size,
        threshold=args.threshold,
        per_layer=bool(args.per_layer or args.report),
        calibration=bool(args.calibration or args.report),
        coco_lib=args.coco_lib,
        batch_size=args.batch_size,
    )
    bar = tqdm(desc="eval", unit="img", disable=args.quiet, leave=False, dynamic_ncols=True)

    def on_batch(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = evaluate_dataset(
            args.weights, args.data, images=args.images, settings=settings,
            device=args.device or "cpu", on_batch=on_batch, cache=not args.no_cache,
            workers=args.workers,
        )  # fmt: skip
    finally:
        bar.close()
    if args.json and not args.report:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for name, value in report.metrics.items():
            print(f"{name:>6}: {value:.4f}")
        if report.stages:
            print("\nper-stage AP\n" + stage_table(report))
        if report.calibration:
            print("\nedge-uncertainty calibration (matched boxes)\n" + calibration_table(report))
        if report.attention is not None:
            print("\nattention mass relative to the detected boxes\n" + attention_table(report))
        for note in report.info.get("notes", []):
            print(f"note: {note}")
    sweep = None
    if args.report and args.sweep_images:
        sweep = sweep_budgets(
            args.weights, load_val(args.data, args.sweep_images, args.images),
            layers=args.sweep_layers,
            queries=args.sweep_queries, runtimes=args.sweep_runtimes,
            threads=torch.get_num_threads(), progress=not args.quiet,
        )  # fmt: skip
        print("\naccuracy vs latency, decoder depth x queries (★ Pareto front)\n")
        print(sweep.markdown())
    if args.report:
        files = write_report(report, args.report, budget=sweep)
        if files.skipped:
            print(f"note: {files.skipped}")
        print(f"\nreport: {files.index} (metrics: {files.metrics})")
    return 0
