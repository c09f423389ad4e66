"""The names a training run uses, defined without torch (``dfine train --help`` and
``dfine val --help`` are built from them): the files a run writes into its output folder and
the COCO evaluation libraries."""

from __future__ import annotations

LOG_NAME = "train.log"
JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

LAST = "last.pth"
BEST = "best.safetensors"
BEST_STAGE1 = "best_stg1.pth"
FINAL = "final.safetensors"


def periodic_name(epoch: int) -> str:
    """The ``--save-every`` checkpoint after (1-based) ``epoch``."""
    return f"checkpoint{epoch:04}.pth"


OUTPUT_FILES: tuple[tuple[str, str], ...] = (
    (LAST, "full training state after the latest epoch (what --resume continues)"),
    (BEST, "best EMA weights by val AP, with recipe, classes and metrics"),
    (
        BEST_STAGE1,
        "full state of the best epoch before --stop-epoch (the stage-2 restart point)",
    ),
    (FINAL, "EMA weights after the last epoch"),
    (periodic_name(0).replace("0000", "NNNN"), "full state after epoch NNNN, with --save-every"),
    (JSONL_NAME, "one JSON record per epoch (losses, AP, timing, non-finite steps)"),
    (CSV_NAME, "the same records as a table"),
    (LOG_NAME, "everything printed"),
    (TENSORBOARD_DIR + "/", "TensorBoard scalars (unless --no-tensorboard)"),
)
"""Every file a run writes, with what it holds (``dfine train --help`` lists them)."""


def describe_outputs(indent: str = "  ") -> str:
    width = max(len(name) for name, _ in OUTPUT_FILES)
    return "\n".join(f"{indent}{name:<{width}}  {what}" for name, what in OUTPUT_FILES)


COCO_LIBS = ("auto", "faster_coco_eval", "pycocotools")
"""COCO evaluation libraries (``coco_lib``): faster-coco-eval when installed (``auto``), or
pycocotools. Not to be confused with inference backends (``dfine.backends``)."""
