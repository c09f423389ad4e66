"""What recording the attention costs: ``model.trace(x)`` against ``model.trace(x,
attention=False)`` on the CPU, interleaved in one process.

Each round runs both once, in alternating order (ABBA), on one image; the ratio is the median
of the per-round ratios (with the medians of each side). Cases: the demo model (D-FINE-N on
the synthetic shapes) at 320², and a random D-FINE-N at 640².

    nice -n 10 python benchmarks/attention_trace.py [--rounds 30] [--threads 2] \\
        [--out benchmarks/results/attention_trace_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

import dfine
from dfine.resources import demo_weights


def _seconds(model: torch.nn.Module, x: torch.Tensor, attention: bool) -> float:
    t0 = time.perf_counter()
    model.trace(x, attention=attention)
    return time.perf_counter() - t0


def measure(model: torch.nn.Module, size: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds with and without attention, and the median per-round ratio."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(warmup):
        _seconds(model, x, True), _seconds(model, x, False)
    with_attn, without, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            a, b = _seconds(model, x, True), _seconds(model, x, False)
        else:
            b, a = _seconds(model, x, False), _seconds(model, x, True)
        with_attn.append(a)
        without.append(b)
        ratios.append(a / b)
    return {
        "with": statistics.median(with_attn),
        "without": statistics.median(without),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the lines here (.md)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("demo model (D-FINE-N, synthetic shapes)", dfine.load_model(demo_weights()), 320),
        ("D-FINE-N, random init", dfine.build_model("n").eval(), 640),
    ]
    lines = []
    for name, model, size in cases:
        m = measure(model, size, args.rounds, args.warmup)
        lines.append(
            f"- {name}, {size}x{size}, batch 1, {args.threads} threads: trace with attention "
            f"{m['with'] * 1000:.1f} ms, without {m['without'] * 1000:.1f} ms (medians over "
            f"{args.rounds} interleaved rounds); ratio {m['ratio']:.3f}x (median per round)"
        )
        print(lines[-1], flush=True)
    if args.out is not None:
        head = (
            f"# Cost of tracing the attention (CPU)\n\n- {datetime.date.today()}, torch "
            f"{torch.__version__}, {platform.machine()}; `nice -n 10 python "
            f"benchmarks/attention_trace.py --rounds {args.rounds} --threads {args.threads}`\n"
        )
        args.out.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
