"""Trainer: exact resume, atomic checkpoints, non-finite loss detection, tune-from.

All on CPU with D-FINE-N at 256 px, batch 2, two steps per epoch.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import dfine
from dfine.train import state as train_state
from dfine.train.recipes import get_recipe
from dfine.train.run import build_model_for
from dfine.train.state import atomic_torch_save, load_train_state
from dfine.train.trainer import NonFiniteLossError, Trainer, TrainOptions
from dfine.train.tune import load_pretrained, match_state

SIZE = 256


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: steadier timings when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Boxes(torch.utils.data.Dataset):
    """Four random images with one or two boxes each; epoch-aware like dfine.data."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, SIZE, SIZE, generator=g)
        n = 1 + i % 2
        centers = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
        sizes = 0.1 + 0.2 * torch.rand(n, 2, generator=g)
        return image, {
            "boxes": torch.cat([centers, sizes], 1),
            "labels": torch.randint(0, 3, (n,), generator=g),
            "image_id": torch.tensor(i),
            "orig_size": torch.tensor([SIZE, SIZE]),
        }


def _collate(items):
    return torch.stack([x for x, _ in items]), [t for _, t in items]


def _recipe(**kw):
    base = {"epochs": 2, "warmup_iters": 3, "ema_warmups": 5, "batch_size": 2, "input_size": SIZE}
    return get_recipe("synth").replace(**{**base, **kw})


def _trainer(out: Path, seed: int = 0, criterion=None, **recipe_kw) -> Trainer:
    torch.manual_seed(seed)
    recipe = _recipe(**recipe_kw)
    model = build_model_for(recipe, num_classes=3)
    # shuffled by torch's global generator: resuming must restore it
    loader = torch.utils.data.DataLoader(Boxes(), batch_size=2, shuffle=True, collate_fn=_collate)
    opts = TrainOptions(out_dir=out, device="cpu", progress=False, tensorboard=False)
    return Trainer(model, recipe, loader, None, criterion=criterion, options=opts)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_exact(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    first = _trainer(tmp_path / "part")
    first.fit(until_epoch=1)
    assert not (tmp_path / "part" / "final.safetensors").exists()
    resumed = _trainer(tmp_path / "part", seed=123)  # different init: everything comes from disk
    resumed.resume(tmp_path / "part" / "last.pth")
    assert (resumed.start_epoch, resumed.global_step) == (1, 2)
    resumed.fit()
    _assert_same_state(full.model.state_dict(), resumed.model.state_dict())
    _assert_same_state(full.ema.module.state_dict(), resumed.ema.module.state_dict())
    assert full.ema.updates == resumed.ema.updates == 4
    assert full.weights_digest() == resumed.weights_digest()
    a, b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][name])
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one record per epoch, none duplicated by the resume


def test_checkpoint_contents(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit()
    state = load_train_state(tmp_path / "last.pth")
    for key in ("model", "ema", "optimizer", "schedule", "scaler", "rng", "recipe", "best"):
        assert key in state, key
    assert state["last_epoch"] == 0 and state["global_step"] == 2
    assert state["recipe"]["name"] == "synth" and state["ema"]["updates"] == 2
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    # the training checkpoint loads as a model (EMA weights, as reference checkpoints)
    model = dfine.load_model(tmp_path / "last.pth")
    ema = trainer.ema.module.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    final = dfine.load_model(tmp_path / "final.safetensors")
    assert final.metadata["recipe"]["name"] == "synth" and tuple(final.config.eval_size) == (
        256,
        256,
    )


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"model": {"w": torch.ones(3)}, "last_epoch": 0}, path)

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")  # a partial file ...
        raise OSError("disk full")  # ... then the writer dies

    monkeypatch.setattr(train_state.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"model": {"w": torch.zeros(3)}, "last_epoch": 1}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    state = load_train_state(path)
    assert state["last_epoch"] == 0 and torch.equal(state["model"]["w"], torch.ones(3))
    # a process killed mid-write leaves only a temporary, removed on the next start
    (tmp_path / f"last.pth.tmp.{os.getpid() + 1}").write_bytes(b"partial")
    removed = train_state.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f"last.pth.tmp.{os.getpid() + 1}"]


class NaNAfter(torch.nn.Module):
    """The real criterion, but ``loss_giou_aux_0`` becomes NaN from step ``at`` on."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at = inner, at

    def forward(self, outputs, targets, **metas):
        losses = self.inner(outputs, targets, **metas)
        if metas["global_step"] >= self.at:
            losses["loss_giou_aux_0"] = losses["loss_giou_aux_0"] * float("nan")
        return losses


def test_non_finite_loss_stops_before_the_update(tmp_path):
    from dfine.loss import build_criterion

    torch.manual_seed(0)
    probe = dfine.build_model("n", num_classes=3)
    trainer = _trainer(tmp_path, criterion=NaNAfter(build_criterion(probe), at=1))
    images, targets = next(iter(trainer.train_loader))
    trainer.train_step(images, targets, epoch=0, step=0)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train_step(images, targets, epoch=0, step=1)
    message = str(info.value)
    assert "loss_giou_aux_0=nan" in message and "epoch 1, step 2" in message  # 1-based
    assert "lower learning rate" in message and "loss_vfl" not in message
    # no update was applied (BatchNorm running statistics of that forward pass do change)
    _assert_same_state(before, dict(trainer.model.named_parameters()))
    assert trainer.ema.updates == 1 and trainer.global_step == 0


def test_tune_from_other_class_count(tmp_path):
    torch.manual_seed(0)
    source = dfine.build_model("n", num_classes=5)
    dfine.save_model(source, tmp_path / "five.pth")
    target = dfine.build_model("n", num_classes=3)
    report = load_pretrained(target, tmp_path / "five.pth")
    skipped = {name for name, _ in report.skipped}
    heads = {"decoder.enc_score_head.weight", "decoder.enc_score_head.bias",
             "decoder.denoising_class_embed.weight"}  # fmt: skip
    heads |= {f"decoder.dec_score_head.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert skipped == heads
    assert all("class count differs" in why for _, why in report.skipped)
    assert not report.missing and not report.remapped
    own, theirs = target.state_dict(), source.state_dict()
    for name in report.loaded:
        assert torch.equal(own[name], theirs[name]), name
    head = "decoder.enc_score_head.weight"
    assert not torch.equal(own[head], theirs[head][:3])  # kept its fresh initialisation
    assert "skipped 9" in report.summary()


def test_tune_from_objects365_maps_coco_rows():
    own = {
        "decoder.enc_score_head.bias": torch.zeros(80),
        "decoder.denoising_class_embed.weight": torch.zeros(81, 4),
    }
    theirs = {
        "decoder.enc_score_head.bias": torch.arange(366.0),
        "decoder.denoising_class_embed.weight": torch.zeros(367, 4),
        "extra": torch.zeros(1),
    }
    chosen, report = match_state(own, theirs)
    bias = chosen["decoder.enc_score_head.bias"]
    # person <- Objects365 id 1 (Person), bicycle <- 47 (Bicycle), toothbrush <- 227
    assert bias[0] == 1 and bias[1] == 47 and bias[79] == 227
    assert report.remapped == ["decoder.enc_score_head.bias"]
    assert [n for n, _ in report.skipped] == ["decoder.denoising_class_embed.weight"]
    assert report.unexpected == ["extra"]


def test_bf16_autocast_step_and_amp_checks(tmp_path):
    torch.manual_seed(0)
    recipe = _recipe()
    model = build_model_for(recipe, num_classes=3)
    loader = torch.utils.data.DataLoader(Boxes(), batch_size=2, collate_fn=_collate)

    def make(amp: str) -> Trainer:
        opts = TrainOptions(out_dir=tmp_path, device="cpu", amp=amp, progress=False)
        return Trainer(model, recipe, loader, options=opts)

    trainer = make("bf16")
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    images, targets = next(iter(loader))
    record = trainer.train_step(images, targets, epoch=0, step=0)
    assert torch.isfinite(torch.tensor(record["loss"])) and record["grad_norm"] > 0
    assert make("auto").amp_dtype is None  # AMP is off on CPU unless asked for
    with pytest.raises(ValueError, match="CUDA"):
        make("fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        make("half")


class BadBox(Boxes):
    """Like :class:`Boxes`, but image 0's first box is infinitely wide (a corrupt annotation):
    the real criterion's terms for it come out NaN and are zeroed, as the reference does."""

    def __getitem__(self, i: int):
        image, target = super().__getitem__(i)
        if i == 0:
            target["boxes"][0, 2] = float("inf")
        return image, target


def _bad_trainer(out: Path, **options) -> Trainer:
    torch.manual_seed(0)
    recipe = _recipe(epochs=1)
    model = build_model_for(recipe, num_classes=3)
    loader = torch.utils.data.DataLoader(BadBox(), batch_size=2, collate_fn=_collate)
    opts = TrainOptions(out_dir=out, device="cpu", progress=False, tensorboard=False, **options)
    return Trainer(model, recipe, loader, None, options=opts)


def test_nonfinite_terms_of_a_real_input_are_named_when_training_stops(tmp_path):
    """The zeroed terms still leave NaN in the gradient (0 x NaN in the backward pass): the
    trainer stops before the update and says which terms started it."""
    trainer = _bad_trainer(tmp_path)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "epoch 1, step 1 (global step 1): gradient norm from loss_vfl" in message
    assert "(zeroed by the criterion)" in message
    _assert_same_state(before, dict(trainer.model.named_parameters()))


class ZeroedAt(torch.nn.Module):
    """The real criterion, plus at global step ``at`` a term that is NaN without any gradient
    (what the criterion does with such a term: report it in ``last_nonfinite``, zero it)."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at = inner, at
        self.last_nonfinite: list[str] = []

    def forward(self, outputs, targets, **metas):
        losses = self.inner(outputs, targets, **metas)
        self.last_nonfinite = list(self.inner.last_nonfinite)
        if metas["global_step"] == self.at:
            losses["loss_extra"] = torch.nan_to_num(torch.tensor(float("nan")), nan=0.0)
            self.last_nonfinite.append("loss_extra")
        return losses


def test_zeroed_terms_with_a_finite_gradient_are_counted_and_logged(tmp_path):
    import json

    from dfine.loss import build_criterion

    probe = dfine.build_model("n", num_classes=3)
    trainer = _trainer(tmp_path, criterion=ZeroedAt(build_criterion(probe), at=1))
    summary = trainer.fit()
    assert summary["nonfinite_steps"] == 1 and summary["epochs"] == 2
    log = (tmp_path / "train.log").read_text()
    assert "epoch 1, step 2 (global step 2): non-finite loss term(s) zeroed" in log
    assert "loss_extra (zeroed by the criterion)" in log and "--stop-on-nan" in log
    assert "epoch 1/2 | " in log and "1 step(s) with non-finite loss terms" in log
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["train_nonfinite_steps"]) for r in records] == [(1, 1), (2, 0)]


def test_stop_on_nan_stops_before_the_update(tmp_path):
    trainer = _bad_trainer(tmp_path, stop_on_nan=True)
    images, targets = next(iter(trainer.train_loader))
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train_step(images, targets, epoch=0, step=0)
    message = str(info.value)
    assert "epoch 1, step 1" in message and "loss_vfl" in message
    assert "gradient norm" not in message  # stopped before the backward pass
    assert "no epoch finished yet" in message
    _assert_same_state(before, dict(trainer.model.named_parameters()))


def test_files_modes_and_periodic_checkpoints(tmp_path):
    _trainer(tmp_path / "default").fit()
    names = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert names == ["final.safetensors", "last.pth", "metrics.csv", "metrics.jsonl", "train.log"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "default").iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors used to come out 0o600
    every = _trainer(tmp_path / "every", seed=0)
    every.options.save_every = 1
    every.fit()
    assert {"checkpoint0001.pth", "checkpoint0002.pth"} <= {p.name for p in every.out_dir.iterdir()}
    assert load_train_state(every.out_dir / "checkpoint0001.pth")["last_epoch"] == 0


def test_resumed_summary_says_this_invocation_and_whole_run(tmp_path):
    from dfine.train.cli import summary_text

    _trainer(tmp_path).fit(until_epoch=1)
    resumed = _trainer(tmp_path)
    resumed.resume(tmp_path / "last.pth")
    summary = resumed.fit()
    assert (summary["steps_this_run"], summary["global_step"], summary["epochs"]) == (2, 4, 2)
    text = summary_text(summary, "OUT")
    assert "this invocation: 2 steps in " in text and "whole run: 2 epoch(s), 4 steps" in text
    assert "resumed from" in (tmp_path / "train.log").read_text()


class TermAt(torch.nn.Module):
    """The real criterion; sends this process SIGTERM at global step ``at``."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at = inner, at

    def forward(self, outputs, targets, **metas):
        if metas["global_step"] == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.inner(outputs, targets, **metas)


def test_sigterm_says_where_to_resume_from(tmp_path):
    from dfine.loss import build_criterion
    from dfine.train.trainer import TrainingInterrupted

    probe = dfine.build_model("n", num_classes=3)
    trainer = _trainer(tmp_path, criterion=TermAt(build_criterion(probe), at=3))
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    message = str(info.value)
    assert message.startswith("SIGTERM: training stopped; the last complete checkpoint is")
    assert "last.pth (1 epoch(s) done); continue with --resume" in message
    assert message in (tmp_path / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
