"""Loading and saving weights.

Formats read:
- reference ``.pth`` files (``{'model': sd}`` or ``{'ema': {'module': sd}, ...}``, or a bare state
  dict), always through ``torch.load(weights_only=True)``: a file holding pickled code is refused;
- this project's ``.safetensors`` (weights + JSON metadata: size, classes, input size, recipe).

The model size and class count are inferred from tensor shapes (:mod:`dfine.weights`), and
weights load strictly.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dfine.coco import COCO_CLASSES
from dfine.errors import InputFileError, InvalidArgumentError
from dfine.files import atomic_write
from dfine.hf import is_hf_checkpoint, read_hf_checkpoint
from dfine.model import DFINE
from dfine.obj365 import OBJ365_LABEL_NAMES
from dfine.sources import is_onnx, resolve
from dfine.weights import (
    ALIASES,
    MAX_INPUT_SIZE,
    METADATA_KEY,
    CheckpointError,
    check_metadata,
    choose_family,
    infer_config,
    read_safetensors,
    read_torch,
)

__all__ = [
    "ALIASES",
    "MAX_INPUT_SIZE",
    "METADATA_KEY",
    "CheckpointError",
    "default_class_names",
    "infer_config",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_model",
]


# ---------------------------------------------------------------------------- reading files
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into ``(state_dict, metadata)`` without building a model."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"checkpoint not found: {path}")
    # --- Hugging Face (transformers) layout: a directory with config.json, or its weights ---
    if is_hf_checkpoint(path):
        sd, meta = read_hf_checkpoint(path)
        return sd, check_metadata(meta, path)
    # ---
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); download or save it again")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch(path)


# ---------------------------------------------------------------------------- inference
def _describe_mismatch(model: DFINE, sd: Mapping[str, torch.Tensor], limit: int = 10) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shaped = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd
        and sd[k].shape != own[k].shape
        and k not in ("decoder.anchors", "decoder.valid_mask")
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {title}: " + ", ".join(items[:limit]) + more)
    return "; ".join(parts)


def load_state_dict_strict(model: DFINE, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load strictly; anchors/valid_mask may have any length (they are recomputed per input)."""
    sd = dict(sd)
    for name in ("anchors", "valid_mask"):
        key = f"decoder.{name}"
        if key in sd and sd[key].shape != getattr(model.decoder, name).shape:
            setattr(model.decoder, name, torch.empty_like(sd[key]))
    problem = _describe_mismatch(model, sd)
    if problem:
        raise CheckpointError(
            f"{source} does not fit a D-FINE-{model.config.size.upper()}: {problem}"
        )
    model.load_state_dict(sd, strict=True)
    bad = [
        k
        for k, v in sd.items()
        if v.is_floating_point() and k != "decoder.anchors" and not torch.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(f"{source} has non-finite (NaN/inf) weights in: {', '.join(bad[:5])}")


def default_class_names(num_classes: int) -> tuple[str, ...] | None:
    """COCO names for 80 classes, Objects365 names for the reference's 366-logit heads."""
    if num_classes == 80:
        return COCO_CLASSES
    if num_classes == 366:
        return OBJ365_LABEL_NAMES
    return None


def load_model(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    family: str | None = None,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
) -> DFINE:
    """A D-FINE model from a checkpoint file, in eval mode on ``device``.

    ``decoder_layers`` / ``num_queries``: an inference budget, see
    :meth:`dfine.model.DFINE.set_decoder_budget` (default: every layer, 300 queries).

    ``source``: a reference ``.pth``, a project ``.safetensors``, a Hugging Face
    transformers-layout checkpoint (folder with ``config.json``, see :mod:`dfine.hf`), or a
    model-zoo name (see :mod:`dfine.zoo`). Size and class count are read from the weights; ``num_classes``,
    when given, is checked against them. ``family`` (``dfine`` or ``deim``) says which decoder
    the weights were trained with; by default the file's metadata, else ``deim`` for a file
    named ``deim…`` (see :func:`dfine.weights.choose_family`).
    """
    if is_onnx(source):
        raise CheckpointError(
            f"{source} is an exported ONNX graph, not a checkpoint: run it with "
            f"dfine.Detector({str(source)!r}) (ONNX Runtime) instead of load_model()"
        )
    path = resolve(source)
    sd, meta = read_checkpoint(path)
    cfg = infer_config(sd)
    if num_classes is not None and num_classes != cfg.num_classes:
        raise CheckpointError(f"{path} has {cfg.num_classes} classes, not {num_classes}")
    if meta.get("input_size"):
        cfg = dataclasses.replace(cfg, eval_size=tuple(meta["input_size"]))
    ablation = meta.get("ablation", cfg.ablation)
    if (ablation == "fdr") != (cfg.ablation == "fdr"):
        has = "4 box deltas per layer" if cfg.ablation == "fdr" else "per-edge distributions"
        raise CheckpointError(
            f"{path}: its metadata says ablation {ablation!r} but its box head has {has}; "
            "the file is inconsistent, save it again"
        )
    cfg = cfg.with_ablation(ablation).with_family(choose_family(path, meta, family))
    names = meta.get("class_names")
    if names is not None and len(names) != cfg.num_classes:
        raise CheckpointError(
            f"{path}: metadata lists {len(names)} class names for {cfg.num_classes} classes"
        )
    if names is None:
        names = default_class_names(cfg.num_classes)
    model = DFINE(cfg, class_names=tuple(names) if names else None)
    load_state_dict_strict(model, sd, str(path))
    model.metadata = meta
    return model.to(device).eval().set_decoder_budget(decoder_layers, num_queries)


# ---------------------------------------------------------------------------- writing
def save_model(
    model: DFINE, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save weights. ``.safetensors``: weights plus JSON metadata (never pickled).
    ``.pth``: the reference checkpoint layout ``{'model': state_dict, 'date': ...}``, loadable by
    the reference code. Written atomically (temporary file, then rename)."""
    if getattr(model, "deployed", False):
        raise InvalidArgumentError(
            "a deployed (fused) model has no reference layout; save before deploy()"
        )
    path = Path(path)
    sd = model.state_dict()
    if path.suffix == ".safetensors":
        meta = {
            "size": model.config.size,
            "num_classes": model.num_classes,
            "class_names": list(model.class_names) if model.class_names else None,
            "input_size": list(model.config.eval_size),
            "ablation": model.config.decoder.ablation,
            "family": model.config.family,
            **(metadata or {}),
        }
        tensors = {
            k: v.detach().cpu().contiguous().clone() for k, v in sd.items() if k not in ALIASES
        }
        header = {METADATA_KEY: json.dumps(meta), "format": "pt"}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    ckpt = {
        "date": _dt.datetime.now().isoformat(),
        "model": {k: v.detach().cpu() for k, v in sd.items()},
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
