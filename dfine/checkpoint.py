"""Loading and saving weights.

Formats read:
- reference ``.pth`` files (``{'model': sd}`` or ``{'ema': {'module': sd}, ...}``, or a bare state
  dict), always through ``torch.load(weights_only=True)``: a file holding pickled code is refused;
- this project's ``.safetensors`` (weights + JSON metadata: size, classes, input size, recipe).

The model size and class count are inferred from tensor shapes, and weights load strictly.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dfine.config import ABLATIONS, ModelConfig, get_config
from dfine.io import atomic_write
from dfine.model import DFINE

METADATA_KEY = "dfine"
# keys that alias the same tensor in the reference layout
ALIASES = {"decoder.decoder.up": "decoder.up", "decoder.decoder.reg_scale": "decoder.reg_scale"}


class CheckpointError(ValueError):
    """A file that is not a usable D-FINE checkpoint; the message says why and what to do."""


# ---------------------------------------------------------------------------- reading files
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into ``(state_dict, metadata)`` without building a model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # --- Hugging Face (transformers) layout: a directory with config.json, or its weights ---
    from dfine.hf import is_hf_checkpoint, read_hf_checkpoint

    if is_hf_checkpoint(path):
        sd, meta = read_hf_checkpoint(path)
        return sd, _check_metadata(meta, path)
    # ---
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); download or save it again")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    meta: dict[str, Any] = {}
    if METADATA_KEY in raw_meta:
        try:
            meta = json.loads(raw_meta[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: its metadata is not valid JSON ({e})") from e
    return _restore_aliases(sd), _check_metadata(meta, path)


MAX_INPUT_SIZE = 2048
"""Largest input side a checkpoint's metadata may declare (memory grows with its square)."""


def _check_metadata(meta: Any, path: Path) -> dict[str, Any]:
    """``meta`` if it is a JSON object whose ``input_size`` and ``class_names`` (when set)
    are usable; a file from a stranger could declare a size that exhausts memory."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is a {type(meta).__name__}, not an object")
    size = meta.get("input_size")
    if size and not (  # empty or missing: the model's own size (see load_model)
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(type(s) is int and 64 <= s <= MAX_INPUT_SIZE and s % 32 == 0 for s in size)
    ):
        raise CheckpointError(
            f"{path}: its metadata's input_size must be [height, width], multiples of 32 "
            f"from 64 to {MAX_INPUT_SIZE}, got {size!r}"
        )
    names = meta.get("class_names")
    if names is not None and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{path}: its metadata's class_names must be a list of strings")
    ablation = meta.get("ablation", "none")
    if ablation not in ABLATIONS:
        raise CheckpointError(
            f"{path}: its metadata's ablation must be one of {', '.join(ABLATIONS)}, "
            f"got {ablation!r}"
        )
    return meta


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects ({found.group(1)}) "
                "besides tensors, which could run code when loaded (only weights_only loading "
                "is allowed). If the file is yours, re-save just its state dict: "
                "torch.save(model.state_dict(), path)."
            ) from e
        raise CheckpointError(
            f"{path} cannot be read as a weights-only PyTorch checkpoint: it is corrupt, not a "
            "checkpoint, or a raw pickle (which could run code when unpickled, so it is refused)"
        ) from e
    except Exception as e:  # torch raises many types for non-checkpoint bytes
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}"
        ) from e
    return _extract_state_dict(obj, path), {}


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    if "ema" in obj and isinstance(obj["ema"], Mapping) and "module" in obj["ema"]:
        sd = obj["ema"]["module"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    else:
        sd = obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors or not any(k.startswith("backbone.") for k in tensors):
        keys = ", ".join(list(obj)[:8])
        raise CheckpointError(
            f"{path} does not look like a D-FINE checkpoint: no 'backbone.*' weights found "
            f"(top-level keys: {keys})"
        )
    return _restore_aliases(dict(tensors))


def _restore_aliases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for alias, source in ALIASES.items():
        if alias not in sd and source in sd:
            sd[alias] = sd[source]
    return sd


# ---------------------------------------------------------------------------- inference
def infer_config(sd: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The model configuration a reference-layout state dict was made for.

    Size from backbone/encoder shapes, plus num_classes, number of decoder layers, whether
    denoising embeddings exist and whether the box head predicts distributions (else the
    ``ablation="fdr"`` RT-DETR-style head of 4 deltas; ``golsd`` has the full model's
    shapes and is known only from metadata).
    """
    try:
        stem = sd["backbone.stem.stem1.conv.weight"].shape[0]
        stem_out = sd["backbone.stem.stem4.conv.weight"].shape[0]
        hidden = sd["encoder.input_proj.0.conv.weight"].shape[0]
        num_classes = sd["decoder.enc_score_head.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not a D-FINE (HGNetv2) state dict: key {e} is missing") from e
    levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.input_proj.")})
    if stem == 16:
        size = "n" if levels == 2 else "s"
    elif stem == 24:
        size = "m"
    elif stem == 32:
        size = "l" if stem_out == 48 else "x"
    else:
        raise CheckpointError(
            f"unrecognised HGNetv2 stem width {stem}; not an official D-FINE size"
        )
    cfg = get_config(size, num_classes)
    if hidden != cfg.encoder.hidden_dim:
        raise CheckpointError(
            f"encoder width {hidden} does not match D-FINE-{size.upper()} ({cfg.encoder.hidden_dim})"
        )
    num_layers = len({k.split(".")[2] for k in sd if k.startswith("decoder.dec_bbox_head.")})
    has_dn = "decoder.denoising_class_embed.weight" in sd
    head = [k for k in sd if k.startswith("decoder.dec_bbox_head.0.") and k.endswith(".weight")]
    box_out = sd[max(head)].shape[0] if head else None
    dec = dataclasses.replace(
        cfg.decoder,
        num_layers=num_layers or cfg.decoder.num_layers,
        num_denoising=cfg.decoder.num_denoising if has_dn else 0,
        ablation="fdr" if box_out == 4 else "none",
    )
    return dataclasses.replace(cfg, decoder=dec)


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
        from dfine.coco import COCO_CLASSES

        return COCO_CLASSES
    if num_classes == 366:
        from dfine.obj365 import OBJ365_LABEL_NAMES

        return OBJ365_LABEL_NAMES
    return None


def load_model(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> DFINE:
    """A D-FINE model from a checkpoint file, in eval mode on ``device``.

    ``source``: a reference ``.pth``, a project ``.safetensors``, a Hugging Face
    transformers-layout checkpoint (folder with ``config.json``, see :mod:`dfine.hf`), or a
    model-zoo name (see :mod:`dfine.zoo`). Size and class count are read from the weights; ``num_classes``,
    when given, is checked against them.
    """
    path = Path(source)
    if not path.exists():
        from dfine import zoo

        if zoo.is_zoo_name(str(source)):
            path = zoo.download(str(source))
        else:
            raise FileNotFoundError(
                f"checkpoint not found: {source}. Pass a .pth/.safetensors path or a model-zoo "
                f"name ({', '.join(zoo.names()[:4])}, ...)"
            )
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
    cfg = cfg.with_ablation(ablation)
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
    return model.to(device).eval()


# ---------------------------------------------------------------------------- writing
def save_model(
    model: DFINE, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save weights. ``.safetensors``: weights plus JSON metadata (never pickled).
    ``.pth``: the reference checkpoint layout ``{'model': state_dict, 'date': ...}``, loadable by
    the reference code. Written atomically (temporary file, then rename)."""
    if getattr(model, "deployed", False):
        raise ValueError("a deployed (fused) model has no reference layout; save before deploy()")
    path = Path(path)
    sd = model.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {
            "size": model.config.size,
            "num_classes": model.num_classes,
            "class_names": list(model.class_names) if model.class_names else None,
            "input_size": list(model.config.eval_size),
            "ablation": model.config.decoder.ablation,
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
