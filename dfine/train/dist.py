"""Small torch.distributed helpers (process group set up by ``torchrun``'s environment)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as td


def is_dist() -> bool:
    """True inside an initialised process group."""
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_dist() else 0


def world_size() -> int:
    return td.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the only process that writes files and logs."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """``torchrun`` (or ``torch.distributed.launch``) set the env:// variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group described by the environment, if any, and return the device.

    gloo on CPU, nccl on CUDA (one GPU per process: ``cuda:LOCAL_RANK``). Without torchrun's
    variables this does nothing and returns ``device`` (default: CUDA when available).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if not launched_by_torchrun() or is_dist():
        return _local_device(device)
    device = _local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group(backend=backend, init_method="env://")
    return device


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if is_dist():
        td.destroy_process_group()


def barrier() -> None:
    if is_dist():
        td.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors over ranks (detached); unchanged without a process group."""
    if not is_dist() or not values:
        return {k: v.detach() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    td.all_reduce(stacked)
    stacked /= world_size()
    return dict(zip(keys, stacked))


def broadcast_buffers(*modules: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer (BatchNorm statistics, ...) of ``modules`` from rank ``src``."""
    if not is_dist():
        return
    for module in modules:
        for buf in module.buffers():
            td.broadcast(buf.data, src=src)
