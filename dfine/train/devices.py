"""Where a run trains and in which precision: the device and the autocast dtype."""

from __future__ import annotations

import contextlib

import torch

from dfine.errors import InvalidArgumentError
from dfine.train import dist

AMP_MODES = ("auto", "off", "fp16", "bf16")


def pick_device(device: str | None) -> torch.device:
    """``device``, or CUDA when available; under DDP a bare ``cuda`` is this rank's GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and dist.is_dist():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def amp_dtype(mode: str, recipe_amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp mode`` (None: full fp32): ``auto`` is fp16 on CUDA when
    the recipe uses AMP, else off; ``fp16`` needs CUDA; ``bf16`` a CPU or a bf16 GPU."""
    if mode not in AMP_MODES:
        raise InvalidArgumentError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "auto":
        return torch.float16 if (recipe_amp and device.type == "cuda") else None
    if mode == "fp16":
        if device.type != "cuda":
            raise InvalidArgumentError("fp16 AMP needs a CUDA device; use --amp bf16 or off on CPU")
        return torch.float16
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InvalidArgumentError("this GPU has no bfloat16 support; use --amp fp16")
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
