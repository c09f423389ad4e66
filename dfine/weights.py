"""Reading weight files, without building a model: reference ``.pth`` files through
``torch.load(weights_only=True)`` (a file holding pickled code is refused), this project's
``.safetensors`` (weights + JSON metadata), and the model configuration a reference-layout
state dict was made for (size and class count from tensor shapes).

The one place that opens a torch or safetensors weight file: :mod:`dfine.checkpoint` (whole
checkpoints) and :mod:`dfine.hf` (Hugging Face folders) both read through it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from dfine import zoo
from dfine.config import ABLATIONS, FAMILIES, ModelConfig, check_family, get_config
from dfine.errors import InvalidArgumentError

METADATA_KEY = "dfine"
# keys that alias the same tensor in the reference layout
ALIASES = {"decoder.decoder.up": "decoder.up", "decoder.decoder.reg_scale": "decoder.reg_scale"}


class CheckpointError(InvalidArgumentError):
    """A file that is not a usable D-FINE checkpoint; the message says why and what to do."""


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    return restore_aliases(sd), check_metadata(meta, path)


MAX_INPUT_SIZE = 2048
"""Largest input side a checkpoint's metadata may declare (memory grows with its square)."""


def check_metadata(meta: Any, path: Path) -> dict[str, Any]:
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
    family = meta.get("family", "dfine")
    if family not in FAMILIES:
        raise CheckpointError(
            f"{path}: its metadata's family must be one of {', '.join(FAMILIES)}, got {family!r}"
        )
    return meta


def choose_family(path: Path, meta: Mapping[str, Any], family: str | None = None) -> str:
    """The model family to build for the checkpoint at ``path``: ``family`` when given (it
    must agree with the file's metadata), else the metadata's ``family``, else ``deim`` for a
    file whose name starts with ``deim`` (DEIM's release names, ``deim_dfine_hgnetv2_n_coco.pth``),
    else ``dfine`` (a model-zoo file: its entry's family). The file cannot tell: D-FINE and DEIM-D-FINE have the same keys and shapes."""
    recorded = meta.get("family")
    if family is not None:
        check_family(family)
        if recorded is not None and recorded != family:
            raise CheckpointError(
                f"{path}: its metadata says family {recorded!r}, not {family!r}; "
                "leave the family out to use the file's own"
            )
        return family
    if recorded is not None:
        return recorded
    name = Path(path).name
    known = zoo.family_of_file(name)  # DEIM's Objects365 X keeps D-FINE's ReLU decoder
    return known or ("deim" if name.lower().startswith("deim") else "dfine")


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything else than tensors and plain
    containers (pickled code) is refused with one line saying why and what to do."""
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
            f"{path} is not a readable PyTorch checkpoint: it is truncated or corrupt "
            f"({type(e).__name__}); download or save it again"
        ) from e
    return obj


def read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A reference ``.pth`` file's state dict (model or EMA weights) and empty metadata."""
    return extract_state_dict(load_torch_file(path), path), {}


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
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
    return restore_aliases(dict(tensors))


def restore_aliases(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
