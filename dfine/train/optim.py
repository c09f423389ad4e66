"""AdamW with the reference's regex parameter groups.

The reference (``YAMLConfig.get_optim_params``) walks its group list in order and gives each group
the trainable parameters whose name matches the group's regex (``re.findall``, i.e. a search);
parameters matched by no group form a last group with the optimizer defaults. Frozen parameters
(``requires_grad=False``) are left out. Here a parameter matched by several patterns goes to the
first one, so every trainable parameter is in exactly one group (the reference's patterns are
disjoint, so this changes nothing for them). Empty groups are kept, so group indices match the
reference's (for N/S/M the "backbone norm" group is empty: see :mod:`dfine.train.recipes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dfine.train.recipes import ParamGroup, Recipe

DEFAULT_GROUP = "<default>"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


def build_param_groups(model: nn.Module, groups: Sequence[ParamGroup]) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``model``.

    Each group is a dict with ``params`` (tensors), ``names`` (their parameter names) and
    ``pattern``, plus ``lr`` / ``weight_decay`` where the :class:`ParamGroup` overrides them.
    A final ``<default>`` group holds the trainable parameters no pattern matched.
    """
    compiled = [re.compile(g.pattern) for g in groups]
    buckets: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(len(groups) + 1)]
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        index = next((i for i, rx in enumerate(compiled) if rx.search(name)), len(groups))
        buckets[index].append((name, param))
    result = []
    for spec, bucket in zip([*groups, None], buckets):
        if spec is None and not bucket:
            continue
        group: dict[str, Any] = {
            "params": [p for _, p in bucket],
            "names": [n for n, _ in bucket],
            "pattern": spec.pattern if spec else DEFAULT_GROUP,
        }
        if spec is not None and spec.lr is not None:
            group["lr"] = spec.lr
        if spec is not None and spec.weight_decay is not None:
            group["weight_decay"] = spec.weight_decay
        result.append(group)
    return result


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` with the recipe's lr, betas and weight decay."""
    groups = build_param_groups(model, recipe.param_groups)
    return torch.optim.AdamW(
        groups, lr=recipe.lr, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay
    )


def describe_param_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """One record per group: ``index, pattern, tensors, numel, lr, weight_decay, names``.

    ``lr`` is the group's current learning rate (during warm-up, the warmed-up value), and
    ``initial_lr`` the scheduler's base value when a scheduler has set it.
    """
    records = []
    for i, g in enumerate(optimizer.param_groups):
        records.append(
            {
                "index": i,
                "pattern": g.get("pattern", DEFAULT_GROUP),
                "tensors": len(g["params"]),
                "numel": int(sum(p.numel() for p in g["params"])),
                "lr": float(g["lr"]),
                "initial_lr": float(g.get("initial_lr", g["lr"])),
                "weight_decay": float(g["weight_decay"]),
                "names": list(g.get("names", [])),
            }
        )
    return records


def format_param_groups(optimizer: torch.optim.Optimizer) -> str:
    """A short table of :func:`describe_param_groups` for logs."""
    lines = ["group  tensors       numel        lr   w.decay  pattern"]
    for r in describe_param_groups(optimizer):
        lines.append(
            f"{r['index']:>5}  {r['tensors']:>7}  {r['numel']:>10,}  {r['initial_lr']:>8.2e}"
            f"  {r['weight_decay']:>8.2e}  {r['pattern']}"
        )
    return "\n".join(lines)
