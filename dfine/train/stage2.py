"""The reference's stage-2 policy: best-checkpoint bookkeeping and the EMA search.

Before ``stop_epoch`` (stage 1) every new best AP is also kept as ``best_stg1.pth``. From
``stop_epoch`` on (stage 2, no strong augmentation) each evaluation either beats the round's
best, or ends the round: the EMA decay is lowered by 1e-4 and training goes back to the best
stage-1 state (``det_solver.fit`` of the reference). Pure bookkeeping: the trainer carries out
the :class:`Decision`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

EMA_DECAY_STEP = 1e-4


@dataclass
class BestTracker:
    """Best AP overall (``top1`` at ``epoch``, 0-based; -1: none yet) and the stage-2 round
    best (``round_best``)."""

    top1: float = -1.0
    epoch: int = -1
    round_best: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BestTracker:
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    """What to do after one evaluation."""

    new_best: bool = False  # export best.safetensors
    save_stage1: bool = False  # keep this state as best_stg1.pth
    restart_from_stage1: bool = False  # reload best_stg1.pth and restart the EMA ...
    ema_decay: float | None = None  # ... with this decay


def after_evaluation(
    best: BestTracker,
    epoch: int,
    metrics: dict[str, float],
    stop_epoch: int,
    ema_decay: float | None,
    ema_search: bool,
) -> Decision:
    """Update ``best`` with the evaluation of (0-based) ``epoch`` and say what to do."""
    ap = metrics["AP"]
    new_best = ap > best.top1
    if new_best:
        best.top1, best.epoch, best.metrics = ap, epoch, dict(metrics)
    if epoch < stop_epoch:
        best.round_best = ap if best.round_best is None else max(ap, best.round_best)
        return Decision(new_best=new_best, save_stage1=new_best)
    if best.round_best is None or ap > best.round_best:
        best.round_best = ap
        return Decision(new_best=new_best)
    best.round_best = None  # no gain this round
    if ema_decay is None or not ema_search:
        return Decision(new_best=new_best)
    return Decision(
        new_best=new_best, restart_from_stage1=True, ema_decay=ema_decay - EMA_DECAY_STEP
    )
