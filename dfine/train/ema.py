"""Exponential moving average of a model's weights, as the reference's ``ModelEMA``.

Update ``k`` (1-based, counted in ``updates``) uses the decay
``d_k = decay * (1 - exp(-k / warmups))`` (``d_k = decay`` when ``warmups == 0``) and, for every
floating-point entry of the state dict (parameters *and* float buffers such as BatchNorm running
statistics), ``ema = d_k * ema + (1 - d_k) * model``. Integer buffers (``num_batches_tracked``,
``reg_scale``) keep the value they had when the EMA was created or loaded.

Difference from the reference, on purpose: the reference builds its decay function as a closure
over the constructor's ``decay`` argument, so its later ``ema.decay = ema_restart_decay`` (stop
epoch) and ``ema.decay -= 0.0001`` (EMA search) change only the printed value, not the updates.
Here :meth:`ModelEMA.restart` (and assigning ``decay``) changes the decay actually used, as those
config comments intend. For the reference configs this only matters for X (restart decay 0.9998)
and for the stage-2 EMA search.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from dfine.train.optim import unwrap


class ModelEMA:
    """A frozen eval-mode copy of ``model`` whose weights follow an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: int = 1000) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmups = int(warmups)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used by update number ``updates`` (1-based)."""
        if self.warmups == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (call after each optimizer step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        source = unwrap(model).state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value *= d  # the reference's operation order (same rounding)
                value += (1.0 - d) * source[key].detach()

    def restart(self, decay: float) -> None:
        """Use ``decay`` from now on (the reference's stop-epoch EMA "refresh"); ``updates`` is
        kept, so the warm-up ramp does not start again."""
        self.decay = float(decay)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": weights, "updates": n, "decay": d, "warmups": w}`` (reference layout +
        the decay, so a restarted EMA resumes with its restarted decay)."""
        return {
            "module": self.module.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "warmups": self.warmups,
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        self.module.load_state_dict(state["module"], strict=strict)
        self.updates = int(state.get("updates", self.updates))
        self.decay = float(state.get("decay", self.decay))
        self.warmups = int(state.get("warmups", self.warmups))

    def to(self, *args: Any, **kwargs: Any) -> ModelEMA:
        self.module.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmups={self.warmups}, updates={self.updates})"
