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

:class:`DEIMFlatCosine` is DEIM's (``engine/optim/lr_scheduler.py``, ``FlatCosineLRScheduler``)
as DEIM's training loop applies it, step for step: ``f(c) = base * (c / warmup)^2`` for
``c <= warmup``, the base lr until ``flat_iters``, then a half cosine down to
``min_lr_ratio * base`` at ``total_iters - no_aug_iters``, constant afterwards. DEIM calls it with
the index of the step just taken, after that step, so step ``i >= 1`` trains with ``f(i - 1)``
(step 1 at lr 0). Step 0 trains with what the optimizer holds before: DEIM's solver still
builds the D-FINE ``LinearWarmup`` of ``configs/base/optimizer.yml`` (500 iterations), whose
constructor sets ``lr = base / 500`` — ``first_step_factor``. With ``warmup_iters == 0``
DEIM's function divides by zero; here it means no warm-up.
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


class IterSchedule:
    """A learning-rate factor set every iteration: step ``i`` trains with
    ``base_lr * factor(i)`` for each parameter group. Subclasses define :meth:`factor` and
    name their state in ``_STATE`` (what checkpoints keep and resume restores)."""

    _STATE: tuple[str, ...] = ("last_step", "base_lrs")

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int) -> None:
        if total_iters <= 0:
            raise InvalidArgumentError(f"total_iters must be positive, got {total_iters}")
        self.optimizer = optimizer
        self.total_iters = int(total_iters)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = -1

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def step_iter(self) -> None:
        self.last_step += 1
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            value = state[k]
            setattr(self, k, list(map(float, value)) if k == "base_lrs" else value)


class FlatCosine(IterSchedule):
    """Linear warm-up, flat, then cosine decay to ``min_lr_ratio``; set every iteration."""

    _STATE = ("last_step", "total_iters", "warmup_iters", "flat_iters", "min_lr_ratio", "base_lrs")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        warmup_iters: int = 0,
        flat_iters: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__(optimizer, total_iters)
        self.warmup_iters = int(warmup_iters)
        self.flat_iters = max(int(flat_iters), self.warmup_iters)
        self.min_lr_ratio = float(min_lr_ratio)
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


DEIM_FIRST_STEP_FACTOR = 1 / 500
"""The lr factor of DEIM's first step (its leftover ``LinearWarmup``, 500 iterations)."""


def deim_flat_cosine(
    step: int, total_iters: int, warmup_iters: int, flat_iters: int, no_aug_iters: int, gamma: float
) -> float:
    """DEIM's ``flat_cosine_schedule`` as a factor of the base lr (``gamma``: final / base)."""
    if warmup_iters > 0 and step <= warmup_iters:
        return (step / float(warmup_iters)) ** 2
    if step <= flat_iters:
        return 1.0
    if step >= total_iters - no_aug_iters:
        return gamma
    span = total_iters - flat_iters - no_aug_iters
    cosine = 0.5 * (1 + math.cos(math.pi * (step - flat_iters) / span))
    return gamma + (1.0 - gamma) * cosine


class DEIMFlatCosine(IterSchedule):
    """DEIM's flat-cosine schedule, step for step (see the module docstring); set every
    iteration. Step ``i`` trains with ``base * factor(i)``."""

    _STATE = (
        "last_step",
        "total_iters",
        "warmup_iters",
        "flat_iters",
        "no_aug_iters",
        "min_lr_ratio",
        "first_step_factor",
        "base_lrs",
    )

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        warmup_iters: int,
        flat_iters: int,
        no_aug_iters: int,
        min_lr_ratio: float,
        first_step_factor: float = 1.0,
    ) -> None:
        super().__init__(optimizer, total_iters)
        self.warmup_iters = int(warmup_iters)
        self.flat_iters = int(flat_iters)
        self.no_aug_iters = int(no_aug_iters)
        self.min_lr_ratio = float(min_lr_ratio)
        self.first_step_factor = float(first_step_factor)
        self.step_iter()

    def factor(self, step: int) -> float:
        """The lr multiplier of step ``step`` (0-based)."""
        if step == 0:
            return self.first_step_factor
        return deim_flat_cosine(
            step - 1,
            self.total_iters,
            self.warmup_iters,
            self.flat_iters,
            self.no_aug_iters,
            self.min_lr_ratio,
        )


def build_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, iters_per_epoch: int
) -> WarmupMultiStep | FlatCosine | DEIMFlatCosine:
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
    if recipe.scheduler == "deim_flatcosine":
        return DEIMFlatCosine(
            optimizer,
            total_iters=int(recipe.epochs * iters_per_epoch),
            warmup_iters=recipe.warmup_iters,
            flat_iters=int(recipe.flat_epochs * iters_per_epoch),
            no_aug_iters=int(recipe.no_aug_epochs * iters_per_epoch),
            min_lr_ratio=recipe.min_lr_ratio,
            # DEIM's leftover LinearWarmup (500, or 0 where the config turns warm-up off)
            first_step_factor=DEIM_FIRST_STEP_FACTOR if recipe.warmup_iters > 0 else 1.0,
        )
    raise InvalidArgumentError(
        f"unknown scheduler {recipe.scheduler!r}; choose 'multistep', 'flatcosine' or "
        "'deim_flatcosine'"
    )
