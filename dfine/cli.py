"""The ``dfine`` command line. ``dfine --help`` and ``dfine COMMAND --help`` describe everything."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dfine.precision import PARTS as PRECISION_PARTS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

EPILOG_PREDICT = """examples:
  dfine predict street.jpg --weights dfine_n_coco.pth --out runs/predict
  dfine predict photos/ --weights dfine_l_coco --threshold 0.4 --size 800 --out runs/big
outputs, for each image: OUT/<name>.jpg (boxes drawn) and OUT/<name>.json (boxes in
original pixels, xyxy, with scores, class ids and names, and the speed breakdown)."""


def _expand_images(items: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(p)
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dfine.io import ImageLoadError
    from dfine.predict import Detector

    images = _expand_images(args.images)
    if not images:
        print("error: no images found in " + " ".join(args.images), file=sys.stderr)
        return 2
    detector = Detector(
        args.weights,
        backend=_backend_for(args.weights, args.backend),
        threshold=args.threshold,
        size=args.size,
        device=args.device,
        deploy=not args.exact,
        precision=args.precision,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    names_seen: dict[str, int] = {}
    bar = tqdm(images, desc="predict", unit="img", disable=args.quiet or len(images) < 2)
    for path in bar:
        try:
            dets = detector(path)
        except (ImageLoadError, FileNotFoundError) as e:
            failures += 1
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        stem = path.stem
        if stem in names_seen:  # two inputs with the same name from different folders
            names_seen[stem] += 1
            stem = f"{stem}_{names_seen[stem]}"
        else:
            names_seen[stem] = 0
        dets.plot().save(out / f"{stem}.jpg", quality=92)
        record = dets.to_dict()
        record["source"] = str(path)
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        if not args.quiet:
            tqdm.write(f"{path}: {dets.summary()}")
    done = len(images) - failures
    if not args.quiet:
        print(f"wrote {done} annotated image(s) and JSON file(s) to {out}")
    return 1 if failures else 0


def _backend_for(weights: str, backend: str) -> str:
    """``auto``: openvino for an IR (.xml), onnxruntime for .onnx, else torch."""
    if backend != "auto":
        return backend
    return {".xml": "openvino", ".onnx": "onnxruntime"}.get(Path(weights).suffix, "torch")


ABLATION_TEXT = {
    "none": "full D-FINE: FDR + GO-LSD",
    "golsd": "trained without GO-LSD: FDR + FGL, no DDF",
    "fdr": "trained without FDR: RT-DETR-style box deltas, no distributions",
}


def cmd_inspect(args: argparse.Namespace) -> int:
    from dfine.checkpoint import default_class_names, infer_config, read_checkpoint
    from dfine.model import DFINE

    path = Path(args.checkpoint)
    if not path.exists():
        from dfine import zoo

        if not zoo.is_zoo_name(args.checkpoint):
            print(f"error: checkpoint not found: {path}", file=sys.stderr)
            return 2
        path = zoo.download(args.checkpoint)
    sd, meta = read_checkpoint(path)
    cfg = infer_config(sd)
    cfg = cfg.with_ablation(meta.get("ablation", cfg.ablation))
    model = DFINE(cfg)
    params = sum(p.numel() for p in model.parameters())
    names = meta.get("class_names") or default_class_names(cfg.num_classes)
    names = list(names) if names else None
    info = {
        "file": str(path),
        "format": "safetensors" if path.suffix == ".safetensors" else "pytorch (reference layout)",
        "size": cfg.size,
        "architecture": f"D-FINE-{cfg.size.upper()} (HGNetv2-{cfg.backbone.name}, "
        f"{cfg.decoder.num_layers} decoder layers, hidden {cfg.decoder.hidden_dim})",
        "num_classes": cfg.num_classes,
        "class_names": names,
        "parameters": params,
        "input_size": list(meta.get("input_size") or cfg.eval_size),
        "reg_max": cfg.decoder.reg_max,
        "reg_scale": float(sd["decoder.reg_scale"].reshape(-1)[0])
        if cfg.ablation != "fdr"
        else None,
        "ablation": cfg.ablation,
        "metadata": {k: v for k, v in meta.items() if k not in ("class_names", "ablation")},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shown = (
        ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        if names
        else "(no names stored)"
    )
    print(f"file:          {info['file']} [{info['format']}]")
    print(f"model:         {info['architecture']}")
    print(f"parameters:    {params:,} ({params / 1e6:.2f} M)")
    print(f"classes:       {cfg.num_classes}: {shown}")
    print(f"input size:    {info['input_size'][0]}x{info['input_size'][1]} (height x width)")
    print(f"ablation:      {cfg.ablation} ({ABLATION_TEXT[cfg.ablation]})")
    if cfg.ablation != "fdr":
        print(f"FDR:           reg_max {info['reg_max']}, reg_scale {info['reg_scale']:g}")
    for k, v in info["metadata"].items():
        print(f"{k + ':':<15}{v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dfine.export import export_onnx
    from dfine.precision import normalize_precision

    precision = normalize_precision("fp16" if args.half else args.precision)
    batch = "dynamic" if args.batch == "dynamic" else int(args.batch)
    size = (
        args.size if isinstance(args.size, tuple) or args.size is None else (args.size, args.size)
    )
    suffix = ".xml" if args.format == "openvino" else ".onnx"
    tag = "" if precision == "f32" else f"_{precision}"
    out = (
        Path(args.out)
        if args.out
        else Path(args.weights).with_name(Path(args.weights).stem + tag + suffix)
    )
    if args.format == "onnx" and precision in ("f32", "fp16"):
        result = export_onnx(
            args.weights,
            out,
            size=size,
            batch=batch,
            postprocess=args.postprocess,
            half=precision == "fp16",
            opset=args.opset,
            check_parity=not args.no_check,
        )
        print(result.report())
        if result.parity is not None and not result.parity.ok():
            print(
                "error: ONNX Runtime output differs from PyTorch beyond the tolerance",
                file=sys.stderr,
            )
            return 1
        return 0
    from dfine.quantize import export_reduced

    if batch != "dynamic" or not args.postprocess:
        raise ValueError(
            "--format openvino and --precision int8 export a dynamic-batch graph with "
            "postprocessing; drop --batch / --no-postprocess"
        )
    result = export_reduced(
        args.weights,
        out,
        format=args.format,
        precision=precision,
        size=size,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        val=args.val,
        val_size=args.val_size,
        max_ap_drop=args.max_ap_drop,
        reduced_parts=args.reduce,
        progress=not args.quiet,
    )
    print(result.report())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from dfine.benchmark import markdown, run_benchmark

    rows, peak = run_benchmark(
        backends=args.backends,
        sizes=args.sizes,
        batches=args.batch,
        input_size=args.input,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        precisions=args.precision,
        throughput=args.throughput,
    )
    text = markdown(rows, peak, args.input, args.threads, args.iters)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


def _batch_arg(text: str) -> str:
    if text != "dynamic" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(
            f"batch must be 'dynamic' or a positive integer, got {text!r}"
        )
    return text


def _size_arg(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"size must be N or H,W (e.g. 640 or 480,640), got {text!r}"
        ) from e
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 2:
        return (vals[0], vals[1])
    raise argparse.ArgumentTypeError(f"size must be N or H,W, got {text!r}")


def _threshold_arg(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1], got {text}")
    return value


def _add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "openvino", "tensorrt"],
        help="inference backend (default auto: openvino for .xml, onnxruntime for .onnx, "
        "else torch)",
    )
    p.add_argument(
        "--precision",
        choices=["f32", "bf16", "int8", "fp16"],
        help="f32, bf16 (openvino), int8 (an INT8 export), fp16 (tensorrt); default f32 or "
        "the exported file's own",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfine",
        description="D-FINE object detector (see each command's --help).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="detect objects in images; write annotated images and JSON",
        description="Detect objects in images and write an annotated image and a JSON file per image.",
        epilog=EPILOG_PREDICT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument(
        "--weights",
        "-w",
        required=True,
        help="checkpoint (.pth reference layout or .safetensors) or a model-zoo name",
    )
    p.add_argument(
        "--threshold",
        "-t",
        type=_threshold_arg,
        default=0.5,
        help="minimum score to keep a detection (default 0.5)",
    )
    p.add_argument(
        "--size",
        type=_size_arg,
        default=None,
        help="network input size: N or H,W, multiples of 32 (default: the model's, 640)",
    )
    p.add_argument(
        "--out", "-o", default="runs/predict", help="output folder (default runs/predict)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="skip conv+BN fusion: the reference's exact arithmetic (slower)",
    )
    _add_precision_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "inspect",
        help="show a checkpoint's model size, classes, parameter count and input size",
        description="Show what a checkpoint holds without running it.",
    )
    p.add_argument("checkpoint", help="checkpoint file or model-zoo name")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or OpenVINO, f32 or reduced precision (guarded)",
        description="Export to ONNX (opset >= 17, conv+BN folded), check it with onnx.checker "
        "and compare ONNX Runtime with PyTorch on the example images.",
        epilog="examples:\n  dfine export dfine_n_coco.pth --format onnx --batch dynamic --out dfine_n.onnx\n"
        "  dfine export dfine_n_coco.pth --format openvino --precision bf16 --val data/coco\n"
        "  dfine export dfine_n_coco.pth --format openvino --precision int8 --calibration "
        "photos/ --val data/coco --max-ap-drop 0.5\n"
        "reduced precision: backbone + encoder in bf16/INT8, the decoder (distribution heads, "
        "softmax*W(n) integral, box decoding, LQE, top-k) in f32; the precision, method and the "
        "guard's measurement are stored in the file's metadata (dfine inspect-able via "
        "dfine.export.read_metadata)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", help="checkpoint file or model-zoo name")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "openvino"],
        help="onnx (default) or openvino (IR .xml + .bin)",
    )
    p.add_argument(
        "--precision",
        default="f32",
        choices=["f32", "bf16", "int8", "fp16"],
        help="f32 (default); bf16 (openvino); int8 (openvino, needs --calibration); "
        "fp16 (onnx, for GPUs; same as --half). bf16/int8 reduce the backbone and encoder and "
        "keep the FDR decoder in f32, and are checked by the accuracy guard",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="int8: calibration images (a folder, searched recursively, or a COCO dataset)",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=300,
        metavar="N",
        help="int8: number of calibration images (default 300)",
    )
    p.add_argument(
        "--val",
        metavar="DATA",
        help="validation set for the accuracy guard (COCO folder or json, YOLO image folder "
        "with data.yaml): AP/AP50/AP75 f32 vs reduced; without it the guard measures box "
        "and score drift on sample images",
    )
    p.add_argument("--val-size", type=int, metavar="N", help="use the first N val images")
    p.add_argument(
        "--max-ap-drop",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="refuse the export when AP drops by more than this (AP points, default 0.5)",
    )
    p.add_argument(
        "--reduce",
        nargs="+",
        metavar="PART",
        choices=list(PRECISION_PARTS),
        help="advanced: the graph parts to reduce (default backbone encoder; "
        f"choices: {', '.join(PRECISION_PARTS)})",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument(
        "--batch",
        type=_batch_arg,
        default="dynamic",
        help="'dynamic' (default) or a fixed batch size",
    )
    p.add_argument(
        "--size",
        type=_size_arg,
        default=None,
        help="input size N or H,W, multiples of 32 (default: the model's)",
    )
    p.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include top-k postprocessing in the graph (outputs labels, boxes, scores; default on)",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="same as --precision fp16 (for GPUs; no CPU parity check)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity report")
    p.add_argument(
        "--out", "-o", default=None, help="output .onnx path (default: next to the weights)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "benchmark",
        help="latency/throughput of backends x sizes x batch sizes vs the FLOP floor",
        description="Time inference of random-init models for each backend, model size and "
        "batch size (warm-up, pinned threads) and print a Markdown table with each size's "
        "ratio to its FLOP floor.",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["torch-eager", "torch", "onnxruntime", "openvino"],
        choices=["torch-eager", "torch", "onnxruntime", "openvino", "tensorrt"],
    )
    p.add_argument("--sizes", nargs="+", default=["n", "s"], choices=list("nsmlx"))
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument("--input", type=int, default=640, help="square input size (default 640)")
    p.add_argument(
        "--threads", type=int, default=2, help="CPU threads for every backend (default 2)"
    )
    p.add_argument(
        "--precision",
        nargs="+",
        default=["f32"],
        choices=["f32", "bf16", "int8"],
        help="openvino precisions to time (default f32; bf16/int8: backbone + encoder reduced, "
        "decoder f32; int8 calibrated on random images: timing only)",
    )
    p.add_argument(
        "--throughput",
        action="store_true",
        help="also time openvino in throughput mode (THROUGHPUT hint, parallel requests)",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    p.set_defaults(func=cmd_benchmark)

    from dfine.data.cli import register_cli as register_data
    from dfine.train.cli import register_cli as register_train

    register_train(sub)
    register_data(sub)
    return parser


def error_text(exc: BaseException) -> str:
    """``str(exc)``; for an error re-raised from a ``DataLoader`` worker, whose message holds
    the worker's traceback, only the original error's message."""
    text = str(exc)
    if "Original Traceback (most recent call last):" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]  # "pkg.SomeError: message"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dfine.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
