"""``dfine data ...`` commands. ``register_cli(subparsers)`` adds them to the main parser
(from light modules only: each command imports what it runs when it runs)."""

from __future__ import annotations

import argparse
import sys

from dfine.argtypes import fraction, non_negative_int, positive_int

__all__ = ["register_cli"]

EPILOG_SYNTH = """examples:
  dfine data synth --out data/synth
  dfine data synth --out data/tiny --train 64 --val 16 --size 256 192 --seed 1 --photos 0
writes OUT/train/*.jpg, OUT/val/*.jpg, OUT/annotations/instances_train.json and
OUT/annotations/instances_val.json (COCO format; categories 1..8 = red circle, blue square,
green triangle, yellow star, purple ring, orange cross, cyan hexagon, pink heart).
The same arguments always give byte-identical files."""


def cmd_synth(args: argparse.Namespace) -> int:
    from dfine.data.synth import make_synthetic_dataset

    width, height = args.size
    if width < 32 or height < 32:
        print(f"error: --size must be at least 32 32, got {width} {height}", file=sys.stderr)
        return 2
    paths = make_synthetic_dataset(
        args.out,
        num_train=args.train,
        num_val=args.val,
        image_size=(width, height),
        seed=args.seed,
        photo_fraction=args.photos,
        image_format=args.format,
        workers=args.workers,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(
            f"wrote {args.train} train and {args.val} val images ({width}x{height}, seed "
            f"{args.seed}) to {paths['root']}\n"
            f"  annotations: {paths['train_annotations']}, {paths['val_annotations']}"
        )
    return 0


EPILOG_SYNTH_VIDEO = """examples:
  dfine data synth-video clip.webm
  dfine data synth-video runs/clip.avi --frames 100 --size 640 480 --objects 5 --seed 2
  dfine data synth-video blurred.webm --frames 30 --blur 12 13   # motion blur in two frames
writes the clip (.webm VP8, .avi MJPG or .mp4 MPEG-4) and <stem>.gt.json with every
object's class and box in every frame (shapes of the synthetic dataset moving on straight
lines; the demo model assets/dfine_n_synth.safetensors detects them)."""


def cmd_synth_video(args: argparse.Namespace) -> int:
    from dfine.data.synth_video import write_synth_video

    video, truth = write_synth_video(
        args.out,
        args.frames,
        tuple(args.size),
        fps=args.fps,
        num_objects=args.objects,
        seed=args.seed,
        blur=args.blur,
    )
    if not args.quiet:
        print(f"wrote {video} ({args.frames} frames) and its ground truth {truth}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` (with ``data synth``) to the ``dfine`` command's subparsers."""
    data = subparsers.add_parser(
        "data",
        help="dataset tools: generate the synthetic shapes dataset",
        description="Dataset tools (see each command's --help).",
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    _register_synth_video(sub)
    p = sub.add_parser(
        "synth",
        help="write a deterministic synthetic COCO-format dataset of coloured shapes",
        description=(
            "Write a seeded synthetic detection dataset of 8 classes of coloured shapes "
            "(1-8 per image, 10 px to ~40% of the image, partly overlapping, on textured or "
            "photo backgrounds) in COCO format, with train and val splits."
        ),
        epilog=EPILOG_SYNTH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", "-o", required=True, help="output folder (created if needed)")
    p.add_argument(
        "--train", type=non_negative_int, default=1000, help="number of train images (default 1000)"
    )
    p.add_argument(
        "--val", type=non_negative_int, default=200, help="number of val images (default 200)"
    )
    p.add_argument(
        "--size",
        type=non_negative_int,
        nargs=2,
        default=(320, 320),
        metavar=("W", "H"),
        help="image width and height in pixels (default 320 320)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--photos",
        type=fraction,
        default=0.2,
        help="share of backgrounds cut from assets/examples photos, 0..1 (default 0.2)",
    )
    p.add_argument(
        "--format",
        choices=("jpg", "png"),
        default="jpg",
        help="image format (default jpg, quality 95; png is lossless)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="worker processes (default: one per CPU, up to 8; 0: none). The output does "
        "not depend on it",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_synth)
    return data


def _register_synth_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth-video",
        help="write a synthetic clip of moving shapes and its per-frame ground truth",
        description="Write a seeded clip of synthetic shapes moving on straight lines over a "
        "procedural background, and <stem>.gt.json with every object's box in every frame.",
        epilog=EPILOG_SYNTH_VIDEO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="output video: .webm, .avi or .mp4")
    p.add_argument("--frames", type=positive_int, default=60, help="number of frames (default 60)")
    p.add_argument(
        "--size",
        type=positive_int,
        nargs=2,
        default=(320, 320),
        metavar=("W", "H"),
        help="frame width and height (default 320 320)",
    )
    p.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    p.add_argument("--objects", type=positive_int, default=3, help="moving shapes, 1-8 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--blur",
        type=non_negative_int,
        nargs="*",
        default=[],
        metavar="FRAME",
        help="frames (0-based) to smear with a horizontal motion blur: the model's edge "
        "uncertainty jumps there (see the app's track view)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_synth_video)
