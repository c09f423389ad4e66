"""The training loop: the reference's ``DetSolver.fit`` / ``train_one_epoch``, made resumable.

One step (``det_engine.train_one_epoch``)::

    AMP:    autocast forward → criterion in fp32 → scaler.scale(loss).backward()
            → scaler.unscale_(optimizer) → clip_grad_norm_(0.1) → scaler.step → scaler.update
            → optimizer.zero_grad()
    no AMP: forward → criterion → optimizer.zero_grad() → backward → clip_grad_norm_(0.1)
            → optimizer.step()
    then:   EMA update → warm-up scheduler step

Per epoch (``det_solver.fit``): ``set_epoch`` on sampler, dataset transforms and collate; at
``stop_epoch`` the best stage-1 state is reloaded and the EMA restarted with
``ema_restart_decay``; after the epoch the MultiStepLR steps (once warm-up is over), the EMA
model is evaluated, and from ``stop_epoch`` on an evaluation that does not beat the round's best
lowers the EMA decay by 1e-4 and reloads the best stage-1 state (the reference's EMA search).

Differences from the reference, all on purpose: a loss term the criterion zeroes because it was
NaN/inf (as the reference does, silently) is reported: a log line per step, a count in the
epoch's metrics, and with ``stop_on_nan`` training stops *before* that update; a non-finite
gradient norm always stops before the update; the training checkpoint is written at the end of
every epoch (after evaluation, atomically, with RNG states) rather than only before
``stop_epoch``; the EMA decay set at restart is really used (see :mod:`dfine.train.ema`).

The loop lives here; what it writes is in :mod:`dfine.train.metrics` (log lines, records,
TensorBoard) and :mod:`dfine.train.checkpoints` (state and weight files); the stage-2 EMA policy
is :mod:`dfine.train.stage2`. Epochs are 0-based in code and in ``last_epoch`` of a training
state (as the reference), 1-based in everything people read (messages, records, file names).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from dfine.errors import DFineError, InvalidArgumentError
from dfine.loss import build_criterion
from dfine.train import dist
from dfine.train.checkpoints import RunFiles, model_info
from dfine.train.devices import amp_dtype, autocast, pick_device
from dfine.train.ema import ModelEMA
from dfine.train.evaluate import evaluate
from dfine.train.metrics import MetricsSink
from dfine.train.optim import build_optimizer, format_param_groups, unwrap
from dfine.train.recipes import Recipe
from dfine.train.schedule import build_schedule
from dfine.train.stage2 import BestTracker, after_evaluation
from dfine.train.state import (
    load_train_state,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from dfine.train.tune import TuneReport, load_pretrained

CHECKPOINT_FORMAT = "dfine-train-state"
CHECKPOINT_VERSION = 1


class NonFiniteLossError(DFineError, RuntimeError):
    """A loss term (or the gradient norm) became NaN or infinite; training stopped (the CLI's
    exit status 3)."""

    exit_code = 3


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during training; the message says where to resume from."""


@dataclass
class TrainOptions:
    """Run-time options that are not part of a recipe.

    ``amp``: ``auto`` (fp16 with a GradScaler on CUDA when the recipe enables AMP, off on CPU),
    ``off``, ``fp16`` (CUDA only) or ``bf16`` (autocast, no scaler; CPU or a bf16 GPU).
    ``eval_every``: evaluate every N epochs (None: the recipe's; 0: never), plus the last epoch.
    ``max_steps_per_epoch``: cap the steps of an epoch (smoke tests, quick runs).
    ``channels_last``: keep weights and images channels-last (oneDNN's faster convolutions,
    about 10% per step for N on a 2-core CPU); None: on for single-process CPU training.
    ``save_every``: also keep the full state every N epochs as ``checkpointNNNN.pth`` (None:
    only ``last.pth`` and the best weights).
    ``stop_on_nan``: stop (before the update) at the first step where the criterion had to zero
    a NaN/inf loss term; otherwise such steps are reported and counted, and training goes on
    as the reference's does.
    """

    out_dir: str | Path = "runs/train"
    device: str | None = None
    amp: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    log_every: int = 10
    eval_every: int | None = None
    max_steps_per_epoch: int | None = None
    sync_bn: bool | None = None
    channels_last: bool | None = None
    find_unused_parameters: bool = False
    save_every: int | None = None
    stop_on_nan: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` with ``recipe`` on ``train_loader``; evaluates on ``val_loader``.

    Loaders yield ``(images [B,3,H,W] in [0,1], targets)``; ``set_epoch`` is called on the
    loader (or its sampler, dataset and collate function) each epoch. The trainer writes, on
    rank 0 only, into ``options.out_dir`` the files of
    :data:`dfine.train.names.OUTPUT_FILES`.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        criterion: nn.Module | None = None,
        options: TrainOptions | None = None,
    ) -> None:
        self.recipe = recipe
        self.options = options or TrainOptions()
        self.out_dir = Path(self.options.out_dir)
        self.device = pick_device(self.options.device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.amp_dtype = amp_dtype(self.options.amp, self.recipe.amp, self.device)
        self.channels_last = self.options.channels_last
        if self.channels_last is None:
            self.channels_last = self.device.type == "cpu" and not dist.is_dist()
        self.model = self._wrap(model.to(self.device))
        self.criterion = (criterion or _default_criterion(unwrap(self.model), recipe)).to(
            self.device
        )
        self.optimizer = build_optimizer(unwrap(self.model), recipe)
        self.steps_per_epoch = self._steps_per_epoch()
        self.schedule = build_schedule(self.optimizer, recipe, self.steps_per_epoch)
        self.ema = (
            ModelEMA(self.model, recipe.ema_decay, recipe.ema_warmups) if recipe.ema else None
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.start_epoch = 0
        self.last_epoch = -1
        self.global_step = 0
        self.best = BestTracker()
        self.metrics = MetricsSink(self.out_dir, self.options.tensorboard)
        self.files = RunFiles(self.out_dir)
        self.nonfinite_steps = 0  # steps of the current epoch with a zeroed non-finite term
        self._zeroed = ""  # this step's zeroed terms, as text
        self._eta_start: tuple[float, int] | None = None
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ setup helpers
    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not dist.is_dist():
            return model
        sync_bn = self.recipe.sync_bn if self.options.sync_bn is None else self.options.sync_bn
        if sync_bn and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif sync_bn and self.options.sync_bn:
            self.log("SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.options.find_unused_parameters
        )

    def _steps_per_epoch(self) -> int:
        try:
            n = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError as e:
            raise InvalidArgumentError("the training loader must have a length") from e
        if self.options.max_steps_per_epoch:
            n = min(n, self.options.max_steps_per_epoch)
        if n <= 0:
            raise InvalidArgumentError(
                "the training loader is empty (fewer images than one batch?)"
            )
        return n

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and exported: the EMA model, else the bare model."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    # ------------------------------------------------------------------ logging
    def log(self, message: str) -> None:
        """Print (rank 0) and append to ``train.log``."""
        self.metrics.log(message)

    # ------------------------------------------------------------------ one step
    def _to_device(self, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, list]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        moved = [
            {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets
        ]
        return images, moved

    def train_step(
        self, images: torch.Tensor, targets: list[dict], epoch: int, step: int
    ) -> dict[str, float]:
        """One optimisation step; returns the rank-averaged loss terms, ``loss``, ``grad_norm``
        and ``lr``. Raises :class:`NonFiniteLossError` before updating on NaN/inf."""
        images, targets = self._to_device(images, targets)
        global_step = epoch * self.steps_per_epoch + step
        metas = {
            "epoch": epoch,
            "step": step,
            "global_step": global_step,
            "epoch_step": self.steps_per_epoch,
        }
        with autocast(self.device, self.amp_dtype):
            outputs = self.model(images, targets=targets)
        with torch.autocast(device_type=self.device.type, enabled=False):
            loss_dict = self.criterion(outputs, targets, **metas)
        zeroed = self._zeroed_terms(epoch, step, global_step)
        values = _to_floats(dist.reduce_mean(loss_dict))
        self._check_finite(values, epoch, step, global_step)
        loss = sum(loss_dict.values())
        grad_norm = self._backward_and_step(loss, epoch, step, global_step)
        if zeroed:
            self._report_zeroed(epoch, step, global_step)
        if self.ema is not None:
            self.ema.update(self.model)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the lr this step used
        self.schedule.step_iter()
        record = dict(values)
        record["loss"] = math.fsum(values.values())
        record["grad_norm"] = grad_norm
        record["lr"] = lr
        record["nonfinite"] = float(bool(zeroed))
        return record

    def _zeroed_terms(self, epoch: int, step: int, gstep: int) -> str:
        """The loss terms the criterion zeroed this step because they were NaN/inf (any rank),
        as text ("" for none): counted, and with ``stop_on_nan`` a :class:`NonFiniteLossError`
        before the update; the step's log line comes once its gradient is known to be finite
        (a zeroed term usually leaves NaN in the gradient, which stops training anyway)."""
        names = list(getattr(self.criterion, "last_nonfinite", []) or [])
        flag = dist.reduce_mean({"n": torch.tensor(float(bool(names)), device=self.device)})
        if float(flag["n"]) == 0.0:
            self._zeroed = ""
            return ""
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        self._zeroed = (shown or "on another process") + " (zeroed by the criterion)"
        if self.options.stop_on_nan:
            self.optimizer.zero_grad()
            raise NonFiniteLossError(
                self._nonfinite_message([self._zeroed], epoch, step, gstep, {})
            )
        return self._zeroed

    def _report_zeroed(self, epoch: int, step: int, gstep: int) -> None:
        self.nonfinite_steps += 1
        self.log(
            f"epoch {epoch + 1}, step {step + 1} (global step {gstep + 1}): non-finite loss "
            f"term(s) zeroed, as the reference does: {self._zeroed}; --stop-on-nan stops instead"
        )

    def _backward_and_step(self, loss: torch.Tensor, epoch: int, step: int, gstep: int) -> float:
        clip = self.recipe.clip_max_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            norm = float("nan")
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            self.scaler.step(self.optimizer)  # skipped by the scaler on inf/nan gradients
            self.scaler.update()
            self.optimizer.zero_grad()
            return norm
        self.optimizer.zero_grad()
        loss.backward()
        norm = float("nan")
        if clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if not math.isfinite(norm):
                self.optimizer.zero_grad()
                what = ["gradient norm"] + ([f"from {self._zeroed}"] if self._zeroed else [])
                raise NonFiniteLossError(
                    self._nonfinite_message([" ".join(what)], epoch, step, gstep, {})
                )
        self.optimizer.step()
        return norm

    def _check_finite(self, values: dict[str, float], epoch: int, step: int, gstep: int) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(self._nonfinite_message(bad, epoch, step, gstep, values))

    def _nonfinite_message(
        self, bad: list[str], epoch: int, step: int, gstep: int, values: dict[str, float]
    ) -> str:
        shown = ", ".join(f"{k}={values[k]}" if k in values else k for k in bad)
        amp = {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype]
        return (
            f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {gstep + 1}): "
            f"{shown}. Training stopped before this update, so the weights are not corrupted; "
            f"{self._resume_hint()}. "
            f"Try a lower learning rate (recipe lr {self.recipe.lr:g}, --lr-scale), "
            f"{'disabling AMP (--amp off), ' if amp != 'off' else ''}"
            f"a longer warm-up, or check the data for degenerate boxes."
        )

    # ------------------------------------------------------------------ one epoch
    def _set_epoch(self, epoch: int) -> None:
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
            return
        seen: set[int] = set()
        for part in (
            getattr(loader, "sampler", None),
            getattr(loader, "dataset", None),
            getattr(loader, "collate_fn", None),
        ):
            if part is not None and id(part) not in seen and hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
                seen.add(id(part))

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; returns the epoch means of the logged values."""
        self.model.train()
        self.criterion.train()
        n = self.steps_per_epoch
        sums: dict[str, float] = {}
        self.nonfinite_steps = 0
        bar = tqdm(
            total=n,
            desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
            unit="step",
            disable=not (self.options.progress and dist.is_main()),
            dynamic_ncols=True,
        )
        with bar:
            for step, (images, targets) in enumerate(self.train_loader):
                if step >= n:
                    break
                record = self.train_step(images, targets, epoch, step)
                self.global_step = epoch * n + step + 1
                for k, v in record.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", eta=self._eta()
                )
                self._log_step(record)
        means = {k: v / n for k, v in sums.items() if k != "nonfinite"}
        means["nonfinite_steps"] = self.nonfinite_steps
        return means

    def _eta(self) -> str:
        """Time left for the whole run (from the steps done in this process)."""
        if self._eta_start is None:
            self._eta_start = (time.perf_counter(), self.global_step)
            return "?"
        t0, s0 = self._eta_start
        done = self.global_step - s0
        if done <= 0:
            return "?"
        left = self.recipe.epochs * self.steps_per_epoch - self.global_step
        seconds = (time.perf_counter() - t0) / done * left
        return str(_dt.timedelta(seconds=int(seconds)))

    def _log_step(self, record: dict[str, float]) -> None:
        step = self.global_step - 1
        if step % max(self.options.log_every, 1):
            return
        self.metrics.scalar("Loss/total", record["loss"], step)
        for j, group in enumerate(self.optimizer.param_groups):
            self.metrics.scalar(f"Lr/pg_{j}", group["lr"], step)
        for k, v in record.items():
            if k.startswith("loss_"):
                self.metrics.scalar(f"Loss/{k}", v, step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """COCO metrics of :attr:`eval_model` on the validation loader (every rank)."""
        if self.val_loader is None:
            raise InvalidArgumentError("no validation loader was given")
        return evaluate(
            self.eval_model, self.val_loader, device=self.device, progress=self.options.progress
        )

    def _should_evaluate(self, epoch: int) -> bool:
        every = (
            self.recipe.eval_every if self.options.eval_every is None else self.options.eval_every
        )
        if self.val_loader is None or every <= 0:
            return False
        return (epoch + 1) % every == 0 or epoch + 1 == self.recipe.epochs

    def _track_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """Best-checkpoint bookkeeping and the stage-2 EMA search (:mod:`dfine.train.stage2`)."""
        decision = after_evaluation(
            self.best,
            epoch,
            metrics,
            self.recipe.stop_epoch,
            self.ema.decay if self.ema is not None else None,
            self.recipe.ema_search,
        )
        if decision.new_best:
            self._save_best(epoch, metrics)
        if decision.save_stage1:
            self.files.save_state(self.state_dict(), self.files.best_stage1)
        if decision.restart_from_stage1 and self.ema is not None:
            self._reload_stage1()
            self.ema.restart(decision.ema_decay)
            self.log(
                f"epoch {epoch + 1}: no AP gain; EMA restarted from {self.files.best_stage1.name} "
                f"with decay {decision.ema_decay}"
            )

    def _reload_stage1(self) -> bool:
        """Load model, EMA, optimizer, schedule and scaler of ``best_stg1.pth``, if present."""
        dist.barrier()
        path = self.files.best_stage1
        if not path.exists():
            return False
        state = load_train_state(path)
        self._load_weights_and_optim(state)
        return True

    def _stop_epoch_restart(self, epoch: int) -> None:
        """The reference at ``stop_epoch``: reload the best stage-1 state, restart the EMA."""
        reloaded = self._reload_stage1()
        done = ["best stage-1 state reloaded"] if reloaded else []
        if self.ema is not None:
            self.ema.restart(self.recipe.ema_restart_decay)
            done.append(f"EMA restarted with decay {self.ema.decay}")
        self.log(f"epoch {epoch + 1}: stop epoch; " + ("; ".join(done) or "nothing to restart"))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (RNG states of every rank)."""
        rngs = dist.all_gather_object(rng_state())
        bare = unwrap(self.model)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "date": _dt.datetime.now().isoformat(),
            "model": bare.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "last_epoch": self.last_epoch,
            "global_step": self.global_step,
            "best": self.best.to_dict(),
            "rng": rngs,
            "world_size": dist.world_size(),
            "recipe": self.recipe.to_dict(),
            "model_config": model_info(bare),
        }

    def save_checkpoint(self) -> None:
        """``last.pth`` and, every ``save_every`` epochs, ``checkpointNNNN.pth``."""
        state = self.state_dict()  # collective: every rank takes part
        paths = [self.files.last]
        every = self.options.save_every
        if every and (self.last_epoch + 1) % every == 0:
            paths.append(self.files.periodic(self.last_epoch + 1))
        self.files.save_state(state, *paths)

    def _load_weights_and_optim(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # as the reference: EMA starts from the model weights
            self.ema.module.load_state_dict(unwrap(self.model).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def resume(self, path: str | Path) -> None:
        """Continue from a training checkpoint: weights, EMA, optimizer, schedule, scaler,
        epoch, step, best metrics and this rank's RNG states."""
        state = load_train_state(path)
        self._check_compatible(state, path)
        self._load_weights_and_optim(state)
        self.last_epoch = int(state["last_epoch"])
        self.start_epoch = self.last_epoch + 1
        self.global_step = int(state["global_step"])
        self.best = BestTracker.from_dict(state.get("best") or {})
        rngs = state.get("rng") or []
        if len(rngs) == dist.world_size():
            set_rng_state(rngs[dist.rank()])
        else:
            self.log(
                f"note: {path} was written by {len(rngs)} process(es), this run has "
                f"{dist.world_size()}; random streams are not restored"
            )
        self.metrics.truncate(self.last_epoch + 1)
        self.log(
            f"resumed from {path}: {self.last_epoch + 1} epoch(s) of {self.recipe.epochs} done, "
            f"{self.global_step} steps"
        )

    def _check_compatible(self, state: dict[str, Any], path: str | Path) -> None:
        mine, theirs = model_info(unwrap(self.model)), state.get("model_config") or {}
        for key in ("size", "num_classes", "ablation", "family"):
            if key in theirs and theirs[key] != mine[key]:
                raise InvalidArgumentError(
                    f"{path} holds a model with {key}={theirs[key]}, this run has {mine[key]}"
                )
        old = state.get("recipe") or {}
        changed = [k for k, v in self.recipe.to_dict().items() if k in old and old[k] != v]
        if changed:
            self.log(f"note: resuming with recipe values changed: {', '.join(changed)}")

    def tune_from(self, path: str | Path) -> TuneReport:
        """Load pretrained weights (any class count), then restart the EMA from them."""
        report = load_pretrained(self.model, path)
        if self.ema is not None:
            self.ema.module.load_state_dict(unwrap(self.model).state_dict())
        self.log(report.summary())
        return report

    def _export(self, path: Path, epoch: int, metrics: dict[str, float] | None) -> None:
        meta = {
            "recipe": self.recipe.to_dict(),
            "epoch": epoch + 1,
            "metrics": metrics or {},
            **self.options.metadata,
        }
        self.files.export(self.eval_model, path, meta)

    def _save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        self._export(self.files.best, epoch, metrics)
        self.log(f"epoch {epoch + 1}: new best AP {metrics['AP']:.4f} -> {self.files.best.name}")

    def _resume_hint(self) -> str:
        """Where the last complete training state is, as one clause."""
        if self.files.last.exists():
            return (
                f"the last complete checkpoint is {self.files.last} ({self.last_epoch + 1} "
                f"epoch(s) done); continue with --resume"
            )
        return "no epoch finished yet, so there is no checkpoint to resume from"

    # ------------------------------------------------------------------ the loop
    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train from :attr:`start_epoch` up to ``until_epoch`` (default ``recipe.epochs``;
        the schedule always follows the recipe) and return a summary: ``epochs`` (of the whole
        run), ``steps_this_run`` and ``seconds`` (this invocation), ``global_step``, ``best``
        (epochs 0-based), ``last_metrics``, ``nonfinite_steps`` (this invocation). Every rank
        returns the ``weights_digest`` of every rank (identical under DDP).

        SIGINT/SIGTERM stop with :class:`TrainingInterrupted`, whose one-line message says
        where to resume from."""
        end = self.recipe.epochs if until_epoch is None else min(until_epoch, self.recipe.epochs)
        if dist.is_main():
            remove_stale_temporaries(self.out_dir)
        self.metrics.open(self.global_step)
        self.log(format_param_groups(self.optimizer))
        start, first_step = time.perf_counter(), self.global_step
        metrics: dict[str, float] | None = None
        nonfinite = 0
        try:
            with _interrupts_raise():
                for epoch in range(self.start_epoch, end):
                    metrics = self._run_epoch(epoch)
                    nonfinite += self.nonfinite_steps
        except KeyboardInterrupt as e:
            signame = e.args[0] if isinstance(e, TrainingInterrupted) and e.args else "SIGINT"
            message = f"{signame}: training stopped; {self._resume_hint()}"
            self.log(message)
            raise TrainingInterrupted(message) from None
        finally:
            self.metrics.close()
        if end == self.recipe.epochs:
            self._export(self.files.final, self.last_epoch, metrics)
        return {
            "epochs": self.last_epoch + 1,
            "global_step": self.global_step,
            "steps_this_run": self.global_step - first_step,
            "best": self.best.to_dict(),
            "last_metrics": metrics,
            "nonfinite_steps": nonfinite,
            "seconds": time.perf_counter() - start,
            "weights_digests": dist.all_gather_object(self.weights_digest()),
        }

    def weights_digest(self) -> str:
        """SHA-256 of the model's and the EMA's weights (to compare ranks or runs)."""
        h = hashlib.sha256()
        states = [unwrap(self.model).state_dict()]
        if self.ema is not None:
            states.append(self.ema.module.state_dict())
        for sd in states:
            for k, v in sd.items():
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _run_epoch(self, epoch: int) -> dict[str, float] | None:
        self._set_epoch(epoch)
        if epoch == self.recipe.stop_epoch:
            self._stop_epoch_restart(epoch)
        t0 = time.perf_counter()
        train_stats = self.train_one_epoch(epoch)
        train_time = time.perf_counter() - t0
        # without SyncBatchNorm each rank's BatchNorm statistics drift apart: take rank 0's, so
        # every rank evaluates and holds the same model
        dist.broadcast_buffers(unwrap(self.model), *([self.ema.module] if self.ema else []))
        self.schedule.step_epoch()
        self.last_epoch = epoch
        metrics = None
        if self._should_evaluate(epoch):
            metrics = self.evaluate()
            self._track_best(epoch, metrics)
            for k, v in metrics.items():
                self.metrics.scalar(f"Test/{k}", v, epoch)
        record = {
            "epoch": epoch + 1,
            "global_step": self.global_step,
            "train_seconds": round(train_time, 3),
            "seconds_per_step": round(train_time / self.steps_per_epoch, 4),
            **{f"train_{k}": v for k, v in train_stats.items()},
            **({f"val_{k}": v for k, v in metrics.items()} if metrics else {}),
        }
        self.metrics.record(record)
        self.log(_epoch_line(record, self.recipe.epochs))
        self.save_checkpoint()
        return metrics


# ---------------------------------------------------------------------- module helpers
def _default_criterion(model: nn.Module, recipe: Recipe) -> nn.Module:
    """The recipe's criterion (``recipe.loss``: D-FINE's or DEIM's) for ``model``."""
    return build_criterion(model, loss=recipe.loss)


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to floats with one device synchronisation."""
    if not values:
        return {}
    names = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    return dict(zip(names, stacked.tolist()))


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record.get('train_loss', float('nan')):.4f}",
    ]
    if "val_AP" in record:
        parts.append(f"AP {record['val_AP']:.4f} AP50 {record['val_AP50']:.4f}")
    parts.append(f"{record['seconds_per_step']:.3f} s/step")
    if record.get("train_nonfinite_steps"):
        parts.append(f"{record['train_nonfinite_steps']} step(s) with non-finite loss terms")
    return " | ".join(parts)


@contextlib.contextmanager
def _interrupts_raise():
    """SIGTERM (what torchrun, schedulers and ``kill`` send) raises :class:`TrainingInterrupted`
    like SIGINT raises ``KeyboardInterrupt`` (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise TrainingInterrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
