"""``dfine train`` and ``dfine val``: ``register_cli(subparsers)`` adds both to the one ``dfine``
parser (:mod:`dfine.cli`, which also maps exceptions to exit codes); ``python -m dfine.train
train|val ...`` is the same entry point (for ``torchrun``). The parser is built from light
modules only: each command imports what it runs when it runs."""

from __future__ import annotations

import argparse
import json
import textwrap

from dfine import webapp
from dfine.argtypes import (
    SWEEP_IMAGES,
    SWEEP_RUNTIMES,
    add_budget_arguments,
    fraction,
    non_negative_int,
    positive_int,
)
from dfine.backends import BACKENDS
from dfine.config import FAMILIES
from dfine.errors import InvalidArgumentError
from dfine.precision import OPENVINO_PRECISIONS
from dfine.train.names import BEST, COCO_LIBS, FINAL, describe_outputs
from dfine.train.recipes import recipe_names

__all__ = ["register_cli"]

EPILOG_TRAIN = """recipes (the reference configs, and synth for a CPU demo):
{recipes}

--data is a folder in the COCO layout (annotations/instances_train*.json with train*/ images,
annotations/instances_val*.json with val*/ images; what `dfine data synth` writes) or a COCO
json file (images in --images).

examples:
  dfine data synth --out data/synth && dfine train --recipe synth --data data/synth --out runs/synth
  dfine train --recipe synth --data data/synth --out runs/synth --resume      # continue last.pth
  dfine train --recipe obj2custom_s --data data/mine --tune-from dfine_s_obj365 --epochs 40
  dfine train --recipe synth --data data/synth --out runs/fdr --ablate fdr   # RT-DETR-style baseline
  torchrun --nproc_per_node 8 -m dfine.train train --recipe coco_l --data /data/coco

writes to --out (process 0 only; checkpoints and weights atomically, so an interrupted run
leaves complete ones; epochs are numbered from 1):
{outputs}
SIGINT (Ctrl+C) or SIGTERM stops with one line saying where to resume from (exit code 130); a
non-finite loss with --stop-on-nan, or a non-finite gradient norm, stops with exit code 3."""

EPILOG_VAL = """examples:
  dfine val --weights runs/synth/best.safetensors --data data/synth
  dfine val --weights runs/synth/best.safetensors --data data/synth --report runs/report
      # + per-stage AP, edge-σ calibration, PR curves, confusion, error gallery, index.html
  dfine val --weights runs/synth/best.safetensors --data data/synth --per-layer  # table only
  dfine val --weights dfine_n.onnx --data data/synth --backend onnxruntime
  dfine val --weights dfine_n_coco.pth --data /data/coco/annotations/instances_val2017.json \\
      --images /data/coco/val2017"""


def _wrapped(names: list[str], width: int = 96) -> str:
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
        save_every=args.save_every,
        stop_on_nan=args.stop_on_nan,
    )
    summary = train(run)  # NonFiniteLossError: exit code 3 (its exit_code)
    if dist.is_main():
        print(summary_text(summary, args.out))
    return 0


def summary_text(summary: dict, out: str) -> str:
    """What ``dfine train`` prints at the end (epochs 1-based; a resumed run's own steps and
    seconds apart from the whole run's epochs)."""
    lines = []
    best = summary["best"]
    if best["epoch"] >= 0:
        lines.append(f"best AP {best['top1']:.4f} at epoch {best['epoch'] + 1} -> {out}/{BEST}")
    line = (
        f"this invocation: {summary['steps_this_run']} steps in {summary['seconds']:.0f} s; "
        f"whole run: {summary['epochs']} epoch(s), {summary['global_step']} steps"
    )
    if summary.get("nonfinite_steps"):
        line += f"; {summary['nonfinite_steps']} step(s) had non-finite loss terms (see train.log)"
    lines.append(line + f"; final weights {out}/{FINAL}")
    return "\n".join(lines)


def cmd_val(args: argparse.Namespace) -> int:
    from dfine.sources import default_backend
    from dfine.train import dist
    from dfine.train.run import validate

    runtime = args.backend or default_backend(args.weights)
    if args.report or args.per_layer or args.calibration:
        if runtime != "torch":
            raise InvalidArgumentError(
                f"--report, --per-layer and --calibration need the PyTorch model (a .pth or "
                f".safetensors checkpoint, --backend torch); the {runtime} backend gives plain "
                "AP only (drop those options)"
            )
        if args.decoder_layers or args.num_queries:
            raise InvalidArgumentError(
                "--report, --per-layer and --calibration trace every decoder layer on 300 "
                "queries (the report's accuracy-latency table sweeps depths and queries: "
                "--sweep-layers / --sweep-queries); drop --decoder-layers / --num-queries"
            )
        if args.family is not None:
            raise InvalidArgumentError(
                "--family is not supported with --report, --per-layer or --calibration; "
                "save the model with its family first (a file named deim_… is read as DEIM)"
            )
        # the report is the analysis layer's, reached through the library's one seam to it
        return webapp.evaluation_report(args)
    if args.precision and runtime == "torch":  # a checkpoint: reduced through OpenVINO
        runtime = "openvino"
    metrics = validate(
        args.weights,
        args.data,
        images=args.images,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        coco_lib=args.coco_lib,
        progress=not args.quiet,
        backend=runtime,
        precision=args.precision,
        family=args.family,
        decoder_layers=args.decoder_layers,
        num_queries=args.num_queries,
    )
    if not dist.is_main():
        return 0
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for name, value in metrics.items():
            print(f"{name:>6}: {value:.4f}")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train D-FINE with a named recipe on a COCO-format dataset",
        description="Train D-FINE (AdamW param groups, warm-up, EMA, grad clipping 0.1, AMP on "
        "GPU) with a reference recipe; evaluates COCO mAP and keeps the best EMA weights.",
        epilog=EPILOG_TRAIN.format(recipes=_wrapped(recipe_names()), outputs=describe_outputs()),
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
        choices=["multistep", "flatcosine", "deim_flatcosine"],
        help="lr schedule: the reference's warm-up + MultiStepLR (default), "
        "warm-up, flat, then cosine to 5%% of the base lr, or DEIM's (the deim_* recipes')",
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
    p.add_argument(
        "--save-every",
        type=positive_int,
        metavar="N",
        help="also keep the full state every N epochs (checkpointNNNN.pth; default: only "
        "last.pth and the best weights)",
    )
    p.add_argument(
        "--stop-on-nan",
        action="store_true",
        help="stop at the first step with a NaN/inf loss term (default: report it, count it "
        "in metrics, and go on with the term zeroed, as the reference does)",
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
    p.add_argument("--weights", "-w", required=True, help="checkpoint file or model-zoo name")
    p.add_argument(
        "--family",
        choices=list(FAMILIES),
        help="dfine or deim (DEIM-D-FINE) for a checkpoint whose metadata and name do not say it",
    )
    p.add_argument("--data", "-d", required=True, help="dataset folder or COCO val json")
    p.add_argument("--images", help="image folder of a --data json")
    p.add_argument("--size", type=positive_int, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", "-b", type=positive_int, default=8, help="default 8")
    p.add_argument("--workers", type=non_negative_int, default=2, help="loader workers (default 2)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--backend",
        default=None,
        choices=list(BACKENDS),
        help="inference runtime (default: onnxruntime for an .onnx file, else torch); the "
        "others take a checkpoint (exported to ONNX once, cached) or an .onnx file",
    )
    p.add_argument(
        "--precision",
        choices=OPENVINO_PRECISIONS,
        help="evaluate at this precision (OpenVINO; bf16: backbone + encoder reduced, decoder "
        "f32; an exported .xml runs at its own precision by default)",
    )
    p.add_argument(
        "--coco-lib",
        default="auto",
        choices=list(COCO_LIBS),
        help="COCO evaluation library (default: faster-coco-eval when installed)",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write a dataset report to DIR: metrics.json, figures as PNG and SVG, an offline "
        "index.html (per-stage AP, calibration, PR curves, confusion matrix, error gallery; "
        "implies --per-layer and --calibration)",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="score every stage (encoder proposals, pre-head, each decoder layer) as a "
        "detector: AP with its own and with the final layer's scores, mean IoU",
    )
    p.add_argument(
        "--calibration",
        action="store_true",
        help="σ of the edge distributions against the real edge errors, per layer",
    )
    p.add_argument(
        "--threshold",
        type=fraction,
        default=0.5,
        help="report: score threshold of the confusion matrix and error gallery (default 0.5)",
    )
    add_budget_arguments(p)
    p.add_argument(
        "--sweep-images",
        type=non_negative_int,
        default=SWEEP_IMAGES,
        metavar="N",
        help="report: the accuracy-latency table over decoder depth x queries runs on the first "
        f"N val images (default {SWEEP_IMAGES}; 0: no table)",
    )
    p.add_argument(
        "--sweep-layers",
        type=positive_int,
        nargs="+",
        metavar="K",
        help="report: depths to sweep (default 1, the middle and every layer)",
    )
    p.add_argument(
        "--sweep-queries",
        type=positive_int,
        nargs="+",
        metavar="Q",
        help="report: query budgets to sweep (default 100 300)",
    )
    p.add_argument(
        "--sweep-runtimes",
        nargs="+",
        choices=list(SWEEP_RUNTIMES),
        default=["torch"],
        metavar="RUNTIME",
        help="report: runtimes to sweep: torch (default), onnxruntime, openvino",
    )
    p.add_argument("--no-cache", action="store_true", help="report: recompute, ignore the cache")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_val)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``val`` to the ``dfine`` command's subparsers."""
    _add_train(subparsers)
    _add_val(subparsers)
