"""The files a training run writes into its output folder, and writing them.

Only process 0 writes; every file is written atomically (:func:`dfine.files.atomic_write`: a
reader sees the previous complete file or the new one) with the same file mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dfine.checkpoint import save_model
from dfine.train import dist
from dfine.train.names import BEST, BEST_STAGE1, FINAL, LAST, periodic_name
from dfine.train.state import atomic_torch_save


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
        "family": getattr(cfg, "family", "dfine"),
    }
