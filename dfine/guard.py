"""The accuracy guard of reduced-precision exports: a reduced graph measured against f32.

With a validation set (COCO folder or json, or a YOLO image folder with ``data.yaml``), the
guard computes COCO AP / AP50 / AP75 of both and refuses the reduced graph when AP drops by
more than ``max_ap_drop`` points. Without one, it measures the drift of the reduced graph's
confident detections on sample images: each f32 detection (score >= ``DRIFT_MIN_SCORE``) is
paired with the reduced detection of the same label that overlaps it most (so a changed query
order does not count as drift), and the 95th percentiles of box drift (fraction of the image
side) and score drift, and the share of lost detections, are bounded.

    val = load_val("data/synth", limit=300)
    result = guard_val(f32_backend, reduced_backend, val, max_ap_drop=0.5)
    result.check()        # PrecisionGuardError with one line when beyond the bound
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from dfine.backends.base import onnx_for
from dfine.backends.openvino import OpenVINOBackend
from dfine.data.yolo import YoloDetection
from dfine.errors import InputFileError, InvalidArgumentError, PrecisionGuardError
from dfine.io import load_image
from dfine.postprocess import BatchDetections
from dfine.predict import to_input_tensor
from dfine.resources import asset_path
from dfine.train.data import resolve_split
from dfine.train.evaluate import coco_metrics

DEFAULT_MAX_AP_DROP = 0.5  # AP points (0..100 scale)
DRIFT_MIN_SCORE = 0.3
DRIFT_BOX_TOL = 0.02  # 95th percentile of max |Δ coordinate| / image side
DRIFT_SCORE_TOL = 0.1  # 95th percentile of |Δ score|
DRIFT_MAX_LOST = 0.05  # share of confident f32 detections without a partner (IoU < 0.5)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

Detect = Callable[[torch.Tensor, torch.Tensor], BatchDetections]


@dataclass(frozen=True)
class ValSet:
    """Images with COCO ground truth; ``label_to_category`` maps model labels to its ids."""

    images: tuple[Path, ...]
    image_ids: tuple[int, ...]
    ground_truth: dict = field(repr=False)
    label_to_category: dict[int, int] = field(repr=False)
    source: str = ""


def load_val(
    data: str | os.PathLike, limit: int | None = None, images: str | os.PathLike | None = None
) -> ValSet:
    """A validation set: a COCO dataset folder (``annotations/instances_val*.json``), a COCO
    json, or a YOLO image folder whose dataset has a ``data.yaml`` (labels ``i`` → id ``i+1``).
    ``limit``: the first ``limit`` images (by id); ``images``: the image folder of a COCO
    json (default: found beside it, as ``dfine val``)."""
    path = Path(data)
    yaml = next(
        (
            p
            for p in (
                path / "data.yaml",
                path.parent / "data.yaml",
                path.parent.parent / "data.yaml",
            )
            if p.is_file()
        ),
        None,
    )
    if path.is_dir() and yaml is not None and not (path / "annotations").is_dir():
        ds = YoloDetection(path, names=yaml)
        gt = ds.to_coco_dict()
        files = {img["id"]: Path(img["file_name"]) for img in gt["images"]}
        files = {i: f if f.is_absolute() else path / f for i, f in files.items()}
        mapping = dict(ds.label_to_category)
    else:
        split = resolve_split(path, "val", images)
        gt = json.loads(Path(split.annotations).read_text())
        files = {img["id"]: Path(split.images) / img["file_name"] for img in gt["images"]}
        mapping = {i: c for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    ids = sorted(files)[:limit] if limit else sorted(files)
    if not ids:
        raise InvalidArgumentError(f"validation set {path} has no images")
    return ValSet(tuple(files[i] for i in ids), tuple(ids), gt, mapping, str(path))


def image_files(source: str | os.PathLike, count: int) -> list[Path]:
    """Up to ``count`` images for calibration or drift checks: a folder of images (searched
    recursively, so a YOLO dataset root works), or a COCO dataset folder / json (its val, else
    train split). Spread evenly over the sorted files."""
    path = Path(source)
    if not path.exists():
        raise InputFileError(f"calibration source not found: {path}")
    files: list[Path] = []
    if path.suffix.lower() == ".json" or (path / "annotations").is_dir():
        for split in ("train", "val"):
            try:
                s = resolve_split(path, split)
            except FileNotFoundError:
                continue
            gt = json.loads(Path(s.annotations).read_text())
            files += [Path(s.images) / im["file_name"] for im in gt["images"]]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgumentError(
            f"no images found in {path} (need a folder of images or a COCO dataset)"
        )
    if len(files) > count:
        files = [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    return files


def load_inputs(
    files: Sequence[Path], size: tuple[int, int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images [1, 3, h, w] in [0, 1], orig_sizes [1, 2] (w, h))`` per file."""

    out = []
    for f in files:
        rgb = load_image(f)
        out.append((to_input_tensor(rgb, size), torch.tensor([[rgb.shape[1], rgb.shape[0]]])))
    return out


def evaluate(
    detect: Detect, val: ValSet, size: tuple[int, int], progress: bool = True, desc: str = "eval"
) -> dict[str, float]:
    """COCO metrics (``AP``, ``AP50``, ``AP75``, ...) of ``detect`` on ``val``, image by image."""

    dets = []
    for path, image_id in tqdm(
        list(zip(val.images, val.image_ids)),
        desc=desc,
        unit="img",
        disable=not progress,
        leave=False,
    ):
        ((x, sizes),) = load_inputs([path], size)
        dets += coco_records(detect(x, sizes), image_id, val)
    return coco_metrics(val.ground_truth, dets, image_ids=val.image_ids)


def coco_records(found: BatchDetections, image_id: int, val: ValSet) -> list[dict]:
    """The COCO result records (xywh boxes, ``val``'s category ids) of one image's
    detections (batch of one)."""
    b = found.boxes[0].float()
    xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
    return [
        {
            "image_id": image_id,
            "category_id": val.label_to_category[int(label)],
            "bbox": box,
            "score": float(score),
        }
        for box, label, score in zip(xywh, found.labels[0].tolist(), found.scores[0].tolist())
    ]


@dataclass(frozen=True)
class GuardResult:
    """What the guard measured. ``mode``: ``"val"`` (metrics are COCO AP/AP50/AP75 in 0..1)
    or ``"drift"`` (metrics: ``box_p95``, ``score_p95``, ``lost``, ``detections``)."""

    mode: str
    reference: dict[str, float]
    reduced: dict[str, float]
    images: int
    bound: dict[str, float]
    ok: bool
    source: str = ""

    @property
    def ap_drop(self) -> float | None:
        """AP points lost (val mode)."""
        return 100 * (self.reference["AP"] - self.reduced["AP"]) if self.mode == "val" else None

    def summary(self) -> str:
        if self.mode == "val":
            parts = ", ".join(
                f"{k} {100 * self.reference[k]:.1f} -> {100 * self.reduced[k]:.1f}"
                for k in ("AP", "AP50", "AP75")
            )
            return f"{parts} on {self.images} val images (drop {self.ap_drop:.2f} points, bound {self.bound['max_ap_drop']:g})"
        r = self.reduced
        return (
            f"drift on {self.images} images vs f32: box p95 {r['box_p95']:.4f} of the image side (bound "
            f"{self.bound['box_p95']:g}), score p95 {r['score_p95']:.3f} (bound {self.bound['score_p95']:g}), "
            f"lost {100 * r['lost']:.1f}% of {int(r['detections'])} confident detections (bound {100 * self.bound['lost']:g}%)"
        )

    def check(self, what: str = "the reduced-precision graph") -> GuardResult:
        """``self`` when within the bound, else :class:`PrecisionGuardError` (one line)."""
        if not self.ok:
            hint = (
                "raise --max-ap-drop, give more --calibration images, or use a higher precision"
                if self.mode == "val"
                else "give a --val set to measure AP, or use a higher precision"
            )
            raise PrecisionGuardError(f"accuracy guard refused {what}: {self.summary()}; {hint}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def guard_val(
    reference: Detect,
    reduced: Detect,
    val: ValSet,
    size: tuple[int, int],
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    progress: bool = True,
    reference_metrics: dict | None = None,
) -> GuardResult:
    """AP of ``reduced`` against ``reference`` (f32) on ``val``."""
    if max_ap_drop < 0:
        raise InvalidArgumentError(f"max_ap_drop must be >= 0 AP points, got {max_ap_drop}")
    ref = reference_metrics or evaluate(reference, val, size, progress, "eval f32")
    got = evaluate(reduced, val, size, progress, "eval reduced")
    keys = ("AP", "AP50", "AP75")
    ref, got = {k: ref[k] for k in keys}, {k: got[k] for k in keys}
    ok = 100 * (ref["AP"] - got["AP"]) <= max_ap_drop
    return GuardResult(
        "val", ref, got, len(val.images), {"max_ap_drop": float(max_ap_drop)}, ok, val.source
    )


def drift(
    reference: tuple, reduced: tuple, image_size: torch.Tensor, min_score: float = DRIFT_MIN_SCORE
) -> tuple[list[float], list[float], int, int]:
    """Per confident reference detection of one image: box drift (max |Δ coordinate| / image
    side) and |Δ score| to the same-label reduced detection of highest IoU; and
    ``(lost, total)``, lost = no same-label partner with IoU >= 0.5."""

    rl, rb, rs = reference.labels[0], reference.boxes[0], reference.scores[0]
    gl, gb, gs = reduced.labels[0], reduced.boxes[0], reduced.scores[0]
    keep = rs >= min_score
    rl, rb, rs = rl[keep], rb[keep].float(), rs[keep]
    if not len(rl):
        return [], [], 0, 0
    iou = box_iou(rb, gb.float())
    iou[rl[:, None] != gl[None, :]] = -1
    best, j = iou.max(1)
    side = float(image_size.max())
    paired = best >= 0.5
    box = ((rb - gb[j].float()).abs().amax(1) / side)[paired].tolist()
    score = (rs - gs[j]).abs()[paired].tolist()
    return box, score, int((~paired).sum()), len(rl)


def guard_drift(
    reference: Detect,
    reduced: Detect,
    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    source: str = "",
) -> GuardResult:
    """Box and score drift of ``reduced`` against ``reference`` on ``inputs``."""
    boxes, scores, lost, total = [], [], 0, 0
    for x, sizes in inputs:
        b, s, lo, n = drift(reference(x, sizes), reduced(x, sizes), sizes[0])
        boxes += b
        scores += s
        lost += lo
        total += n
    if total == 0:
        raise InvalidArgumentError(
            f"the drift guard found no detection scoring >= {DRIFT_MIN_SCORE} on {len(inputs)} sample images; "
            "give --val (a labelled set) or --calibration images where the model detects objects"
        )
    got = {
        "box_p95": float(np.percentile(boxes, 95)) if boxes else 1.0,
        "score_p95": float(np.percentile(scores, 95)) if scores else 1.0,
        "lost": lost / total,
        "detections": float(total),
    }
    bound = {"box_p95": DRIFT_BOX_TOL, "score_p95": DRIFT_SCORE_TOL, "lost": DRIFT_MAX_LOST}
    ok = (
        got["box_p95"] <= bound["box_p95"]
        and got["score_p95"] <= bound["score_p95"]
        and got["lost"] <= bound["lost"]
    )
    return GuardResult("drift", {}, got, len(inputs), bound, ok, source)


@dataclass(frozen=True)
class PrecisionCost:
    """What a precision costs on this machine: median model latency and drift vs f32."""

    precision: str
    median_ms: float
    speedup: float
    drift: GuardResult | None

    def row(self) -> str:
        if self.drift is None:
            return f"| {self.precision} | {self.median_ms:.1f} | 1.00x | exact (reference) |"
        r = self.drift.reduced
        verdict = "within" if self.drift.ok else "BEYOND"
        return (
            f"| {self.precision} | {self.median_ms:.1f} | {self.speedup:.2f}x | box p95 "
            f"{r['box_p95']:.4f}, score p95 {r['score_p95']:.3f}, lost {100 * r['lost']:.0f}% "
            f"({verdict} the guard's bounds) |"
        )


def precision_costs(
    weights,
    precisions: Sequence[str] = ("f32", "bf16"),
    images: Sequence[Path] | None = None,
    size: tuple[int, int] | None = None,
    repeats: int = 3,
    threads: int | None = None,
) -> list[PrecisionCost]:
    """Measure, for a checkpoint or DFINE model through OpenVINO, each precision's median
    latency (``repeats`` passes over ``images``, default the bundled examples) and its drift
    against f32 (:func:`guard_drift`). bf16: backbone + encoder bf16, decoder f32."""
    import time

    onnx = onnx_for(weights, size)
    backends = {p: OpenVINOBackend(onnx, precision=p, threads=threads) for p in precisions}
    inputs = load_inputs(
        images or image_files(asset_path("examples"), 8), backends[precisions[0]].input_size
    )
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(repeats):
        for x, sizes in inputs:
            for p, b in backends.items():  # interleaved
                t = time.perf_counter()
                b.detect(x, sizes)
                times[p].append((time.perf_counter() - t) * 1000)
    base = float(np.median(times["f32"])) if "f32" in times else None
    out = []
    for p, b in backends.items():
        med = float(np.median(times[p]))
        drift_result = None
        if p != "f32" and "f32" in backends:
            try:
                drift_result = guard_drift(backends["f32"].detect, b.detect, inputs)
            except ValueError:  # no confident detection on these images
                drift_result = None
        out.append(PrecisionCost(p, med, base / med if base else float("nan"), drift_result))
    return out
