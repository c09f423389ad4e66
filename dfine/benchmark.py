"""Latency and throughput of backends x model sizes x batch sizes, against the FLOP floor.

The FLOP floor of a model is its FLOPs divided by the fp32 matrix-multiply throughput measured
in the same run; a ratio of 1.0 means the model runs as fast as a dense sgemm of equal work.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from dfine.backends import create_backend
from dfine.checkpoint import load_model
from dfine.errors import InvalidArgumentError
from dfine.export import export_onnx, read_metadata
from dfine.model import DFINE, build_model, decoder_budget
from dfine.precision import normalize_precision
from dfine.quantize import quantize_unguarded
from dfine.sources import default_backend

K = TypeVar("K", bound=Hashable)

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


def time_interleaved(
    calls: Mapping[K, Callable[[], object]], warmup: int, rounds: int, rotate: bool = False
) -> dict[K, list[float]]:
    """Milliseconds of each call over ``rounds`` rounds, every call once per round (after
    ``warmup`` untimed calls each), so that a machine's slow moments fall on all of them;
    ``rotate``: each round starts one call later, so none is always first."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    keys = list(calls)
    times: dict[K, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        shift = i % len(keys) if rotate else 0
        for k in keys[shift:] + keys[:shift]:
            t = time.perf_counter()
            calls[k]()
            times[k].append((time.perf_counter() - t) * 1000)
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
    input_hw: tuple[int, int] = (640, 640)
    budget: tuple[int, int] | None = None  # (decoder layers, queries) when swept

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
    budget: tuple[int, int] | None = None,
    spinning: bool = True,
):
    """A callable that runs ``model`` on a batch through ``backend`` at ``precision``
    (openvino: bf16 / int8 with the decoder in f32; INT8 calibrated on random images, which
    is fine for timing random weights). ``throughput``: openvino with the THROUGHPUT hint; the
    callable then takes a list of batches and runs them on parallel infer requests."""
    if precision != "f32" and backend != "openvino":
        raise InvalidArgumentError(
            f"precision {precision} is benchmarked on openvino only, not {backend}"
        )
    if throughput and backend != "openvino":
        raise InvalidArgumentError(f"throughput mode is for openvino only, not {backend}")

    if budget is not None:  # the first K decoder layers on the top Q proposals
        model = copy.deepcopy(model).eval().set_decoder_budget(*budget)
    if backend in ("torch", "torch-eager"):
        net = model if backend == "torch-eager" else copy.deepcopy(model).deploy()

        def run(x, sizes):
            with torch.inference_mode():
                return net(x)

        return run
    tag = "" if budget is None else f"-k{budget[0]}q{budget[1]}"
    onnx = workdir / f"{model.config.size}-{size[0]}x{size[1]}{tag}.onnx"
    if not onnx.exists():
        export_onnx(model, onnx, size=size, check_parity=False)
    options = {"threads": threads} if backend in ("onnxruntime", "openvino") else {}
    if backend == "onnxruntime":
        options["spinning"] = spinning  # False: timed interleaved with other runtimes
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
    backends: Sequence[str] | None = None,
    sizes: Sequence[str] = ("n", "s"),
    batches: Sequence[int] = (1,),
    input_size: int | None = None,
    threads: int = 2,
    warmup: int = 3,
    iters: int = 10,
    progress: bool = True,
    precisions: Sequence[str] | None = None,
    throughput: bool = False,
    weights: str | os.PathLike | None = None,
    matmul_sizes: Sequence[int] = (1024, 2048, 4096),
    family: str | None = None,
    decoder_layers: Sequence[int] | None = None,
    num_queries: Sequence[int] | None = None,
) -> tuple[list[Row], float]:
    """Time every combination; returns the rows and the measured sgemm GFLOP/s.

    ``weights``: ``None`` times random-init models of every ``sizes`` at ``input_size``
    (default 640); otherwise one model from any source :class:`~dfine.Detector` takes — a
    checkpoint, Hugging Face folder or zoo name (timed on every ``backends``, at its own
    input size unless ``input_size`` is given) or an exported ``.onnx`` / OpenVINO ``.xml``
    (timed on ``backends``, default the runtime the file is for, at its export size).
    ``precisions`` other than f32 add openvino rows (``openvino-bf16``, ``openvino-int8``);
    for an exported file they are passed to its runtime (default: the file's own).
    ``throughput``: openvino rows also in throughput mode (THROUGHPUT hint, ``iters`` batches
    in flight on parallel infer requests; the median is the wall time per batch).
    ``matmul_sizes``: the square sgemm sizes the FLOP floor's throughput is measured on.
    ``family``: ``dfine`` or ``deim`` (see :data:`dfine.config.FAMILIES`) for the random-init
    models, or for ``weights`` whose metadata and name do not say it.
    ``decoder_layers`` / ``num_queries``: sweep the decoder's inference budget (every K × Q
    on every backend; one default side left out is the model's own: every layer, 300)."""
    torch.set_num_threads(threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        budgets = None
        if decoder_layers or num_queries:
            budgets = [(k, q) for k in decoder_layers or [None] for q in num_queries or [None]]
        if weights is not None and Path(weights).suffix.lower() in EXPORTED_SUFFIXES:
            if family is not None:
                raise InvalidArgumentError(
                    f"{Path(weights).name} is an export, which records its own family; "
                    "leave out the family"
                )
            if budgets:
                raise InvalidArgumentError(
                    f"{Path(weights).name} is exported with a fixed decoder budget; time its "
                    "checkpoint to sweep --decoder-layers / --num-queries"
                )
            jobs = list(_exported_jobs(weights, backends, input_size, threads, precisions))
        else:  # the weights are read (and bad ones reported) before anything is timed
            jobs = list(
                _model_jobs(
                    weights,
                    backends,
                    sizes,
                    input_size,
                    threads,
                    precisions,
                    throughput,
                    Path(tmp),
                    budgets,
                    family,
                )
            )
        peak = matmul_gflops(matmul_sizes)
        bar = tqdm(jobs, desc="benchmark", disable=not progress)
        for label, size, hw, many, make_run, budget in bar:
            bar.set_postfix_str(f"{size} {label}")
            run = make_run()
            gflops = REFERENCE_GFLOPS.get(size.lower(), float("nan"))
            floor = gflops * hw[0] * hw[1] / 640**2 / peak * 1000
            for batch in batches:
                x = torch.rand(batch, 3, *hw)
                sizes_t = torch.tensor([[hw[1], hw[0]]] * batch)
                if many:
                    work = [(x, sizes_t)] * iters
                    total = time_call(lambda w=work, run=run: run(w), 1, 3)
                    times = [t / iters for t in total]
                else:
                    times = time_call(lambda x=x, s=sizes_t, run=run: run(x, s), warmup, iters)
                median = statistics.median(times)
                rows.append(Row(label, size, batch, median, p90(times), floor, hw, budget))
    return rows, peak


DEFAULT_BACKENDS = ("torch-eager", "torch", "onnxruntime", "openvino")
EXPORTED_SUFFIXES = (".onnx", ".xml")

# (row label, model size, input (h, w), throughput mode, build the timed callable,
#  decoder budget (K, Q) or None)
Job = tuple[str, str, tuple[int, int], bool, Callable[[], Callable], tuple[int, int] | None]


def _model_jobs(
    weights: str | os.PathLike | None,
    backends: Sequence[str] | None,
    sizes: Sequence[str],
    input_size: int | None,
    threads: int,
    precisions: Sequence[str] | None,
    throughput: bool,
    workdir: Path,
    budgets: Sequence[tuple[int | None, int | None]] | None = None,
    family: str | None = None,
) -> Iterator[Job]:
    """Random-init models of ``sizes`` (``weights`` None) or the one model ``weights`` loads;
    each at every ``budgets`` (K, Q) when given (None: the model's own)."""
    backends = list(backends or DEFAULT_BACKENDS)
    precisions = [normalize_precision(p) for p in precisions or ["f32"]]
    models: dict[str, Callable[[], DFINE]] = {}
    if weights is None:
        for size in sizes:
            models[size] = lambda size=size: build_model(size, family=family or "dfine").eval()
    else:
        loaded = load_model(
            weights, family=family
        ).eval()  # fails here, before any timing, if unreadable
        models[loaded.config.size] = lambda: loaded
    combos = [(s, b, "f32", False) for s in models for b in backends]
    if "openvino" in backends:
        combos += [(s, "openvino", p, False) for s in models for p in precisions if p != "f32"]
        if throughput:
            combos += [(s, "openvino", p, True) for s in models for p in precisions]
    built: dict[str, DFINE] = {}
    for size, backend, precision, many in combos:
        label = backend + ("" if precision == "f32" else f"-{precision}")
        label += " (throughput)" if many else ""
        model = built.setdefault(size, models[size]())
        hw = (input_size, input_size) if input_size else _own_size(model, weights)
        for budget in _resolved(budgets, model):

            def make(backend=backend, model=model, hw=hw, precision=precision, many=many, b=budget):
                return _runner(backend, model, hw, threads, workdir, precision, many, b)

            yield label, size.upper(), hw, many, make, budget


def _resolved(
    budgets: Sequence[tuple[int | None, int | None]] | None, model: DFINE
) -> list[tuple[int, int] | None]:
    """``budgets`` with None filled in from ``model`` (every layer, its queries), each checked
    (a bad K or Q is reported before anything is timed); ``[None]`` without a sweep."""
    if not budgets:
        return [None]
    return [decoder_budget(model.config.decoder, k, q) for k, q in budgets]


def _own_size(model: DFINE, weights: object) -> tuple[int, int]:
    """A random-init model: 640²; a loaded one: the input size it was trained at."""
    if weights is None:
        return (640, 640)
    h, w = model.config.eval_size
    return (int(h), int(w))


def _exported_jobs(
    weights: str | os.PathLike,
    backends: Sequence[str] | None,
    input_size: int | None,
    threads: int,
    precisions: Sequence[str] | None,
) -> Iterator[Job]:
    """An exported file on each runtime of ``backends`` (default: the one it is for)."""
    backends = list(backends or [default_backend(weights)])
    torchy = [b for b in backends if b.startswith("torch")]
    if torchy:
        raise InvalidArgumentError(
            f"{Path(weights).name} is an exported model: it runs on onnxruntime, openvino or "
            f"tensorrt, not {torchy[0]}; time a checkpoint (.pth/.safetensors) for torch"
        )
    meta = read_metadata(weights)
    hw = tuple(int(v) for v in meta["input_size"])
    if input_size and (input_size, input_size) != hw:
        raise InvalidArgumentError(
            f"{Path(weights).name} was exported at {hw[0]}x{hw[1]}; its input size is fixed "
            f"(leave out --input, or export again with --size {input_size})"
        )
    size = str(meta.get("size") or "?").upper()
    for backend in backends:
        for precision in precisions or [None]:
            label = backend + ("" if precision in (None, "f32") else f"-{precision}")
            options: dict = {"threads": threads} if backend != "tensorrt" else {}
            if precision is not None:
                options["precision"] = normalize_precision(precision)

            def make(backend=backend, options=options):
                return create_backend(backend, weights, **options).detect

            yield label, size, hw, False, make, None


def markdown(
    rows: Sequence[Row],
    peak: float,
    input_size: int | None,
    threads: int,
    iters: int,
    weights: str | os.PathLike | None = None,
) -> str:
    """The rows as a Markdown table with how they were measured (``weights``: what was timed;
    ``None``: random-init models)."""
    inputs = sorted({f"{r.input_hw[0]}x{r.input_hw[1]}" for r in rows})
    shown = ", ".join(inputs) or f"{input_size or 640}x{input_size or 640}"
    timed = "random-init weights" if weights is None else f"weights `{weights}`"
    lines = [
        f"# Inference benchmark, {shown}, {threads} threads",
        "",
        f"- date: {dt.date.today().isoformat()}; torch {torch.__version__}; "
        f"{platform.machine()}; CPU capability {torch.backends.cpu.get_cpu_capability()}",
        f"- fp32 matmul throughput (best square sgemm of 1024/2048/4096, same run): **{peak:.1f} GFLOP/s**",
        "- floor = the model's FLOPs (reference figures) / that throughput, per image;"
        " ratio = per-image median / floor",
        f"- median and p90 of {iters} timed runs; {timed}; torch-eager = the"
        " reference's arithmetic, torch = `model.deploy()`, onnxruntime/openvino = exported"
        " ONNX with in-graph postprocessing (fp32); openvino-bf16/-int8 = backbone + encoder"
        " reduced, decoder f32; (throughput) = THROUGHPUT hint, batches on parallel requests",
        "",
        "| backend | size | batch | median ms | p90 ms | ms / image | images / s | floor ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    swept = any(r.budget for r in rows)
    if swept:  # decoder layers K and queries Q after the size
        lines[-2] = lines[-2].replace("| size |", "| size | K | Q |")
        lines[-1] += "---|---|"
    for r in rows:
        budget = f" {r.budget[0]} | {r.budget[1]} |" if r.budget else " — | — |"
        lines.append(
            f"| {r.backend} | {r.size} |{budget if swept else ''} {r.batch} | {r.median_ms:.1f} | "
            f"{r.p90_ms:.1f} | {r.per_image_ms:.1f} | {r.throughput:.1f} | {r.floor_ms:.1f} | "
            f"{r.floor_ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"
