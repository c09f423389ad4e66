"""Latency and throughput of backends x model sizes x batch sizes, against the FLOP floor.

The FLOP floor of a model is its FLOPs divided by the fp32 matrix-multiply throughput measured
in the same run; a ratio of 1.0 means the model runs as fast as a dense sgemm of equal work.
"""

from __future__ import annotations

import copy
import datetime as dt
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dfine.backends import create_backend
from dfine.export import export_onnx
from dfine.model import build_model
from dfine.precision import normalize_precision
from dfine.quantize import quantize_unguarded

# FLOPs at 640x640 (2 x multiply-accumulates), as quoted for the reference models.
REFERENCE_GFLOPS = {"n": 7.2, "s": 25.2, "m": 56.7, "l": 91.0, "x": 202.5}


def matmul_gflops(sizes: Sequence[int] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """Best fp32 sgemm throughput (GFLOP/s) over square products of the given sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def time_call(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    """Milliseconds of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


@dataclass
class Row:
    backend: str
    size: str
    batch: int
    median_ms: float
    p90_ms: float
    floor_ms: float

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch

    @property
    def throughput(self) -> float:
        return 1000.0 * self.batch / self.median_ms

    @property
    def floor_ratio(self) -> float:
        return self.per_image_ms / self.floor_ms


def _runner(
    backend: str,
    model,
    size: tuple[int, int],
    threads: int,
    workdir: Path,
    precision: str = "f32",
    throughput: bool = False,
):
    """A callable that runs ``model`` on a batch through ``backend`` at ``precision``
    (openvino: bf16 / int8 with the decoder in f32; INT8 calibrated on random images, which
    is fine for timing random weights). ``throughput``: openvino with the THROUGHPUT hint; the
    callable then takes a list of batches and runs them on parallel infer requests."""
    if precision != "f32" and backend != "openvino":
        raise ValueError(f"precision {precision} is benchmarked on openvino only, not {backend}")
    if throughput and backend != "openvino":
        raise ValueError(f"throughput mode is for openvino only, not {backend}")

    if backend in ("torch", "torch-eager"):
        net = model if backend == "torch-eager" else copy.deepcopy(model).deploy()

        def run(x, sizes):
            with torch.inference_mode():
                return net(x)

        return run
    onnx = workdir / f"{model.config.size}-{size[0]}x{size[1]}.onnx"
    if not onnx.exists():
        export_onnx(model, onnx, size=size, check_parity=False)
    options = {"threads": threads} if backend in ("onnxruntime", "openvino") else {}
    if backend == "openvino":
        options["hint"] = "throughput" if throughput else "latency"
        if precision == "int8":
            ir = onnx.with_name(onnx.stem + "-int8.xml")
            if not ir.exists():
                torch.manual_seed(0)
                quantize_unguarded(onnx, ir, [torch.rand(1, 3, *size) for _ in range(8)])
            onnx = ir
        else:
            options["precision"] = precision
    engine = create_backend(backend, onnx, **options)
    return engine.detect_many if throughput else engine.detect


def run_benchmark(
    backends: Sequence[str] = ("torch-eager", "torch", "onnxruntime", "openvino"),
    sizes: Sequence[str] = ("n", "s"),
    batches: Sequence[int] = (1,),
    input_size: int = 640,
    threads: int = 2,
    warmup: int = 3,
    iters: int = 10,
    progress: bool = True,
    precisions: Sequence[str] = ("f32",),
    throughput: bool = False,
) -> tuple[list[Row], float]:
    """Time every combination; returns the rows and the measured sgemm GFLOP/s.
    ``precisions`` other than f32 add openvino rows (``openvino-bf16``, ``openvino-int8``).
    ``throughput``: openvino rows also in throughput mode (THROUGHPUT hint, ``iters`` batches
    in flight on parallel infer requests; the median is the wall time per batch)."""
    torch.set_num_threads(threads)
    peak = matmul_gflops()
    rows: list[Row] = []
    precisions = [normalize_precision(p) for p in precisions]
    combos = [(s, b, "f32", False) for s in sizes for b in backends]
    if "openvino" in backends:
        combos += [(s, "openvino", p, False) for s in sizes for p in precisions if p != "f32"]
        if throughput:
            combos += [(s, "openvino", p, True) for s in sizes for p in precisions]
    bar = tqdm(combos, desc="benchmark", disable=not progress)
    hw = (input_size, input_size)
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for size, backend, precision, many in bar:
            label = backend + ("" if precision == "f32" else f"-{precision}")
            label += " (throughput)" if many else ""
            bar.set_postfix_str(f"{size.upper()} {label}")
            model = models.setdefault(size, build_model(size).eval())
            run = _runner(backend, model, hw, threads, Path(tmp), precision, many)
            floor = REFERENCE_GFLOPS[size] * (input_size / 640) ** 2 / peak * 1000
            for batch in batches:
                x = torch.rand(batch, 3, *hw)
                sizes_t = torch.tensor([[input_size, input_size]] * batch)
                if many:
                    work = [(x, sizes_t)] * iters
                    total = time_call(lambda w=work, run=run: run(w), 1, 3)
                    times = [t / iters for t in total]
                else:
                    times = time_call(lambda x=x, s=sizes_t, run=run: run(x, s), warmup, iters)
                rows.append(
                    Row(label, size.upper(), batch, statistics.median(times), p90(times), floor)
                )
    return rows, peak


def markdown(rows: Sequence[Row], peak: float, input_size: int, threads: int, iters: int) -> str:
    lines = [
        f"# Inference benchmark, {input_size}x{input_size}, {threads} threads",
        "",
        f"- date: {dt.date.today().isoformat()}; torch {torch.__version__}; "
        f"{platform.machine()}; CPU capability {torch.backends.cpu.get_cpu_capability()}",
        f"- fp32 matmul throughput (best square sgemm of 1024/2048/4096, same run): **{peak:.1f} GFLOP/s**",
        "- floor = the model's FLOPs (reference figures) / that throughput, per image;"
        " ratio = per-image median / floor",
        f"- median and p90 of {iters} timed runs; random-init weights; torch-eager = the"
        " reference's arithmetic, torch = `model.deploy()`, onnxruntime/openvino = exported"
        " ONNX with in-graph postprocessing (fp32); openvino-bf16/-int8 = backbone + encoder"
        " reduced, decoder f32; (throughput) = THROUGHPUT hint, batches on parallel requests",
        "",
        "| backend | size | batch | median ms | p90 ms | ms / image | images / s | floor ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.size} | {r.batch} | {r.median_ms:.1f} | {r.p90_ms:.1f} | "
            f"{r.per_image_ms:.1f} | {r.throughput:.1f} | {r.floor_ms:.1f} | {r.floor_ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"
