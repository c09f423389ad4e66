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

Differences from the reference, all on purpose: a non-finite loss stops *before* the update and
names the terms (the reference steps, then exits); the training checkpoint is written at the end
of every epoch (after evaluation, atomically, with RNG states) rather than only before
``stop_epoch``; the EMA decay set at restart is really used (see :mod:`dfine.train.ema`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfine.io import atomic_write
from dfine.train import dist
from dfine.train.ema import ModelEMA
from dfine.train.optim import build_optimizer, format_param_groups, unwrap
from dfine.train.recipes import Recipe
from dfine.train.schedule import build_schedule
from dfine.train.state import (
    atomic_torch_save,
    load_train_state,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from dfine.train.tune import TuneReport, load_pretrained

CHECKPOINT_FORMAT = "dfine-train-state"
CHECKPOINT_VERSION = 1
AMP_MODES = ("auto", "off", "fp16", "bf16")


class NonFiniteLossError(RuntimeError):
    """A loss term (or the gradient norm) became NaN or infinite; training stopped."""


@dataclass
class TrainOptions:
    """Run-time options that are not part of a recipe.

    ``amp``: ``auto`` (fp16 with a GradScaler on CUDA when the recipe enables AMP, off on CPU),
    ``off``, ``fp16`` (CUDA only) or ``bf16`` (autocast, no scaler; CPU or a bf16 GPU).
    ``eval_every``: evaluate every N epochs (None: the recipe's; 0: never), plus the last epoch.
    ``max_steps_per_epoch``: cap the steps of an epoch (smoke tests, quick runs).
    ``channels_last``: keep weights and images channels-last (oneDNN's faster convolutions,
    about 10% per step for N on a 2-core CPU); None: on for single-process CPU training.
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
    checkpoint_freq: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class BestTracker:
    """Best AP overall (``top1``) and the reference's stage-2 round best (``round_best``)."""

    top1: float = -1.0
    epoch: int = -1
    round_best: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BestTracker:
        return cls(**d)


class Trainer:
    """Trains ``model`` with ``recipe`` on ``train_loader``; evaluates on ``val_loader``.

    Loaders yield ``(images [B,3,H,W] in [0,1], targets)``; ``set_epoch`` is called on the
    loader (or its sampler, dataset and collate function) each epoch. The trainer writes, on
    rank 0 only, into ``options.out_dir``: ``last.pth`` (full training state, every epoch),
    ``checkpointNNNN.pth`` (every ``checkpoint_freq`` epochs), ``best_stg1.pth`` (best state
    before ``stop_epoch``, for the EMA restart), ``best.safetensors`` (best EMA weights),
    ``final.safetensors``, ``metrics.jsonl``, ``metrics.csv``, ``train.log`` and
    ``tensorboard/``.
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
        self.device = self._pick_device(self.options.device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.amp_dtype = self._amp_dtype(self.options.amp)
        self.channels_last = self.options.channels_last
        if self.channels_last is None:
            self.channels_last = self.device.type == "cpu" and not dist.is_dist()
        self.model = self._wrap(model.to(self.device))
        self.criterion = (criterion or _default_criterion(unwrap(self.model))).to(self.device)
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
        self._writer: Any = None
        self._eta_start: tuple[float, int] | None = None
        if dist.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _pick_device(device: str | None) -> torch.device:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and dist.is_dist():
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _amp_dtype(self, mode: str) -> torch.dtype | None:
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
        if mode == "auto":
            return torch.float16 if (self.recipe.amp and self.device.type == "cuda") else None
        if mode == "fp16":
            if self.device.type != "cuda":
                raise ValueError("fp16 AMP needs a CUDA device; use --amp bf16 or off on CPU")
            return torch.float16
        if mode == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ValueError("this GPU has no bfloat16 support; use --amp fp16")
            return torch.bfloat16
        return None

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
            raise ValueError("the training loader must have a length") from e
        if self.options.max_steps_per_epoch:
            n = min(n, self.options.max_steps_per_epoch)
        if n <= 0:
            raise ValueError("the training loader is empty (fewer images than one batch?)")
        return n

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and exported: the EMA model, else the bare model."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    # ------------------------------------------------------------------ logging
    def log(self, message: str) -> None:
        """Print (rank 0) and append to ``train.log``."""
        if not dist.is_main():
            return
        from tqdm import tqdm

        tqdm.write(message)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "train.log", "a") as f:
            f.write(message + "\n")

    def _open_writer(self) -> None:
        if not (dist.is_main() and self.options.tensorboard) or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("TensorBoard logging is off: pip install tensorboard to enable it")
            self.options.tensorboard = False
            return
        purge = self.global_step if self.global_step > 0 else None
        self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def _write_record(self, record: dict[str, Any]) -> None:
        """Append the epoch record to metrics.jsonl and rewrite metrics.csv from it."""
        if not dist.is_main():
            return
        path = self.out_dir / "metrics.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        _write_csv(self.out_dir / "metrics.csv", records)

    def _truncate_records(self, last_epoch: int) -> None:
        """Drop records of epochs after ``last_epoch`` (written by a run killed later)."""
        path = self.out_dir / "metrics.jsonl"
        if not dist.is_main() or not path.exists():
            return
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in records if r.get("epoch", -1) <= last_epoch]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        _write_csv(self.out_dir / "metrics.csv", kept)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

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
        with self._autocast():
            outputs = self.model(images, targets=targets)
        with torch.autocast(device_type=self.device.type, enabled=False):
            loss_dict = self.criterion(outputs, targets, **metas)
        values = _to_floats(dist.reduce_mean(loss_dict))
        self._check_finite(values, epoch, step, global_step)
        loss = sum(loss_dict.values())
        grad_norm = self._backward_and_step(loss, epoch, step, global_step)
        if self.ema is not None:
            self.ema.update(self.model)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the lr this step used
        self.schedule.step_iter()
        record = dict(values)
        record["loss"] = math.fsum(values.values())
        record["grad_norm"] = grad_norm
        record["lr"] = lr
        return record

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
                raise NonFiniteLossError(
                    self._nonfinite_message(["gradient norm"], epoch, step, gstep, {})
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
            f"non-finite loss at epoch {epoch}, step {step} (global step {gstep}): {shown}. "
            f"Training stopped before this update, so the weights are not corrupted; the last "
            f"complete checkpoint is {self.out_dir / 'last.pth'} (resume with --resume). "
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
        from tqdm import tqdm

        self.model.train()
        self.criterion.train()
        n = self.steps_per_epoch
        sums: dict[str, float] = {}
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
        return {k: v / n for k, v in sums.items()}

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
        if self._writer is None or step % max(self.options.log_every, 1):
            return
        self._scalar("Loss/total", record["loss"], step)
        for j, group in enumerate(self.optimizer.param_groups):
            self._scalar(f"Lr/pg_{j}", group["lr"], step)
        for k, v in record.items():
            if k.startswith("loss_"):
                self._scalar(f"Loss/{k}", v, step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """COCO metrics of :attr:`eval_model` on the validation loader (every rank)."""
        from dfine.train.evaluate import evaluate

        if self.val_loader is None:
            raise ValueError("no validation loader was given")
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
        """Best-checkpoint bookkeeping and the stage-2 EMA search, as the reference."""
        ap, stop = metrics["AP"], self.recipe.stop_epoch
        if ap > self.best.top1:
            self.best.top1, self.best.epoch, self.best.metrics = ap, epoch, dict(metrics)
            self._save_best(epoch, metrics)
            if epoch < stop:
                self._save_state(self.out_dir / "best_stg1.pth")
        if epoch < stop:
            previous = self.best.round_best
            self.best.round_best = ap if previous is None else max(ap, previous)
            return
        if self.best.round_best is None or ap > self.best.round_best:
            self.best.round_best = ap
            return
        self.best.round_best = None  # no gain this round: lower the decay, back to stage-1 best
        if self.ema is not None and self.recipe.ema_search:
            decay = self.ema.decay - 1e-4
            self._reload_stage1()
            self.ema.restart(decay)
            self.log(f"epoch {epoch}: no AP gain; EMA restarted from best_stg1 with decay {decay}")

    def _reload_stage1(self) -> bool:
        """Load model, EMA, optimizer, schedule and scaler of ``best_stg1.pth``, if present."""
        dist.barrier()
        path = self.out_dir / "best_stg1.pth"
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
        self.log(f"epoch {epoch}: stop epoch; " + ("; ".join(done) or "nothing to restart"))

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
            "model_config": _model_info(bare),
        }

    def _save_state(self, path: Path) -> None:
        state = self.state_dict()  # collective: every rank takes part
        if dist.is_main():
            atomic_torch_save(state, path)

    def save_checkpoint(self) -> None:
        """``last.pth`` and, every ``checkpoint_freq`` epochs, ``checkpointNNNN.pth``."""
        state = self.state_dict()  # collective: every rank takes part
        if not dist.is_main():
            return
        atomic_torch_save(state, self.out_dir / "last.pth")
        freq = self.options.checkpoint_freq or self.recipe.checkpoint_freq
        if freq and (self.last_epoch + 1) % freq == 0:
            atomic_torch_save(state, self.out_dir / f"checkpoint{self.last_epoch:04}.pth")

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
        self._truncate_records(self.last_epoch)
        self.log(f"resumed from {path}: epoch {self.last_epoch} done, step {self.global_step}")

    def _check_compatible(self, state: dict[str, Any], path: str | Path) -> None:
        mine, theirs = _model_info(unwrap(self.model)), state.get("model_config") or {}
        for key in ("size", "num_classes", "ablation"):
            if key in theirs and theirs[key] != mine[key]:
                raise ValueError(
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
        from dfine.checkpoint import save_model

        if not dist.is_main():
            return
        meta = {
            "recipe": self.recipe.to_dict(),
            "epoch": epoch,
            "metrics": metrics or {},
            **self.options.metadata,
        }
        save_model(self.eval_model, path, metadata=meta)

    def _save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        self._export(self.out_dir / "best.safetensors", epoch, metrics)
        self.log(f"epoch {epoch}: new best AP {metrics['AP']:.4f} -> best.safetensors")

    # ------------------------------------------------------------------ the loop
    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train from :attr:`start_epoch` up to ``until_epoch`` (default ``recipe.epochs``;
        the schedule always follows the recipe) and return a summary. Every rank returns the
        ``weights_digest`` of every rank (identical under DDP)."""
        end = self.recipe.epochs if until_epoch is None else min(until_epoch, self.recipe.epochs)
        if dist.is_main():
            remove_stale_temporaries(self.out_dir)
        self._open_writer()
        self.log(format_param_groups(self.optimizer))
        start = time.perf_counter()
        metrics: dict[str, float] | None = None
        try:
            for epoch in range(self.start_epoch, end):
                metrics = self._run_epoch(epoch)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if end == self.recipe.epochs:
            self._export(self.out_dir / "final.safetensors", self.last_epoch, metrics)
        return {
            "epochs": self.last_epoch + 1,
            "global_step": self.global_step,
            "best": self.best.to_dict(),
            "last_metrics": metrics,
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
                self._scalar(f"Test/{k}", v, epoch)
        record = {
            "epoch": epoch,
            "global_step": self.global_step,
            "train_seconds": round(train_time, 3),
            "seconds_per_step": round(train_time / self.steps_per_epoch, 4),
            **{f"train_{k}": v for k, v in train_stats.items()},
            **({f"val_{k}": v for k, v in metrics.items()} if metrics else {}),
        }
        self._write_record(record)
        self.log(_epoch_line(record))
        self.save_checkpoint()
        return metrics


# ---------------------------------------------------------------------- module helpers
def _default_criterion(model: nn.Module) -> nn.Module:
    from dfine.loss import build_criterion

    return build_criterion(model)


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to floats with one device synchronisation."""
    if not values:
        return {}
    names = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    return dict(zip(names, stacked.tolist()))


def _model_info(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    names = getattr(model, "class_names", None)
    return {
        "size": getattr(cfg, "size", None),
        "num_classes": getattr(cfg, "num_classes", None),
        "class_names": list(names) if names else None,
        "input_size": list(getattr(cfg, "eval_size", ()) or ()),
        "ablation": getattr(cfg, "ablation", "none"),
    }


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.4f}"]
    if "val_AP" in record:
        parts.append(f"AP {record['val_AP']:.4f} AP50 {record['val_AP50']:.4f}")
    parts.append(f"{record['seconds_per_step']:.3f} s/step")
    return " | ".join(parts)


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in records:
        columns.extend(k for k in r if k not in columns)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)

    atomic_write(path, write)
