"""The files a training run writes into its output folder, and writing them.

Only process 0 writes; every file is written atomically (:func:`dfine.io.atomic_write`: a
reader sees the previous complete file or the new one) with the same file mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dfine.checkpoint import save_model
from dfine.train import dist
from dfine.train.metrics import CSV_NAME, JSONL_NAME, LOG_NAME, TENSORBOARD_DIR
from dfine.train.state import atomic_torch_save

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


class RunFiles:
    """Paths and writers of one run's output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    @property
    def last(self) -> Path:
        return self.out_dir / LAST

    @property
    def best(self) -> Path:
        return self.out_dir / BEST

    @property
    def best_stage1(self) -> Path:
        return self.out_dir / BEST_STAGE1

    @property
    def final(self) -> Path:
        return self.out_dir / FINAL

    def periodic(self, epoch: int) -> Path:
        return self.out_dir / periodic_name(epoch)

    def save_state(self, state: dict[str, Any], *paths: Path) -> None:
        """Write a training state (from :meth:`Trainer.state_dict`) to each of ``paths``."""
        if dist.is_main():
            for path in paths:
                atomic_torch_save(state, path)

    def export(self, model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
        """Weights plus metadata as ``.safetensors`` (what ``dfine predict`` loads)."""
        if dist.is_main():
            save_model(model, path, metadata=metadata)


def model_info(model: nn.Module) -> dict[str, Any]:
    """Size, classes and input size of ``model``: what a training state records so a resume
    can check it continues the same model."""
    cfg = getattr(model, "config", None)
    names = getattr(model, "class_names", None)
    return {
        "size": getattr(cfg, "size", None),
        "num_classes": getattr(cfg, "num_classes", None),
        "class_names": list(names) if names else None,
        "input_size": list(getattr(cfg, "eval_size", ()) or ()),
        "ablation": getattr(cfg, "ablation", "none"),
    }
