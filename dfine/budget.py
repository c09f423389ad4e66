"""The accuracy–latency trade of the decoder's inference budget: decoder depth K (the
reference's ``eval_idx + 1``) × query budget Q × runtime, measured on one validation split.

    val = load_val("data/synth", limit=300)
    sweep = sweep_budgets("dfine_n_synth.safetensors", val, layers=(1, 2, 3), queries=(100, 300))
    print(sweep.markdown())     # AP, AP50, AP75, median ms / image, Pareto front marked

Every image is run through every configuration in turn (the order rotates from image to
image), so the latencies are measured interleaved on the same inputs and the machine's drift
falls on all of them alike. A point is on the Pareto front when no other point is at least as
fast and at least as accurate (AP), and strictly better in one of the two.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from dfine.argtypes import SWEEP_RUNTIMES
from dfine.backends import create_backend
from dfine.backends.torch_backend import TorchBackend
from dfine.checkpoint import load_model
from dfine.errors import InvalidArgumentError
from dfine.guard import ValSet, coco_records, load_inputs
from dfine.model import DFINE
from dfine.postprocess import BatchDetections
from dfine.train.evaluate import coco_metrics

DEFAULT_QUERIES = (100, 300)

Detect = Callable[[torch.Tensor, torch.Tensor], BatchDetections]


@dataclass(frozen=True)
class BudgetPoint:
    """One configuration's accuracy (COCO, 0..1) and median latency per image (ms)."""

    runtime: str
    decoder_layers: int
    num_queries: int
    AP: float
    AP50: float
    AP75: float
    median_ms: float
    pareto: bool = False

    @property
    def label(self) -> str:
        return f"{self.runtime} K={self.decoder_layers} Q={self.num_queries}"


@dataclass(frozen=True)
class BudgetSweep:
    """The measured grid (see the module docstring); ``points`` in sweep order."""

    weights: str
    source: str
    images: int
    input_size: tuple[int, int]
    threads: int
    points: tuple[BudgetPoint, ...]

    def to_dict(self) -> dict:
        """JSON-ready: the settings and one dict per point (``metrics.json``'s
        ``budget_sweep``)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BudgetSweep:
        points = tuple(BudgetPoint(**p) for p in d["points"])
        return cls(
            d["weights"], d["source"], d["images"], tuple(d["input_size"]), d["threads"], points
        )

    def markdown(self) -> str:
        """The table (AP in points), Pareto-front rows marked ★."""
        lines = [
            "| runtime | decoder layers K | queries Q | AP | AP50 | AP75 | median ms / image "
            "| Pareto |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in self.points:
            lines.append(
                f"| {p.runtime} | {p.decoder_layers} | {p.num_queries} | {100 * p.AP:.1f} | "
                f"{100 * p.AP50:.1f} | {100 * p.AP75:.1f} | {p.median_ms:.2f} | "
                f"{'★' if p.pareto else ''} |"
            )
        return "\n".join(lines) + "\n"


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[bool]:
    """For each point: True when no other point is at least as fast and as accurate and
    strictly better in one (lower ``latency``, higher ``accuracy``)."""
    if len(latency) != len(accuracy):
        raise ValueError(f"{len(latency)} latencies but {len(accuracy)} accuracies")
    pts = list(zip(latency, accuracy))
    return [
        not any(
            lo <= li and ao >= ai and (lo < li or ao > ai)
            for j, (lo, ao) in enumerate(pts)
            if j != i
        )
        for i, (li, ai) in enumerate(pts)
    ]


def default_layers(num_layers: int) -> tuple[int, ...]:
    """A small default depth grid: 1, the middle and every layer (deduplicated)."""
    return tuple(sorted({1, (num_layers + 1) // 2, num_layers}))


def sweep_budgets(
    weights: str | os.PathLike | DFINE,
    val: ValSet,
    *,
    layers: Sequence[int] | None = None,
    queries: Sequence[int] | None = None,
    runtimes: Sequence[str] = ("torch",),
    threads: int = 2,
    warmup: int = 2,
    progress: bool = True,
) -> BudgetSweep:
    """AP / AP50 / AP75 and median ms per image of every ``runtimes`` × ``layers`` ×
    ``queries`` on ``val`` (batch 1, the model's input size, ``threads`` CPU threads for
    every runtime; torch's thread count is restored afterwards).

    ``weights``: a checkpoint or zoo name (onnxruntime / openvino export it once per budget,
    cached) or a ``DFINE`` model (torch only). Defaults: :func:`default_layers` and
    :data:`DEFAULT_QUERIES` (capped at the model's queries)."""
    unknown = [r for r in runtimes if r not in SWEEP_RUNTIMES]
    if unknown or not runtimes:
        raise InvalidArgumentError(
            f"sweep runtimes must be some of {', '.join(SWEEP_RUNTIMES)}, got {list(runtimes)}"
        )
    model = weights if isinstance(weights, DFINE) else load_model(weights)
    if isinstance(weights, DFINE) and set(runtimes) != {"torch"}:
        raise InvalidArgumentError("a model object is swept on torch only; pass its checkpoint")
    cfg = model.config.decoder
    layers = tuple(layers or default_layers(cfg.num_layers))
    queries = tuple(queries or sorted({min(q, cfg.num_queries) for q in DEFAULT_QUERIES}))
    size = tuple(int(s) for s in model.config.eval_size)
    grid = [(r, k, q) for r in runtimes for k in layers for q in queries]
    runners = {key: _runner(key, weights, model, threads) for key in grid}  # checks K and Q
    records: dict[tuple, list[dict]] = {key: [] for key in grid}
    times: dict[tuple, list[float]] = {key: [] for key in grid}
    items = list(zip(val.images, val.image_ids))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored afterwards
    try:
        first = load_inputs(val.images[:1], size)[0]
        for key in grid:  # warm-up: first calls allocate and compile
            for _ in range(warmup):
                runners[key](*first)
        bar = tqdm(items, desc="budget sweep", disable=not progress)
        for i, (path, image_id) in enumerate(bar):
            ((x, sizes),) = load_inputs([path], size)
            for key in grid[i % len(grid) :] + grid[: i % len(grid)]:  # rotating order
                start = time.perf_counter()
                found = runners[key](x, sizes)
                times[key].append(1000 * (time.perf_counter() - start))
                records[key] += coco_records(found, image_id, val)
    finally:
        torch.set_num_threads(before)
    raw = []
    for key in grid:
        m = coco_metrics(val.ground_truth, records[key], image_ids=val.image_ids)
        raw.append((key, m, statistics.median(times[key])))
    front = pareto_front([r[2] for r in raw], [r[1]["AP"] for r in raw])
    points = tuple(
        BudgetPoint(rt, k, q, float(m["AP"]), float(m["AP50"]), float(m["AP75"]), ms, on)
        for ((rt, k, q), m, ms), on in zip(raw, front)
    )
    label = f"D-FINE-{model.config.size.upper()} (a model object)"
    return BudgetSweep(
        label if isinstance(weights, DFINE) else str(weights),
        val.source,
        len(items),
        size,
        threads,
        points,
    )


def _runner(key: tuple[str, int, int], weights, model: DFINE, threads: int) -> Detect:
    """The detect call of one configuration (torch: a deployed copy of ``model``; the others
    an export of ``weights`` at that budget, cached)."""
    runtime, k, q = key
    if runtime == "torch":
        net = copy.deepcopy(model).eval()
        net = (net if net.deployed else net.deploy()).set_decoder_budget(k, q)
        return TorchBackend(net, deploy=False).detect
    options = {"spinning": False} if runtime == "onnxruntime" else {}  # timed interleaved
    return create_backend(
        runtime, weights, decoder_layers=k, num_queries=q, threads=threads, **options
    ).detect
