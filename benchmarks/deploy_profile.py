"""Where ``model.deploy()`` spends its time on the CPU, per size, beside the eager model.

Times the eager model (the reference's arithmetic) and ``deploy()`` interleaved (batch 1,
640², random-init official architecture), then profiles the deployed model with
``torch.profiler`` and lists the operators by self time, and the split backbone / encoder /
decoder. Writes a Markdown file.

    python benchmarks/deploy_profile.py --sizes n s l --out benchmarks/results/deploy_profile_cpu.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import dfine
from dfine.benchmark import time_interleaved


def interleaved(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int) -> dict:
    with torch.inference_mode():
        times = time_interleaved({k: partial(m, x) for k, m in models.items()}, 2, rounds)
    return {k: statistics.median(v) for k, v in times.items()}


def stages(model: dfine.DFINE, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms of the backbone, the encoder and the decoder (with postprocessing inputs)."""
    out = {"backbone": [], "encoder": [], "decoder": []}
    with torch.inference_mode():
        for _ in range(rounds):
            t0 = time.perf_counter()
            feats = model.backbone(x)
            t1 = time.perf_counter()
            memory = model.encoder(feats)
            t2 = time.perf_counter()
            model.decoder(memory)
            t3 = time.perf_counter()
            for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
                out[k].append(1000 * v)
    return {k: statistics.median(v) for k, v in out.items()}


def top_ops(model: torch.nn.Module, x: torch.Tensor, rows: int) -> list[tuple[str, float, int]]:
    """(operator, self ms per forward, calls per forward), the most expensive first."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        (e.key, e.self_cpu_time_total / 3000, e.count // 3, e.self_cpu_time_total / total)
        for e in events[:rows]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["n", "s", "l"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, 640, 640)
    load = os.getloadavg()[0]
    lines = [
        "# Where deploy() spends its time (CPU, 640², batch 1)",
        "",
        f"- {dt.date.today()}, torch {torch.__version__}, {platform.machine()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; {args.threads} threads; load average "
        f"{load:.2f} at the start; random-init models",
        f"- command: `python benchmarks/deploy_profile.py --sizes {' '.join(args.sizes)} "
        f"--threads {args.threads} --rounds {args.rounds}`",
        "- eager = the reference's arithmetic; deploy = `model.deploy()`; interleaved rounds",
        "",
        "| size | eager ms | deploy ms | deploy speed-up | backbone ms | encoder ms | decoder ms |",
        "|---|---|---|---|---|---|---|",
    ]
    profiles = []
    for size in args.sizes:
        torch.manual_seed(0)
        eager = dfine.build_model(size).eval()
        deployed = dfine.build_model(size).eval()
        deployed.load_state_dict(eager.state_dict())
        deployed.deploy()
        med = interleaved({"eager": eager, "deploy": deployed}, x, args.rounds)
        split = stages(deployed, x.contiguous(memory_format=torch.channels_last), args.rounds)
        lines.append(
            f"| {size.upper()} | {med['eager']:.1f} | {med['deploy']:.1f} | "
            f"{med['eager'] / med['deploy']:.2f}× | {split['backbone']:.1f} | "
            f"{split['encoder']:.1f} | {split['decoder']:.1f} |"
        )
        profiles.append((size, top_ops(deployed, x, args.rows)))
        print(lines[-1], flush=True)
    for size, ops in profiles:
        lines += [
            "",
            f"## D-FINE-{size.upper()} deployed: operators by self time",
            "",
            "| operator | ms per forward | calls per forward | share |",
            "|---|---|---|---|",
            *[f"| `{k}` | {ms:.1f} | {n} | {100 * share:.1f} % |" for k, ms, n, share in ops],
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
