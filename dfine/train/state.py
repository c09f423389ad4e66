"""Training-state files: atomic writes, RNG snapshots, seeding and deterministic mode.

A training checkpoint is a ``torch.save`` dictionary of tensors and plain Python values only
(loadable with ``torch.load(weights_only=True)``), written to a temporary file in the same folder,
flushed and fsync'ed, then renamed over the target with ``os.replace``: a reader sees either the
previous complete file or the new complete file, never a partial one, even if the process is
killed mid-write.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine.errors import InputFileError, InvalidArgumentError
from dfine.files import TMP_SUFFIX, atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


_TEMPORARY = re.compile(r".+" + re.escape(TMP_SUFFIX) + r"\.[0-9]+")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``<name>.tmp.<pid>`` files :func:`dfine.files.atomic_write` leaves when its
    process is killed mid-write; returns them. Any other file (``notes.tmp.txt``) is kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint written by :class:`dfine.train.Trainer` (``weights_only`` load)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InvalidArgumentError(f"{path} is not a readable training checkpoint: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "last_epoch" not in state:
        raise InvalidArgumentError(
            f"{path} is not a dfine training checkpoint (no 'model'/'last_epoch'); to start "
            "from weights only, use tune-from instead of resume"
        )
    return state


# ------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (CPU) and CUDA generator states, as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic kernels where PyTorch has them (warn, not fail, where it has none)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
