"""Precision x latency x AP on this CPU, every variant interleaved image by image.

    python benchmarks/precision.py --weights assets/dfine_n_synth.safetensors \
        --val /tmp/prec_data --calibration /tmp/prec_calib --out runs/precision

Part 1 (demo model at its 320x320): AP/AP50/AP75 on the val split and the median model
latency (the ``inference`` figure of ``Detections.speed``: ``Backend.detect`` of one image,
the variants in a rotating order) of OpenVINO f32, OpenVINO at its default precision (no
hint: bf16 on a bf16 CPU), bf16 everywhere, bf16 with the FDR parts marked keep-in-f32, bf16-mixed (backbone + encoder bf16,
decoder f32: the graph split), INT8-mixed (NNCF INT8 backbone + encoder, decoder f32), INT8
with the decoder layers' linears INT8 too (FDR parts f32: ``INT8_DECODER_PARTS``) and INT8
with the whole graph at the bf16 hint. On a CPU without bf16 units (OpenVINO runs a bf16 hint
in f32 there) the bf16 rows are left out and the table says so. Part 2: latency of D-FINE-N
(random weights, or ``--n-weights`` e.g. the random-init official checkpoint) at 640x640 for
the same variants (INT8 calibrated on the val images). Part 3: throughput (images/s) of f32
and the reduced variants with OpenVINO's THROUGHPUT hint and parallel requests, batch 1 and
4. Latency columns: the median and the 10th percentile (the quieter moments of a loaded
machine); the load average is printed before and after. Prints Markdown; ``--out`` keeps the
exported files there (resumable).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import dfine
from dfine.backends.openvino import OpenVINOBackend, shared_core
from dfine.export import export_onnx
from dfine.guard import image_files, load_inputs, load_val
from dfine.postprocess import BatchDetections
from dfine.precision import INT8_DECODER_PARTS
from dfine.quantize import export_reduced, quantize_unguarded
from dfine.train.evaluate import coco_metrics


def has_bf16() -> bool:
    """Whether this CPU has bf16 units (else OpenVINO runs a bf16 hint in f32)."""
    return "BF16" in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _variants(
    onnx: Path, int8: Path, int8_decoder: Path, threads: int, hint: str = "latency"
) -> dict:
    opts = {"threads": threads, "hint": hint}
    out = {
        "f32": OpenVINOBackend(onnx, precision="f32", **opts),
        "OpenVINO default": _DefaultPrecision(onnx, threads),
    }
    if has_bf16():
        out["bf16 (all)"] = OpenVINOBackend(onnx, precision="bf16", mixed="none", **opts)
        out["bf16 + FDR keep-in-f32 marks"] = OpenVINOBackend(
            onnx, precision="bf16", mixed="mark", **opts
        )
        out["bf16-mixed (split)"] = OpenVINOBackend(onnx, precision="bf16", **opts)
    out["int8-mixed (split)"] = OpenVINOBackend(int8, **opts)
    out["int8-mixed + decoder layers INT8 (split, FDR f32)"] = OpenVINOBackend(int8_decoder, **opts)
    out["int8 (all at bf16 hint)"] = OpenVINOBackend(int8, mixed="none", **opts)
    return out


def _machine(threads: int) -> list[str]:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    note = (
        ""
        if has_bf16()
        else " This CPU has no bf16 units: OpenVINO runs a bf16 hint in f32, so the bf16 rows "
        "are left out (they would only repeat f32)."
    )
    return [f"{threads} threads, load average (1/5/15 min) {load}.{note}", ""]


def _rotated(variants: dict, i: int) -> list:
    """The variants' items, starting at the ``i``-th (mod their count): each variant runs
    first as often as the others (the first after a new image pays its cache misses)."""
    items = list(variants.items())
    k = i % len(items)
    return items[k:] + items[:k]


def _p10(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[0]


class _DefaultPrecision:
    """The f32 ONNX compiled with no precision hint: what OpenVINO users get by default."""

    def __init__(self, onnx: Path, threads: int) -> None:
        core = shared_core()
        self.compiled = core.compile_model(
            core.read_model(str(onnx)),
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
        )
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")

    def detect(self, images, sizes):
        labels, boxes, scores = self.request.infer(
            {"images": images.numpy(), "orig_target_sizes": sizes.numpy()}
        ).to_tuple()
        return BatchDetections(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
        )


def part1(args, work: Path) -> list[str]:
    onnx = work / "demo.onnx"
    if not onnx.exists():
        export_onnx(args.weights, onnx, check_parity=False)
    int8, int8_decoder = work / "demo_int8.xml", work / "demo_int8_decoder.xml"
    for out, parts in ((int8, None), (int8_decoder, INT8_DECODER_PARTS)):
        if not out.exists():
            export_reduced(
                onnx,
                out,
                precision="int8",
                calibration=args.calibration,
                calibration_size=args.calibration_size,
                val=args.val,
                val_size=40,
                max_ap_drop=100,
                accuracy_aware=False,
                reduced_parts=parts,
            )
    variants = _variants(onnx, int8, int8_decoder, args.threads)
    val = load_val(args.val, args.limit)
    size = variants["f32"].input_size
    cats = val.label_to_category
    dets = {k: [] for k in variants}
    times = {k: [] for k in variants}
    for i, (path, image_id) in enumerate(zip(val.images, val.image_ids)):
        ((x, sizes),) = load_inputs([path], size)
        for name, backend in _rotated(variants, i):
            t = time.perf_counter()
            found = backend.detect(x, sizes)
            times[name].append((time.perf_counter() - t) * 1000)
            b, labels, scores = found.boxes[0], found.labels[0], found.scores[0]
            for box, label, score in zip(b.tolist(), labels.tolist(), scores.tolist()):
                dets[name].append(
                    {
                        "image_id": image_id,
                        "category_id": cats[int(label)],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": float(score),
                    }
                )
    f32 = statistics.median(times["f32"])
    default = statistics.median(times["OpenVINO default"])
    lines = [
        f"## Demo model (D-FINE-N, 8 classes) at {size[0]}x{size[1]}, {len(val.images)} val images, "
        f"{args.threads} threads, batch 1",
        "",
        f"OpenVINO default precision here: {variants['OpenVINO default'].precision}.",
        "",
        *_machine(args.threads),
        "| variant | AP | AP50 | AP75 | ΔAP (points) | median ms | p10 ms | vs f32 (median) "
        "| vs f32 (p10) | vs OV default |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f32_p10 = _p10(times["f32"])
    base = None
    for name in variants:
        m = coco_metrics(val.ground_truth, dets[name], image_ids=val.image_ids)
        base = base if base is not None else m["AP"]
        med, p10 = statistics.median(times[name]), _p10(times[name])
        lines.append(
            f"| {name} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['AP75']:.4f} | "
            f"{100 * (m['AP'] - base):+.2f} | {med:.1f} | {p10:.1f} | {f32 / med:.2f}x | "
            f"{f32_p10 / p10:.2f}x | {default / med:.2f}x |"
        )
    lines += _machine(args.threads)
    return lines


def part2(args, work: Path) -> list[str]:
    model = (dfine.load_model(args.n_weights) if args.n_weights else dfine.build_model("n")).eval()
    onnx = work / "n640.onnx"
    if not onnx.exists():
        export_onnx(model, onnx, size=(640, 640), check_parity=False)
    int8, int8_decoder = work / "n640_int8.xml", work / "n640_int8_decoder.xml"
    samples = None
    for out, parts in ((int8, ("backbone", "encoder")), (int8_decoder, INT8_DECODER_PARTS)):
        if not out.exists():
            samples = samples or [x for x, _ in load_inputs(image_files(args.val, 32), (640, 640))]
            quantize_unguarded(onnx, out, samples, parts)
    variants = _variants(onnx, int8, int8_decoder, args.threads)
    inputs = load_inputs(image_files(args.val, args.iters), (640, 640))
    times = {k: [] for k in variants}
    for backend in variants.values():  # warm-up
        backend.detect(*inputs[0])
    for i, (x, sizes) in enumerate(inputs):
        for name, backend in _rotated(variants, i):
            t = time.perf_counter()
            backend.detect(x, sizes)
            times[name].append((time.perf_counter() - t) * 1000)
    f32, f32_p10 = statistics.median(times["f32"]), _p10(times["f32"])
    default = statistics.median(times["OpenVINO default"])
    weights = args.n_weights or "dfine.build_model('n')"
    lines = [
        "",
        f"## D-FINE-N (random weights: {weights}) at 640x640, {args.threads} threads, batch 1, "
        f"{len(inputs)} images interleaved",
        "",
        *_machine(args.threads),
        "| variant | median ms | p10 ms | vs f32 (median) | vs f32 (p10) | vs OV default |",
        "|---|---|---|---|---|---|",
    ]
    for name in variants:
        med, p10 = statistics.median(times[name]), _p10(times[name])
        lines.append(
            f"| {name} | {med:.1f} | {p10:.1f} | {f32 / med:.2f}x | {f32_p10 / p10:.2f}x | "
            f"{default / med:.2f}x |"
        )
    lines += _machine(args.threads)
    return lines


def part3(args, work: Path) -> list[str]:
    onnx, int8 = work / "demo.onnx", work / "demo_int8.xml"
    files = image_files(args.val, 64)
    lines = [
        "",
        f"## Throughput, demo model, {args.threads} threads, OpenVINO THROUGHPUT hint, "
        f"{len(files)} images",
        "",
        "| variant | batch | requests | images / s |",
        "|---|---|---|---|",
    ]
    for batch in (1, 4):
        inputs = load_inputs(files, (320, 320))
        batches = [
            (
                torch.cat([x for x, _ in inputs[i : i + batch]]),
                torch.cat([s for _, s in inputs[i : i + batch]]),
            )
            for i in range(0, len(inputs), batch)
        ]
        for name, kwargs in (
            ("f32", {"weights": onnx, "precision": "f32"}),
            ("bf16-mixed (split)", {"weights": onnx, "precision": "bf16"}),
            ("int8-mixed (split)", {"weights": int8}),
        ):
            backend = OpenVINOBackend(threads=args.threads, hint="throughput", **kwargs)
            backend.detect_many(batches[:2])
            t = time.perf_counter()
            backend.detect_many(batches)
            rate = len(files) / (time.perf_counter() - t)
            lines.append(f"| {name} | {batch} | {backend.optimal_requests} | {rate:.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--weights", default="assets/dfine_n_synth.safetensors")
    ap.add_argument("--val", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--calibration-size", type=int, default=300)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--n-weights", help="part 2: D-FINE-N weights (default: random init)")
    ap.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out", default="runs/precision")
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    for n in args.parts:
        for line in {1: part1, 2: part2, 3: part3}[n](args, work):
            print(line, flush=True)


if __name__ == "__main__":
    main()
