"""The ``dfine`` command line, its one entry point (``python -m dfine.train`` runs the same
:func:`main`). ``dfine --help`` and ``dfine COMMAND --help`` describe everything.

Exit codes: 0 done; 1 some inputs failed (each reported); 2 bad input or arguments (a
:class:`~dfine.errors.DFineError`: one line saying what, why and what to do); 3 training
stopped on a non-finite loss; 130 interrupted. Any other exception is a bug and keeps its
traceback.

The parser is built from light modules only, so ``dfine --help`` and argument errors answer
without importing torch: each command imports what it runs when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dfine import optional, webapp
from dfine.argtypes import add_budget_arguments
from dfine.backends import BACKENDS, FASTEST
from dfine.config import ABLATION_NOTES, FAMILIES, FAMILY_NOTES
from dfine.data.cli import register_cli as register_data
from dfine.errors import DFineError, InputFileError, InvalidArgumentError, error_text
from dfine.precision import PARTS as PRECISION_PARTS
from dfine.precision import PRECISIONS, normalize_precision
from dfine.train.cli import register_cli as register_train
from dfine.video_cli import add_video_arguments

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

EPILOG_PREDICT = """examples:
  dfine predict assets/examples/synth/000001.jpg --out runs/predict    # the bundled demo model
  dfine predict street.jpg --weights dfine_n_coco.pth --out runs/predict
  dfine predict photos/ --weights dfine_l_coco --threshold 0.4 --size 800 --out runs/big
  dfine predict clip.mp4 photo.jpg --weights dfine_n_coco.pth --track --stride 2 --out runs/v
  dfine predict street.jpg --weights dfine_n_synth.onnx          (ONNX Runtime, from the suffix)
  dfine predict street.jpg --weights model.onnx --backend openvino
  dfine predict clip.mp4 --weights dfine_n_coco --backend fastest     (OpenVINO when installed)
weights: a .pth/.safetensors checkpoint, a Hugging Face model folder, a model-zoo name
(downloaded once into $DFINE_HOME, default ~/.cache/dfine) or an exported .onnx file
(default: the bundled demo model, D-FINE-N on 8 synthetic shape classes).
outputs, for each image: OUT/<name>.jpg (boxes drawn) and OUT/<name>.json (boxes in
original pixels, xyxy, with scores, class ids and names, and the speed breakdown);
for each video: OUT/<name>.webm (boxes and track ids drawn) and OUT/<name>.json
({"video": {...}, "frames": [{"index", "time_s", "detections": [... "track_id"]}]})."""

EPILOG_INSPECT = """examples:
  dfine inspect assets/dfine_n_synth.safetensors       # the bundled demo model
  dfine inspect dfine_n_coco --json                     # a model-zoo name, as JSON
  dfine inspect dfine_n_synth.onnx                      # an exported graph's metadata
  dfine inspect --zoo                                   # list the model zoo"""

EPILOG_BENCHMARK = """examples:
  dfine benchmark --sizes n --backends torch onnxruntime --iters 20
  dfine benchmark --weights assets/dfine_n_synth.safetensors --batch 1 4 --out runs/bench.md
  dfine benchmark --weights dfine_n_synth.xml --precision f32 bf16    # an OpenVINO export"""


def _expand_images(items: Sequence[str]) -> list[Path]:
    from dfine.video import VIDEO_SUFFIXES

    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes))
        else:
            paths.append(p)
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    from dfine.predict import Detector
    from dfine.resources import demo_weights
    from dfine.video import is_video
    from dfine.video_cli import predict_videos

    images = _expand_images(args.images)
    videos = [p for p in images if is_video(p)]
    images = [p for p in images if not is_video(p)]
    if not images and not videos:
        print("error: no images found in " + " ".join(args.images), file=sys.stderr)
        return 2
    detector = Detector(
        args.weights or demo_weights(),
        backend=args.backend,
        threshold=args.threshold,
        size=args.size,
        device=args.device,
        deploy=not args.exact,
        letterbox=args.letterbox,
        precision=args.precision,
        family=args.family,
        decoder_layers=args.decoder_layers,
        num_queries=args.num_queries,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names_seen: dict[str, int] = {}
    failures = predict_videos(detector, videos, out, args, names_seen)
    failures += _predict_images(detector, images, out, args, names_seen)
    done = len(images) + len(videos) - failures
    if not args.quiet:
        kind = "image(s) and video(s)" if videos else "image(s)"
        runtime = detector.backend.label + (
            " (--backend fastest)" if args.backend == FASTEST else ""
        )
        print(f"wrote {done} annotated {kind} and JSON file(s) to {out}; ran on {runtime}")
    return 1 if failures else 0


def _predict_images(detector, images: list[Path], out: Path, args, stems: dict[str, int]) -> int:
    """Annotate every image through ``Detector.stream`` (batched, each decoded in its batch);
    the number that could not be read."""
    from tqdm import tqdm

    from dfine.video_cli import batch_size, unique_stem

    failed: list[Path] = []

    def skip(item, error: Exception) -> None:
        failed.append(Path(item.source))
        tqdm.write(f"skipped {item.source}: {error}", file=sys.stderr)

    bar = tqdm(total=len(images), desc="predict", unit="img", disable=args.quiet or len(images) < 2)
    batch = batch_size(detector, args.batch) if images else 1
    for dets in detector.stream(images, batch=batch, on_error=skip):
        path = Path(dets.source)
        stem = unique_stem(path.stem, stems)
        dets.plot().save(out / f"{stem}.jpg", quality=92)
        record = dets.to_dict()
        record["source"] = str(path)
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        bar.update(1)
        if not args.quiet:
            tqdm.write(f"{path}: {dets.summary()}")
    bar.close()
    return len(failed)


def cmd_inspect(args: argparse.Namespace) -> int:
    from dfine import zoo
    from dfine.sources import is_onnx, resolve

    if args.zoo:
        for name in zoo.names():
            e = zoo.get(name)
            arch = ("DEIM-" if e.family == "deim" else "") + f"D-FINE-{e.size.upper()}"
            print(f"{name:<32} {arch:<13} {e.params_m:>4g}M params  AP {e.ap:<5g} "
                  f"{e.dataset:<9} {e.url}")  # fmt: skip
        print(f"downloaded on first use into {zoo.cache_dir()}")
        return 0
    if args.checkpoint is None:
        print("error: name a checkpoint to inspect, or pass --zoo to list the zoo", file=sys.stderr)
        return 2
    info = (
        _onnx_info(args.checkpoint)
        if is_onnx(args.checkpoint)
        else _checkpoint_info(resolve(args.checkpoint), args.family)
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    names = info["class_names"]
    shown = (
        ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        if names
        else "(no names stored)"
    )
    print(f"file:          {info['file']} [{info['format']}]")
    print(f"model:         {info['architecture']}")
    if info.get("parameters"):
        params = info["parameters"]
        print(f"parameters:    {params:,} ({params / 1e6:.2f} M)")
    print(f"classes:       {info['num_classes']}: {shown}")
    print(f"input size:    {info['input_size'][0]}x{info['input_size'][1]} (height x width)")
    if info.get("ablation"):
        print(f"ablation:      {info['ablation']} ({ABLATION_NOTES[info['ablation']]})")
    if info.get("family"):
        print(f"family:        {info['family']} ({FAMILY_NOTES[info['family']]})")
    if info.get("reg_max") is not None and info.get("reg_scale") is not None:
        print(f"FDR:           reg_max {info['reg_max']}, reg_scale {info['reg_scale']:g}")
    for k, v in info["metadata"].items():
        print(f"{k + ':':<15}{v}")
    return 0


def _checkpoint_info(path: Path, family: str | None = None) -> dict:
    from dfine.checkpoint import default_class_names, infer_config, read_checkpoint
    from dfine.model import DFINE
    from dfine.weights import choose_family

    sd, meta = read_checkpoint(path)
    cfg = infer_config(sd)
    cfg = cfg.with_ablation(meta.get("ablation", cfg.ablation))
    cfg = cfg.with_family(choose_family(path, meta, family))
    params = sum(p.numel() for p in DFINE(cfg).parameters())
    names = meta.get("class_names") or default_class_names(cfg.num_classes)
    return {
        "file": str(path),
        "format": "safetensors" if path.suffix == ".safetensors" else "pytorch (reference layout)",
        "size": cfg.size,
        "architecture": f"D-FINE-{cfg.size.upper()} (HGNetv2-{cfg.backbone.name}, "
        f"{cfg.decoder.num_layers} decoder layers, hidden {cfg.decoder.hidden_dim})",
        "num_classes": cfg.num_classes,
        "class_names": list(names) if names else None,
        "parameters": params,
        "input_size": list(meta.get("input_size") or cfg.eval_size),
        "reg_max": cfg.decoder.reg_max,
        "reg_scale": float(sd["decoder.reg_scale"].reshape(-1)[0])
        if cfg.ablation != "fdr"
        else None,
        "ablation": cfg.ablation,
        "family": cfg.family,
        "metadata": {
            k: v for k, v in meta.items() if k not in ("class_names", "ablation", "family")
        },
    }


def _onnx_info(source: str) -> dict:
    from dfine.export import read_metadata

    path = Path(source)
    if not path.is_file():
        raise InputFileError(f"ONNX file not found: {source}")
    meta = read_metadata(path)
    size = (meta["size"] or "?").upper()
    return {
        "file": str(path),
        "format": "onnx (exported by dfine export; runs with --backend onnxruntime/openvino/"
        "tensorrt)",
        "size": meta["size"],
        "architecture": f"D-FINE-{size}, exported graph"
        + (" with postprocessing" if meta["postprocess"] else " (raw outputs)"),
        "num_classes": meta["num_classes"],
        "class_names": meta["class_names"],
        "parameters": None,
        "input_size": list(meta["input_size"]),
        "reg_max": None,
        "ablation": meta.get("ablation"),  # absent from files exported before it was recorded
        "family": meta.get("family"),
        "metadata": {
            k: meta[k] for k in ("batch", "precision", "num_top") if meta.get(k) is not None
        },
    }


def cmd_export(args: argparse.Namespace) -> int:
    from dfine.checkpoint import load_model
    from dfine.export import export_onnx
    from dfine.sources import is_onnx

    precision = normalize_precision("fp16" if args.half else args.precision)
    if args.format == "hf":
        return _export_hf(args, precision)
    if args.push_to_hub:
        raise InvalidArgumentError("--push-to-hub uploads a --format hf export; add --format hf")
    if args.format == "openvino" or precision in ("bf16", "int8"):
        return _export_reduced(args, precision)
    batch = "dynamic" if args.batch == "dynamic" else int(args.batch)
    size = (
        args.size if isinstance(args.size, tuple) or args.size is None else (args.size, args.size)
    )
    if is_onnx(args.weights):
        print(f"error: {args.weights} is already an ONNX export; pass the checkpoint it "
              "came from", file=sys.stderr)  # fmt: skip
        return 2
    # in the current folder, never beside the weights (which may be a bundled asset)
    out = Path(args.out) if args.out else Path(Path(args.weights).stem + ".onnx")
    weights = args.weights if args.family is None else load_model(args.weights, family=args.family)
    result = export_onnx(
        weights,
        out,
        size=size,
        batch=batch,
        postprocess=args.postprocess,
        half=precision == "fp16",
        opset=args.opset,
        check_parity=not args.no_check,
        decoder_layers=args.decoder_layers,
        num_queries=args.num_queries,
    )
    print(result.report())
    if result.parity is not None and not result.parity.ok():
        print(
            "error: ONNX Runtime output differs from PyTorch beyond the tolerance", file=sys.stderr
        )
        return 1
    return 0


def _export_hf(args: argparse.Namespace, precision: str) -> int:
    from dfine import zoo
    from dfine.checkpoint import load_model
    from dfine.hf.card import export_hf, push_to_hub
    from dfine.sources import is_onnx

    if precision != "f32" or args.batch != "dynamic" or not args.postprocess or args.size:
        raise InvalidArgumentError(
            "--format hf writes the f32 weights and their config; drop --precision, --half, "
            "--batch, --size and --no-postprocess"
        )
    if is_onnx(args.weights):
        raise InvalidArgumentError(f"{args.weights} is an ONNX export; pass its checkpoint")
    model = load_model(args.weights, family=args.family)
    name = str(args.weights)
    ap = zoo.get(name).ap if zoo.is_zoo_name(name) else None
    out = Path(args.out) if args.out else Path(Path(name).stem + "-hf")
    folder = export_hf(model, out, name=args.push_to_hub or out.name, ap=ap)
    print(f"wrote {folder} (config.json, model.safetensors, preprocessor_config.json, README.md)")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(folder, args.push_to_hub)}")
    return 0


def _export_reduced(args: argparse.Namespace, precision: str) -> int:
    if args.family is not None:
        raise InvalidArgumentError(
            "--family is not supported with --format openvino or --precision bf16/int8; "
            "export an ONNX file with --family first, then convert that file"
        )
    if args.batch != "dynamic" or not args.postprocess:
        raise InvalidArgumentError(
            "--format openvino and --precision bf16/int8 export a dynamic-batch graph with "
            "postprocessing; drop --batch / --no-postprocess"
        )
    from dfine.quantize import export_reduced

    size = (
        args.size if isinstance(args.size, tuple) or args.size is None else (args.size, args.size)
    )
    suffix = ".xml" if args.format == "openvino" else ".onnx"
    tag = "" if precision == "f32" else f"_{precision}"
    out = Path(args.out) if args.out else Path(Path(args.weights).stem + tag + suffix)
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
        decoder_layers=args.decoder_layers,
        num_queries=args.num_queries,
    )
    print(result.report())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from dfine.benchmark import markdown, run_benchmark

    rows, peak = run_benchmark(
        weights=args.weights,
        backends=args.backends,
        sizes=args.sizes,
        batches=args.batch,
        input_size=args.input,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        precisions=args.precision,
        throughput=args.throughput,
        family=args.family,
        decoder_layers=args.decoder_layers,
        num_queries=args.num_queries,
    )
    text = markdown(rows, peak, args.input, args.threads, args.iters, args.weights)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    webapp.serve(args.model, args.host, args.port)
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


def _add_family(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family",
        choices=list(FAMILIES),
        default=None,
        help="dfine or deim (DEIM-D-FINE: SiLU decoder) for weights whose metadata and name "
        "do not say it (a file named deim_… is read as DEIM)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfine",
        description="D-FINE object detector (see each command's --help).",
        epilog=optional.summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="detect objects in images and videos; write annotated images/videos and JSON",
        description="Detect objects in images and videos (tracked with ByteTrack) and write an "
        "annotated image or video and a JSON file per input.",
        epilog=EPILOG_PREDICT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image or video files, or folders of them")
    p.add_argument(
        "--weights",
        "-w",
        default=None,
        help="checkpoint (.pth, .safetensors), Hugging Face folder, model-zoo name or .onnx "
        "(default: the bundled demo model, D-FINE-N on 8 synthetic shape classes)",
    )
    p.add_argument(
        "--backend",
        choices=(*BACKENDS, FASTEST),
        default=None,
        help="what runs the model (default: onnxruntime for .onnx, openvino for an OpenVINO "
        ".xml, else torch; fastest: OpenVINO, else ONNX Runtime, else torch, whichever is "
        "installed; a checkpoint is exported to ONNX once, cached)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="f32, bf16 (openvino: backbone + encoder bf16, decoder f32), int8 (an INT8 export), "
        "fp16 (tensorrt); default f32 or the exported file's own",
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
        "--out",
        "-o",
        default="runs/predict",
        help="output folder (default runs/predict, in the current folder)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="skip conv+BN fusion: the reference's exact arithmetic (slower)",
    )
    p.add_argument(
        "--letterbox",
        action="store_true",
        help="keep the aspect ratio (resize to fit, pad with grey) instead of stretching the "
        "image to the input size as the reference does",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    add_budget_arguments(p)
    add_video_arguments(p)
    _add_family(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "inspect",
        help="show a checkpoint's model size, classes, parameter count and input size",
        description="Show what a checkpoint holds without running it.",
        epilog=EPILOG_INSPECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint (.pth, .safetensors), Hugging Face folder, model-zoo name or .onnx",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--zoo", action="store_true", help="list the model zoo's checkpoints")
    _add_family(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (checked, with a parity report)",
        description="Export to ONNX (opset >= 17, conv+BN folded), check it with onnx.checker "
        "and compare ONNX Runtime with PyTorch on the example images.",
        epilog="examples:\n  dfine export assets/dfine_n_synth.safetensors      (writes ./dfine_n_synth.onnx)\n"
        "  dfine export dfine_n_coco --batch 1 --out exports/dfine_n.onnx\n"
        "then: dfine predict IMAGE --weights dfine_n_synth.onnx (ONNX Runtime)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "weights", help="checkpoint (.pth, .safetensors), Hugging Face folder or model-zoo name"
    )
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "openvino", "hf"],
        help="onnx (default), openvino (IR .xml + .bin) or hf (a Hugging Face transformers "
        "folder with a model card, --out DIR)",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="--format hf: also upload the folder to this Hub repository (owner/name; needs "
        "`hf auth login`)",
    )
    p.add_argument(
        "--precision",
        default="f32",
        choices=PRECISIONS,
        help="f32 (default); bf16 (openvino); int8 (openvino, needs --calibration); fp16 (onnx, "
        "for GPUs; same as --half). bf16/int8 reduce the backbone and encoder, keep the FDR "
        "decoder in f32, and are checked by the accuracy guard",
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
        help="advanced: the graph parts to reduce (default backbone encoder; int8 with "
        "'backbone encoder decoder_layers' quantizes the decoder layers' linears too, FDR "
        f"parts stay f32; choices: {', '.join(PRECISION_PARTS)})",
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
        "--half", action="store_true", help="export in fp16 (for GPUs; no CPU parity check)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity report")
    add_budget_arguments(p)
    p.add_argument(
        "--out",
        "-o",
        default=None,
        help="output .onnx path (default: <weights name>.onnx in the current folder)",
    )
    _add_family(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "benchmark",
        help="latency/throughput of backends x sizes x batch sizes vs the FLOP floor",
        description="Time inference for each backend, model size and batch size (warm-up, "
        "pinned threads) and print a Markdown table with each size's ratio to its FLOP floor. "
        "Without --weights: random-init models of --sizes; with --weights: that model.",
        epilog=EPILOG_BENCHMARK,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights",
        "-w",
        default=None,
        help="time this model instead of random-init ones: a checkpoint (.pth, .safetensors), "
        "Hugging Face folder or model-zoo name (every --backends, at its own input size) or an "
        "exported .onnx / OpenVINO .xml (at its export size; default backend: the file's "
        "runtime). --sizes is then not used",
    )
    p.add_argument(
        "--backends",
        "--backend",
        nargs="+",
        default=None,
        choices=["torch-eager", "torch", "onnxruntime", "openvino", "tensorrt"],
        metavar="BACKEND",
        help="what to time: torch-eager, torch, onnxruntime, openvino, tensorrt (default: "
        "torch-eager torch onnxruntime openvino; for an exported "
        "--weights file: onnxruntime for .onnx, openvino for .xml)",
    )
    p.add_argument("--sizes", nargs="+", default=["n", "s"], choices=list("nsmlx"))
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument(
        "--input",
        type=int,
        default=None,
        help="square input size (default 640; with --weights: the model's own)",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="CPU threads for every backend (default 2)"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument(
        "--precision",
        nargs="+",
        default=None,
        choices=PRECISIONS,
        help="openvino precisions to time (default f32; bf16/int8: backbone + encoder reduced, "
        "decoder f32; int8 calibrated on random images: timing only); for an exported "
        "--weights file: the precision its runtime runs (default: the file's own)",
    )
    p.add_argument(
        "--throughput",
        action="store_true",
        help="also time openvino in throughput mode (THROUGHPUT hint, parallel requests)",
    )
    add_budget_arguments(p, many=True)
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    _add_family(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser(
        "app",
        help="serve the Gradio app (detections, refinement, distributions, W(n), GO-LSD)",
        description="Serve the dfine app in the browser, offline, with the bundled demo model "
        "unless --model says otherwise. Ctrl+C stops it.",
        epilog="example:\n  dfine app --model dfine_s_coco.pth --port 7861",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="default model: checkpoint path or zoo name (default: the bundled demo model)",
    )
    p.add_argument(
        "--port", "-p", type=int, default=None, help="port (default GRADIO_SERVER_PORT or 7860)"
    )
    p.add_argument("--host", default=None, help="address (default GRADIO_SERVER_NAME or 127.0.0.1)")
    p.set_defaults(func=cmd_app)

    register_train(sub)
    register_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # a training run says where to resume from
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    except DFineError as e:  # the user's to fix: one line; anything else keeps its traceback
        print(f"error: {error_text(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
