"""CPU latency of D-FINE per size: eager (reference arithmetic) vs deployed (fused).

Prints ms/image (median, p90) at the given input size, batch 1, and each size's ratio to its
FLOP floor: the model's FLOPs divided by the fp32 matrix-multiply throughput measured in the
same run (best of several large square sgemm runs). Writes a Markdown table.

    python benchmarks/latency.py                       # all sizes, 2 threads, 640x640
    python benchmarks/latency.py --sizes n s --iters 30 --out benchmarks/results/latency_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import statistics
from pathlib import Path

import torch

import dfine
from dfine.benchmark import REFERENCE_GFLOPS, matmul_gflops, p90, time_call


def counted_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs PyTorch's FlopCounterMode counts for one forward (convs, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def time_model(model: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int) -> list[float]:
    with torch.inference_mode():
        return time_call(lambda: model(x), warmup, iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=list(REFERENCE_GFLOPS), choices=list(REFERENCE_GFLOPS)
    )
    parser.add_argument("--input", type=int, default=640, help="square input size (default 640)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.input, args.input)
    peak = matmul_gflops()
    rows = []
    for size in args.sizes:
        model = dfine.build_model(size).eval()
        deployed = copy.deepcopy(model).deploy()
        counted = counted_gflops(model, x)
        eager = time_model(model, x, args.warmup, args.iters)
        fused = time_model(deployed, x, args.warmup, args.iters)
        gflops = REFERENCE_GFLOPS[size] * (args.input / 640) ** 2
        floor_ms = gflops / peak * 1000
        row = {
            "size": size.upper(),
            "gflops": gflops,
            "counted": counted,
            "floor": floor_ms,
            "eager_med": statistics.median(eager),
            "eager_p90": p90(eager),
            "deploy_med": statistics.median(fused),
            "deploy_p90": p90(fused),
        }
        row["eager_ratio"] = row["eager_med"] / floor_ms
        row["deploy_ratio"] = row["deploy_med"] / floor_ms
        rows.append(row)
        print(
            f"{row['size']}: eager {row['eager_med']:.1f} ms (p90 {row['eager_p90']:.1f}, "
            f"{row['eager_ratio']:.2f}x floor), deploy {row['deploy_med']:.1f} ms "
            f"(p90 {row['deploy_p90']:.1f}, {row['deploy_ratio']:.2f}x floor); floor "
            f"{floor_ms:.1f} ms",
            flush=True,
        )
        del model, deployed

    lines = [
        f"# CPU latency, {args.input}x{args.input}, batch 1, {args.threads} threads",
        "",
        f"- date: {dt.date.today().isoformat()}; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        f"- fp32 matmul throughput (best square sgemm of 1024/2048/4096, same run): **{peak:.1f} GFLOP/s**",
        "- FLOP floor = the model's FLOPs (reference figures, 2 x MACs) / that throughput;"
        " ratio = median latency / floor",
        f"- {args.iters} timed runs after {args.warmup} warm-up runs; random-init weights"
        " (latency does not depend on the values)",
        "- eager = the reference's arithmetic (bit-identical outputs to the reference code);"
        " deploy = `model.deploy()`: conv+BN folded, RepVGG merged, ReLU+LAB as one clamp,"
        " fused attention, channels-last (same outputs to ~1e-6)",
        "",
        "| size | GFLOPs (ref) | GFLOPs (counted) | floor ms | eager ms (median / p90) |"
        " eager / floor | deploy ms (median / p90) | deploy / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['gflops']:.1f} | {r['counted']:.1f} | {r['floor']:.1f} | "
            f"{r['eager_med']:.1f} / {r['eager_p90']:.1f} | {r['eager_ratio']:.2f}x | "
            f"{r['deploy_med']:.1f} / {r['deploy_p90']:.1f} | {r['deploy_ratio']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
