"""Hugging Face checkpoint folders: which files they hold, reading them (one torch reader,
:func:`dfine.weights.load_torch_file`), and an atomic save."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dfine.config import (
    ModelConfig,
)
from dfine.errors import InvalidArgumentError
from dfine.files import atomic_write
from dfine.hf.config import (
    config_differences,
    hf_class_names,
    hf_config_to_model_config,
    model_config_to_hf_config,
)
from dfine.hf.state_dict import hf_to_reference_state_dict, reference_to_hf_state_dict
from dfine.weights import METADATA_KEY, CheckpointError, infer_config, load_torch_file

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"
WEIGHT_NAMES = (SAFETENSORS_NAME, TORCH_NAME)
INDEX_NAMES = (SAFETENSORS_NAME + ".index.json", TORCH_NAME + ".index.json")


# ---------------------------------------------------------------------------- files
def _hf_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _safetensors_kind(path: Path) -> str | None:
    """'hf' / 'project' / None (unreadable) for a safetensors file, from its header only."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except (SafetensorError, OSError):  # not a safetensors file, or unreadable
        return None
    if METADATA_KEY in meta:
        return "project"
    return "hf" if any(k.startswith("model.backbone.") for k in keys) else None


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """True for a transformers D-FINE checkpoint: a directory holding ``config.json`` or
    transformers weight files, its ``config.json``, its weights (``model.safetensors``,
    ``pytorch_model.bin``, a shard index), or any ``.safetensors`` with ``model.backbone.*``
    weights and no project metadata."""
    p = Path(path)
    if p.is_dir():
        names = (CONFIG_NAME, *WEIGHT_NAMES, *INDEX_NAMES)
        return any((p / n).is_file() for n in names)
    if not p.is_file():
        return False
    if p.name in (CONFIG_NAME, *INDEX_NAMES):
        return True
    if p.name == TORCH_NAME:
        return (p.parent / CONFIG_NAME).is_file()
    if p.suffix == ".safetensors":
        return _safetensors_kind(p) == "hf"
    return False


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from e
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    obj = load_torch_file(path)  # weights_only; pickled code refused with one line
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    return _load_safetensors(path) if path.suffix == ".safetensors" else _load_torch(path)


def _load_index(path: Path) -> dict[str, torch.Tensor]:
    index = _read_json(path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no weight_map")
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / str(shard)
        if not shard_path.is_file():
            raise CheckpointError(f"{path} names shard {shard}, which is missing")
        sd.update(_load_weight_file(shard_path))
    return sd


def _weights_path(path: Path) -> Path:
    if path.is_file() and path.name != CONFIG_NAME:
        return path
    folder = _hf_dir(path)
    for name in (SAFETENSORS_NAME, INDEX_NAMES[0], TORCH_NAME, INDEX_NAMES[1]):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has no weights: expected {SAFETENSORS_NAME} or {TORCH_NAME} "
        f"(or a shard index) beside {CONFIG_NAME}"
    )


def load_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The raw transformers-layout state dict of a checkpoint directory or weight file."""
    weights = _weights_path(Path(path))
    if weights.name in INDEX_NAMES:
        sd = _load_index(weights)
    else:
        sd = _load_weight_file(weights)
    if not any(k.startswith("model.backbone.") for k in sd):
        raise CheckpointError(
            f"{weights} does not hold transformers D-FINE weights (no model.backbone.* keys)"
        )
    return sd


def _input_size(folder: Path, cfg: ModelConfig) -> tuple[int, int]:
    """Network input (H, W): the image processor's resize size, else the config's eval size."""
    pre = folder / PREPROCESSOR_NAME
    if pre.is_file():
        proc = _read_json(pre, "image processor config")
        if proc.get("do_normalize"):
            warnings.warn(
                f"{pre}: the image processor normalizes with mean/std; this project feeds "
                "images in [0, 1] like the reference",
                stacklevel=3,
            )
        size = proc.get("size") or {}
        if isinstance(size, dict) and size.get("height") and size.get("width"):
            return (int(size["height"]), int(size["width"]))
    return cfg.eval_size


def read_hf_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a transformers-layout D-FINE checkpoint into ``(state_dict, metadata)``.

    The state dict has the reference layout (see :func:`hf_to_reference_state_dict`); the
    metadata holds ``format``, ``size``, ``num_classes``, ``class_names`` (from ``id2label``;
    None for transformers' ``LABEL_i`` placeholders) and ``input_size``. The architecture the
    config describes must equal the official preset that :func:`dfine.checkpoint.infer_config`
    derives from the weights; otherwise a :class:`CheckpointError` names the differing fields.
    """
    path = Path(path)
    folder = _hf_dir(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_NAME}; a transformers checkpoint needs it beside "
            f"{path.name if path.is_file() else 'the weights'}"
        )
    config_dict = _read_json(config_path, "model config")
    cfg = hf_config_to_model_config(config_dict)
    if config_dict.get("eval_size") is not None:
        warnings.warn(
            f"{config_path} sets eval_size: transformers then skips the AIFI position embedding "
            "in eval mode; this project, like the reference, always adds it",
            stacklevel=2,
        )
    cfg = dataclasses.replace(cfg, eval_size=_input_size(folder, cfg))
    sd = hf_to_reference_state_dict(load_hf_weights(path), cfg)
    inferred = infer_config(sd).with_family(cfg.family)
    diffs = config_differences(cfg, inferred)
    if diffs:
        raise CheckpointError(
            f"{config_path} describes a D-FINE-{cfg.size.upper()} variant that differs from the "
            f"official preset this project builds for these weights: " + "; ".join(diffs)
        )
    meta = {
        "format": "transformers",
        "size": cfg.size,
        "num_classes": cfg.num_classes,
        "class_names": list(names) if (names := hf_class_names(config_dict)) else None,
        "input_size": list(cfg.eval_size),
        "family": cfg.family,
    }
    return sd, meta


def save_hf_checkpoint(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` (a :class:`dfine.DFINE`) as a transformers checkpoint directory
    (``config.json`` + ``model.safetensors``), loadable by ``DFineForObjectDetection``.

    Each file is written atomically (:func:`dfine.files.atomic_write`), the weights first, so an
    interrupted save leaves the previous files or complete new ones, never a partial file."""
    if getattr(model, "deployed", False):
        raise InvalidArgumentError(
            "a deployed (fused) model has no reference layout; save before deploy()"
        )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = model_config_to_hf_config(model.config, model.class_names)
    sd = reference_to_hf_state_dict(model.state_dict())
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    atomic_write(
        folder / SAFETENSORS_NAME,
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}),
    )
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder
