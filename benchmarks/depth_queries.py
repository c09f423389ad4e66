"""Decoder depth K × query budget Q × runtime on the CPU (issue 24): accuracy and latency of
the demo model on a val split (``dfine.budget.sweep_budgets``: every image through every
configuration in turn), the latency of a random-init model at 640² (interleaved rounds), and
the ONNX graph's node count per budget. Writes a Markdown file.

    python -m dfine.cli data synth --out /tmp/depth_val --train 0 --val 300 --seed 11 --quiet
    python benchmarks/depth_queries.py --val /tmp/depth_val \\
        --out benchmarks/results/depth_queries_cpu.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

import dfine
from dfine.benchmark import _runner, time_interleaved
from dfine.budget import sweep_budgets
from dfine.export import export_onnx
from dfine.guard import load_val
from dfine.resources import demo_weights


def onnx_nodes(model: dfine.DFINE, layers, queries, workdir: Path) -> list[tuple[int, int, int]]:
    """(K, Q, node count) of the exported graph (postprocessing included) per budget."""
    import onnx

    out = []
    for k in layers:
        for q in queries:
            path = workdir / f"nodes-k{k}q{q}.onnx"
            export_onnx(model, path, check_parity=False, decoder_layers=k, num_queries=q)
            out.append((k, q, len(onnx.load(str(path)).graph.node)))
    return out


def interleaved_latency(size: str, hw: int, runtimes, layers, queries, threads, rounds, workdir):
    """Median ms per image of a random-init model of ``size`` at ``hw``², batch 1, every
    configuration once per round (the order rotates by round)."""
    torch.manual_seed(0)
    model = dfine.build_model(size).eval()
    grid = [(r, k, q) for r in runtimes for k in layers for q in queries]
    runs = {
        g: _runner(g[0], model, (hw, hw), threads, workdir, budget=(g[1], g[2]), spinning=False)
        for g in grid
    }
    x, sizes = torch.rand(1, 3, hw, hw), torch.tensor([[hw, hw]])
    calls = {g: partial(runs[g], x, sizes) for g in grid}
    times = time_interleaved(calls, 2, rounds, rotate=True)
    return {g: statistics.median(t) for g, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val", required=True, help="val split of the demo model's data")
    parser.add_argument("--val-size", type=int, default=None, help="first N val images")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--queries", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--latency-runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-size", default="n", help="random-init model timed at 640²")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    val = load_val(args.val, args.val_size)
    sweep = sweep_budgets(
        demo_weights(), val, layers=args.layers, queries=args.queries,
        runtimes=args.runtimes, threads=args.threads,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        nodes = onnx_nodes(dfine.load_model(demo_weights()), args.layers, args.queries, Path(tmp))
        lat = interleaved_latency(
            args.latency_size, 640, args.latency_runtimes, args.layers, args.queries, args.threads,
            args.rounds, Path(tmp),
        )  # fmt: skip
    keys = list(lat)
    full = {r: lat[(r, max(args.layers), max(args.queries))] for r in args.latency_runtimes}
    lines = [
        "# Decoder depth K × query budget Q × runtime, CPU",
        "",
        f"- date: {dt.date.today().isoformat()}; torch {torch.__version__}; {platform.machine()};"
        f" CPU capability {torch.backends.cpu.get_cpu_capability()}; {args.threads} threads;"
        " batch 1",
        "- command: `python "
        + " ".join(shlex.quote(a) for a in sys.argv)
        + "` (val data: `python -m dfine.cli data synth --out /tmp/depth_val --train 0 --val"
        " 300 --seed 11 --quiet`)",
        f"- load average (1 min) at the start {load_before:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f}; the ratios inside one table are measured interleaved, so"
        " they carry the comparison even where other work shared the cores; ONNX Runtime"
        " runs with its threads' spinning off (`spinning=False`), which otherwise takes the"
        " cores from the next configuration timed",
        "",
        f"## Demo model (`{Path(str(sweep.weights)).name}`, {sweep.input_size[0]}², "
        f"{sweep.images} val images): accuracy and latency",
        "",
        "Every image went through every configuration in turn (rotating order); ms = median"
        " per image including postprocessing. ★ = on the Pareto front (no other point is"
        " both at least as fast and at least as accurate).",
        "",
        sweep.markdown(),
        "## ONNX graph size of the demo model per budget (postprocessing included)",
        "",
        "| K | Q | nodes |",
        "|---|---|---|",
        *[f"| {k} | {q} | {n} |" for k, q, n in nodes],
        "",
        f"## D-FINE-{args.latency_size.upper()} at 640², random-init weights: latency only",
        "",
        f"{args.rounds} interleaved rounds after 2 warm-up calls each; speed-up against the"
        " same runtime's full budget.",
        "",
        "| runtime | K | Q | median ms | speed-up |",
        "|---|---|---|---|---|",
        *[
            f"| {r} | {k} | {q} | {lat[(r, k, q)]:.1f} | {full[r] / lat[(r, k, q)]:.2f}x |"
            for r, k, q in keys
        ],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
