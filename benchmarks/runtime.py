"""End-to-end latency of one image through ``dfine.Detector`` on each runtime, interleaved.

What ``backend="fastest"`` (:func:`dfine.sources.fastest_backend`) and the app's plain
detections (webcam, untracked video) choose from: the deployed torch model, ONNX Runtime and
OpenVINO, all f32, each timed on the same image in rounds (torch, onnxruntime, openvino,
torch, …) so that a machine's load changes them alike. Times include preprocessing and
postprocessing (what a user waits for). Each model's ratios are to its torch time. ONNX
Runtime runs with spinning off, so that its idle threads leave the cores to the next runtime.

    python benchmarks/runtime.py --threads 2 --out benchmarks/results/runtime_cpu.md
    python benchmarks/runtime.py --weights assets/dfine_n_synth.safetensors ../shared/reference/dfine_s_random_official.pth
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
from functools import partial
from pathlib import Path

import numpy as np
import torch

import dfine
from dfine.benchmark import time_interleaved
from dfine.io import load_image
from dfine.resources import asset_path
from dfine.sources import fastest_backend

RUNTIMES = ("torch", "onnxruntime", "openvino")
DEFAULT_WEIGHTS = (
    "assets/dfine_n_synth.safetensors",
    "../shared/reference/dfine_n_random_official.pth",
    "../shared/reference/dfine_s_random_official.pth",
)


def time_model(weights: str, image: np.ndarray, threads: int, rounds: int) -> dict[str, list]:
    """Milliseconds per call of each runtime, interleaved over ``rounds`` (after two warm-ups)."""
    torch.set_num_threads(threads)
    options = {
        "torch": {},
        "onnxruntime": {"threads": threads, "spinning": False},  # idle threads sleep
        "openvino": {"threads": threads},
    }
    detectors = {
        name: dfine.Detector(weights, backend=name, threshold=0.5, **options[name])
        for name in RUNTIMES
    }
    return time_interleaved({n: partial(d, image) for n, d in detectors.items()}, 2, rounds)


def table(rows: list[tuple[str, str, dict[str, list]]]) -> list[str]:
    lines = [
        "| model | input | runtime | median ms | p10 ms | p90 ms | vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, size, times in rows:
        base = statistics.median(times["torch"])
        for name in RUNTIMES:
            t = times[name]
            p10, p90 = np.percentile(t, [10, 90])
            med = statistics.median(t)
            lines.append(
                f"| {model} | {size} | {name} | {med:.1f} | {p10:.1f} | {p90:.1f} | "
                f"{base / med:.2f}× |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=list(DEFAULT_WEIGHTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    image = np.asarray(load_image(asset_path("examples", "synth", "000003.jpg")))
    rows = []
    for weights in args.weights:
        model = dfine.load_model(weights)
        size = "×".join(map(str, model.config.eval_size))
        print(f"{Path(weights).name} at {size}", flush=True)
        rows.append(
            (Path(weights).name, size, time_model(weights, image, args.threads, args.rounds))
        )
    lines = [
        "# Runtimes for a plain detection (CPU, f32, end to end)",
        "",
        f"- {dt.date.today()}, torch {torch.__version__}, {platform.machine()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; {args.threads} thread(s); "
        f"batch 1; {args.rounds} interleaved rounds after 2 warm-up calls each",
        "- command: `python benchmarks/runtime.py "
        + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None
        )
        + "`",
        "- times: `Detector(W, backend=…)(image)` with preprocessing and postprocessing; "
        "the random-init official checkpoints time like trained ones (same graph)",
        f'- `backend="fastest"` chooses here: **{fastest_backend(args.weights[0])}**',
        "",
        *table(rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
