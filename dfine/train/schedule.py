"""Learning-rate schedules: the reference's linear warm-up around MultiStepLR, and flat-cosine.

Reference semantics (``src/optim/warmup.py``, ``src/solver/det_engine.py``, ``det_solver.py``):

- ``LinearWarmup(lr_scheduler, warmup_duration)`` remembers every group's lr at construction as
  its end value and immediately takes one step, so iteration ``i`` (0-based) of the warm-up trains
  with ``lr = end * min(1, (i + 1) / warmup_duration)``. It steps after every optimizer step
  (and after the EMA update); from iteration ``warmup_duration`` on it leaves the lr alone.
- ``MultiStepLR`` steps once at the end of every epoch, **but only once the warm-up has
  finished**; so its epoch counter lags when the warm-up spans epochs. Its milestones multiply
  the current lr by ``gamma``. All reference configs use milestones ``[500]`` epochs, i.e. a
  constant lr after warm-up.

The reference at this commit has no flat-cosine schedule. :class:`FlatCosine` is defined here:
the same linear warm-up, then the base lr until ``flat_iters``, then a half cosine from the base
lr down to ``min_lr_ratio * base`` at ``total_iters``, constant afterwards; updated per
iteration.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import MultiStepLR

from dfine.errors import InvalidArgumentError
from dfine.train.recipes import Recipe


class LinearWarmup:
    """Per-iteration linear warm-up of every parameter group's lr (the reference's).

    ``step()`` is called once at construction (so the first iteration uses ``1/duration`` of
    the end value) and after every optimizer step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_duration: int) -> None:
        self.optimizer = optimizer
        self.warmup_duration = int(warmup_duration)
        self.warmup_end_values = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = -1
        self.step()

    def factor(self, step: int) -> float:
        """The lr multiplier at iteration ``step`` (only used while ``step < duration``)."""
        return min(1.0, (step + 1) / self.warmup_duration)

    def step(self) -> None:
        self.last_step += 1
        if self.finished():
            return
        f = self.factor(self.last_step)
        for group, end in zip(self.optimizer.param_groups, self.warmup_end_values):
            group["lr"] = f * end

    def finished(self) -> bool:
        return self.last_step >= self.warmup_duration

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "warmup_duration": self.warmup_duration,
            "warmup_end_values": list(self.warmup_end_values),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.warmup_duration = int(state["warmup_duration"])
        self.warmup_end_values = [float(v) for v in state["warmup_end_values"]]


class WarmupMultiStep:
    """:class:`LinearWarmup` (per iteration) + ``MultiStepLR`` (per epoch, after warm-up)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_iters: int,
        milestones: tuple[int, ...] = (500,),
        gamma: float = 0.1,
    ) -> None:
        self.optimizer = optimizer
        self.multistep = MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
        self.warmup = LinearWarmup(optimizer, warmup_iters)

    def step_iter(self) -> None:
        self.warmup.step()

    def step_epoch(self) -> None:
        if self.warmup.finished():
            self.multistep.step()

    def state_dict(self) -> dict[str, Any]:
        return {"multistep": self.multistep.state_dict(), "warmup": self.warmup.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multistep.load_state_dict(state["multistep"])
        self.warmup.load_state_dict(state["warmup"])


class FlatCosine:
    """Linear warm-up, flat, then cosine decay to ``min_lr_ratio``; set every iteration."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        warmup_iters: int = 0,
        flat_iters: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        if total_iters <= 0:
            raise InvalidArgumentError(f"total_iters must be positive, got {total_iters}")
        self.optimizer = optimizer
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.flat_iters = max(int(flat_iters), self.warmup_iters)
        self.min_lr_ratio = float(min_lr_ratio)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = -1
        self.step_iter()

    def factor(self, step: int) -> float:
        """The lr multiplier at iteration ``step``."""
        if step < self.warmup_iters:
            return (step + 1) / self.warmup_iters
        if step < self.flat_iters:
            return 1.0
        if step >= self.total_iters:
            return self.min_lr_ratio
        span = max(self.total_iters - self.flat_iters, 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step - self.flat_iters) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def step_iter(self) -> None:
        self.last_step += 1
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = f * base

    def step_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "total_iters": self.total_iters,
            "warmup_iters": self.warmup_iters,
            "flat_iters": self.flat_iters,
            "min_lr_ratio": self.min_lr_ratio,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.total_iters = int(state["total_iters"])
        self.warmup_iters = int(state["warmup_iters"])
        self.flat_iters = int(state["flat_iters"])
        self.min_lr_ratio = float(state["min_lr_ratio"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]


def build_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, iters_per_epoch: int
) -> WarmupMultiStep | FlatCosine:
    """The recipe's schedule (``recipe.scheduler``: ``multistep`` or ``flatcosine``)."""
    if recipe.scheduler == "multistep":
        return WarmupMultiStep(
            optimizer, recipe.warmup_iters, recipe.lr_milestones, recipe.lr_gamma
        )
    if recipe.scheduler == "flatcosine":
        return FlatCosine(
            optimizer,
            total_iters=recipe.epochs * iters_per_epoch,
            warmup_iters=recipe.warmup_iters,
            flat_iters=recipe.flat_epochs * iters_per_epoch,
            min_lr_ratio=recipe.min_lr_ratio,
        )
    raise InvalidArgumentError(
        f"unknown scheduler {recipe.scheduler!r}; choose 'multistep' or 'flatcosine'"
    )
