"""``dfine train`` and ``dfine val``. ``register_cli(subparsers)`` adds both to the main parser;
``python -m dfine.train train|val ...`` runs them on their own (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dfine.argtypes import non_negative_int, positive_int

__all__ = ["build_parser", "main", "register_cli"]

EPILOG_TRAIN = """recipes (the reference configs, and synth for a CPU demo):
{recipes}

--data is a folder in the COCO layout (annotations/instances_train*.json with train*/ images,
annotations/instances_val*.json with val*/ images; what `dfine data synth` writes) or a COCO
json file (images in --images).

examples:
  dfine data synth --out data/synth && dfine train --recipe synth --data data/synth --out runs/synth
  dfine train --recipe synth --data data/synth --out runs/synth --resume      # continue last.pth
  dfine train --recipe obj2custom_s --data data/mine --tune-from dfine_s_obj365 --epochs 40
  torchrun --nproc_per_node 8 -m dfine.train train --recipe coco_l --data /data/coco

writes to --out: last.pth (full training state, every epoch), checkpointNNNN.pth, best.safetensors
(best EMA weights, with recipe/classes/metrics), final.safetensors, metrics.jsonl, metrics.csv,
train.log and tensorboard/ (only process 0 writes)."""

EPILOG_VAL = """examples:
  dfine val --weights runs/synth/best.safetensors --data data/synth
  dfine val --weights dfine_n_coco.pth --data /data/coco/annotations/instances_val2017.json \\
      --images /data/coco/val2017"""


def _wrapped(names: list[str], width: int = 96) -> str:
    import textwrap

    return textwrap.fill(", ".join(names), width=width, initial_indent="  ", subsequent_indent="  ")


def cmd_train(args: argparse.Namespace) -> int:
    from dfine.train import dist
    from dfine.train.run import TrainRun, train

    run = TrainRun(
        recipe=args.recipe,
        data=args.data,
        val_data=args.val_data,
        images=args.images,
        val_images=args.val_images,
        out=args.out,
        epochs=args.epochs,
        stop_epoch=args.stop_epoch,
        batch_size=args.batch_size,
        lr_scale=args.lr_scale,
        scheduler=args.scheduler,
        flat_epochs=args.flat_epochs,
        input_size=args.input_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        deterministic=args.deterministic,
        resume=args.resume,
        tune_from=args.tune_from,
        ablation=args.ablate,
        eval_every=args.eval_every,
        no_val=args.no_val,
        max_steps_per_epoch=args.max_steps_per_epoch,
        sync_bn=args.sync_bn,
        channels_last=args.channels_last,
        progress=not args.quiet,
        tensorboard=not args.no_tensorboard,
    )
    from dfine.train.trainer import NonFiniteLossError

    try:
        summary = train(run)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if dist.is_main():
        best = summary["best"]
        if best["epoch"] >= 0:
            print(
                f"best AP {best['top1']:.4f} at epoch {best['epoch']} -> {args.out}/best.safetensors"
            )
        print(
            f"trained {summary['epochs']} epoch(s), {summary['global_step']} steps in "
            f"{summary['seconds']:.0f} s; final weights {args.out}/final.safetensors"
        )
    return 0


def cmd_val(args: argparse.Namespace) -> int:
    from dfine.train import dist
    from dfine.train.run import validate

    if args.precision or Path(args.weights).suffix in (".xml", ".onnx"):
        from dfine.guard import evaluate_file

        backend = "openvino" if Path(args.weights).suffix != ".onnx" else "onnxruntime"
        metrics = evaluate_file(
            args.weights,
            args.data,
            backend=backend,
            precision=args.precision,
            progress=not args.quiet,
        )
        _print_metrics(metrics, args.json)
        return 0
    metrics = validate(
        args.weights,
        args.data,
        images=args.images,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        backend=args.backend,
        progress=not args.quiet,
    )
    if not dist.is_main():
        return 0
    _print_metrics(metrics, args.json)
    return 0


def _print_metrics(metrics: dict[str, float], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        for name, value in metrics.items():
            print(f"{name:>6}: {value:.4f}")


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from dfine.train.recipes import recipe_names

    p = subparsers.add_parser(
        "train",
        help="train D-FINE with a named recipe on a COCO-format dataset",
        description="Train D-FINE (AdamW param groups, warm-up, EMA, grad clipping 0.1, AMP on "
        "GPU) with a reference recipe; evaluates COCO mAP and keeps the best EMA weights.",
        epilog=EPILOG_TRAIN.format(recipes=_wrapped(recipe_names())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        "-r",
        default="synth",
        choices=recipe_names(),
        metavar="NAME",
        help="training recipe (default synth; see below)",
    )
    p.add_argument("--data", "-d", required=True, help="dataset folder or COCO train json")
    p.add_argument("--val-data", help="val json or folder (default: the val split of --data)")
    p.add_argument("--images", help="image folder of a --data json")
    p.add_argument("--val-images", help="image folder of a --val-data json")
    p.add_argument("--out", "-o", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the recipe's)")
    p.add_argument(
        "--stop-epoch",
        type=non_negative_int,
        help="epoch where augmentation/multi-scale stop and the EMA restarts",
    )
    p.add_argument(
        "--batch-size",
        "-b",
        type=positive_int,
        help="total batch size over all processes (default: the recipe's)",
    )
    p.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        help="multiply every learning rate by this (e.g. with a smaller batch)",
    )
    p.add_argument(
        "--scheduler",
        choices=["multistep", "flatcosine"],
        help="lr schedule: the reference's warm-up + MultiStepLR (default) or "
        "warm-up, flat, then cosine to 5%% of the base lr",
    )
    p.add_argument(
        "--flat-epochs",
        type=non_negative_int,
        help="flatcosine: epochs at the base lr before the cosine decay",
    )
    p.add_argument("--input-size", type=positive_int, help="train/eval size, a multiple of 32")
    p.add_argument("--workers", type=non_negative_int, help="data loader workers per process")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "fp16", "bf16"],
        help="mixed precision: auto = fp16 on CUDA when the recipe uses AMP, else off",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels; with the same seed a resumed run ends bit-identical",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue a run from a training checkpoint (default OUT/last.pth)",
    )
    p.add_argument(
        "--tune-from",
        metavar="WEIGHTS",
        help="start from pretrained weights (file or zoo name), any class count",
    )
    p.add_argument(
        "--ablate",
        choices=["none", "fdr", "golsd"],
        default="none",
        help="the paper's ablation: fdr = no distributions (RT-DETR-style box deltas, L1+GIoU, "
        "no FGL/DDF/LQE); golsd = FDR with FGL but no DDF self-distillation (default none: "
        "the full D-FINE); recorded in the checkpoint metadata",
    )
    p.add_argument(
        "--eval-every",
        type=non_negative_int,
        help="evaluate every N epochs and after the last (0: never; default: the recipe's)",
    )
    p.add_argument("--no-val", action="store_true", help="train without a validation set")
    p.add_argument(
        "--max-steps-per-epoch", type=positive_int, help="cap steps per epoch (smoke tests)"
    )
    p.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SyncBatchNorm across GPUs (default: the recipe's; CUDA only)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last weights and images, ~10%% faster convolutions on CPU "
        "(default: on for single-process CPU training)",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_val(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "val",
        help="COCO mAP of a checkpoint on a COCO-format dataset",
        description="Evaluate a checkpoint (AP, AP50, AP75, APs/m/l and AR) on the val split "
        "of a dataset folder or on a COCO json.",
        epilog=EPILOG_VAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights",
        "-w",
        required=True,
        help="checkpoint file, model-zoo name, or an exported .xml / .onnx file",
    )
    p.add_argument("--data", "-d", required=True, help="dataset folder or COCO val json")
    p.add_argument("--images", help="image folder of a --data json")
    p.add_argument("--size", type=positive_int, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", "-b", type=positive_int, default=8, help="default 8")
    p.add_argument("--workers", type=non_negative_int, default=2, help="loader workers (default 2)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "faster_coco_eval", "pycocotools"],
        help="COCO evaluation library (default: faster-coco-eval when installed)",
    )
    p.add_argument(
        "--precision",
        choices=["f32", "bf16", "int8"],
        help="evaluate through OpenVINO at this precision (bf16: backbone + encoder reduced, "
        "decoder f32); an exported .xml / .onnx file is evaluated at its own by default",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_val)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``val`` to the ``dfine`` command's subparsers."""
    _add_train(subparsers)
    _add_val(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dfine.train", description=__doc__)
    register_cli(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dfine.checkpoint import CheckpointError
    from dfine.cli import error_text
    from dfine.train.trainer import NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
