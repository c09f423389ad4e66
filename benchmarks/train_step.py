"""Seconds per training step on the CPU: N model, batch 4, 640x640, denoising on.

One step = forward (with contrastive denoising queries), the full D-FINE criterion, backward,
gradient clipping (0.1), AdamW and the EMA update — `Trainer.train_step`, as `dfine train` runs
it. The fp32 sgemm throughput is measured in the same run (as for benchmarks/latency.py) so
numbers from different machines can be compared.

    python benchmarks/train_step.py [--steps 10] [--batch 4] [--size 640] [--threads 2] \\
        [--out benchmarks/results/train_step_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import dfine
from dfine.benchmark import matmul_gflops, p90
from dfine.train.recipes import get_recipe
from dfine.train.trainer import Trainer, TrainOptions


def random_batch(batch: int, size: int, num_classes: int, generator: torch.Generator):
    images = torch.rand(batch, 3, size, size, generator=generator)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(2, 9, (1,), generator=generator))
        centers = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        targets.append(
            {
                "boxes": torch.cat([centers, sizes], 1),
                "labels": torch.randint(0, num_classes, (n,), generator=generator),
            }
        )
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="n", choices=list("nslmx"))
    parser.add_argument("--out", type=Path, default=None, help="also write the line here (.md)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_gflops()
    model = dfine.build_model(args.model, num_classes=80)
    recipe = get_recipe(f"coco_{args.model}").replace(batch_size=args.batch, amp=False)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch, args.size, 80, gen) for _ in range(4)]
    with tempfile.TemporaryDirectory() as out:
        options = TrainOptions(out_dir=out, device="cpu", progress=False, tensorboard=False)
        trainer = Trainer(model, recipe, batches, None, options=options)
        times = []
        for i in range(args.warmup + args.steps):
            images, targets = batches[i % len(batches)]
            t = time.perf_counter()
            trainer.train_step(images, targets, epoch=0, step=i)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    line = (
        f"train step, D-FINE-{args.model.upper()}, batch {args.batch}, {args.size}x{args.size}, "
        f"denoising on, {args.threads} threads: median {statistics.median(times):.2f} s, "
        f"p90 {p90(times):.2f} s over {args.steps} steps (after {args.warmup} warm-up); "
        f"fp32 sgemm {peak:.0f} GFLOP/s in the same run"
    )
    print(line)
    if args.out:
        stamp = f"{datetime.date.today()}, torch {torch.__version__}, {platform.machine()}"
        args.out.write_text(f"# CPU training step\n\n- {stamp}\n- {line}\n")


if __name__ == "__main__":
    main()
