"""Start training from pretrained weights of another dataset (``--tune-from``).

Every tensor whose name and shape match is loaded. Class-dependent tensors whose shape differs
(the encoder/decoder score heads and the denoising class embedding) are skipped and reported,
except between the Objects365 (366 logits) and COCO (80) heads, whose rows are carried over
class by class as the reference's ``BaseSolver._adjust_head_parameters`` does (for the score
heads; the denoising embedding is dropped there as well). The reference also applies that COCO
table to heads of other sizes, which pairs unrelated classes; here those are skipped instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfine import zoo
from dfine.checkpoint import read_checkpoint
from dfine.train.optim import unwrap

# For each contiguous COCO label 0..79, the Objects365 category index (0-based) of the same
# class; the reference's ``BaseSolver.obj365_ids`` (D-FINE 4a1f73a, src/solver/_solver.py).
# The 366-wide Objects365 heads index by category id, i.e. this index + 1.
OBJ365_INDEX_OF_COCO_LABEL: tuple[int, ...] = (
    0, 46, 5, 58, 114, 55, 116, 65, 21, 40, 176, 127, 249, 24, 56, 139, 92, 78, 99, 96,
    144, 295, 178, 180, 38, 39, 13, 43, 120, 219, 148, 173, 165, 154, 137, 113, 145, 146,
    204, 8, 35, 10, 88, 84, 93, 26, 112, 82, 265, 104, 141, 152, 234, 143, 150, 97, 2, 50,
    25, 75, 98, 153, 37, 73, 115, 132, 106, 61, 163, 134, 277, 81, 133, 18, 94, 30, 169,
    70, 328, 226,
)  # fmt: skip

# buffers recomputed for every input size; their length depends on the eval size
_SIZE_BUFFERS = ("decoder.anchors", "decoder.valid_mask")


def is_class_head(name: str) -> bool:
    """Tensors whose first dimension is the number of classes."""
    return (
        name.startswith("decoder.enc_score_head.")
        or name.startswith("decoder.dec_score_head.")
        or name == "decoder.denoising_class_embed.weight"
    )


def _is_score_head(name: str) -> bool:
    return name.startswith(("decoder.enc_score_head.", "decoder.dec_score_head."))


@dataclass
class TuneReport:
    """What :func:`load_pretrained` did."""

    source: str
    loaded: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)  # class rows carried over by name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def summary(self) -> str:
        """A few lines for the log."""
        lines = [
            f"tune-from {self.source}: loaded {len(self.loaded)} tensors"
            + (
                f", remapped {len(self.remapped)} class heads (Objects365 <-> COCO)"
                if self.remapped
                else ""
            )
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} (kept their fresh initialisation):")
            lines += [f"  {name}: {why}" for name, why in self.skipped]
        if self.missing:
            lines.append(
                f"missing from the file ({len(self.missing)}): " + ", ".join(self.missing[:10])
            )
        if self.unexpected:
            lines.append(
                f"not used from the file ({len(self.unexpected)}): "
                + ", ".join(self.unexpected[:10])
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "remapped": list(self.remapped),
            "skipped": [list(s) for s in self.skipped],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


def remap_class_rows(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor | None:
    """Carry class rows between an Objects365 (366) and a COCO (80) head; None otherwise."""
    rows_t, rows_s = target.shape[0], source.shape[0]
    if target.shape[1:] != source.shape[1:]:
        return None
    out = target.detach().clone()
    if (rows_s, rows_t) == (366, 80):
        for coco, obj in enumerate(OBJ365_INDEX_OF_COCO_LABEL):
            out[coco] = source[obj + 1]
        return out
    if (rows_s, rows_t) == (80, 366):
        for coco, obj in enumerate(OBJ365_INDEX_OF_COCO_LABEL):
            out[obj + 1] = source[coco]
        return out
    return None


def match_state(
    own: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor], source: str = ""
) -> tuple[dict[str, torch.Tensor], TuneReport]:
    """The subset of ``pretrained`` to load into a model whose state dict is ``own``."""
    report = TuneReport(source=source)
    chosen: dict[str, torch.Tensor] = {}
    for name, mine in own.items():
        if name not in pretrained:
            report.missing.append(name)
            continue
        theirs = pretrained[name]
        if theirs.shape == mine.shape:
            chosen[name] = theirs
            report.loaded.append(name)
        elif name in _SIZE_BUFFERS:
            continue  # recomputed for the input size
        elif _is_score_head(name) and (mapped := remap_class_rows(mine, theirs)) is not None:
            chosen[name] = mapped
            report.remapped.append(name)
        else:
            why = "class count differs" if is_class_head(name) else "shape differs"
            report.skipped.append(
                (name, f"{why}: file {tuple(theirs.shape)} vs model {tuple(mine.shape)}")
            )
    report.unexpected = [k for k in pretrained if k not in own]
    return chosen, report


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> TuneReport:
    """Load the matching tensors of the checkpoint ``path`` into ``model`` (in place).

    ``path``: a reference ``.pth`` (EMA weights preferred, as the reference), a project
    ``.safetensors``, a training checkpoint, or a model-zoo name (downloaded). Returns the :class:`TuneReport`.
    """
    if not Path(path).exists() and zoo.is_zoo_name(str(path)):
        path = zoo.download(str(path))
    sd, _ = read_checkpoint(path)
    module = unwrap(model)
    chosen, report = match_state(module.state_dict(), sd, str(path))
    module.load_state_dict(chosen, strict=False)
    return report
