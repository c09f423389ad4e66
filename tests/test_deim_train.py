"""DEIM training (issue 23): the ``deim_*`` recipes, DEIM's flat-cosine schedule, DEIM's
parameter groups and a few optimizer steps against DEIM's own training step.

Fixtures, recorded with DEIM's own code (commit a9aa4ad; only numbers are committed):

- ``deim_recipes.json`` (``scripts/record_deim_recipe_fixture.py``): the merged settings of
  each DEIM-D-FINE config, its parameter groups on DEIM's model, and the lr DEIM's training
  loop applies at sampled steps (100 iterations per epoch);
- ``deim_steps.<cpu>.{json,safetensors}`` (``scripts/record_deim_loss_fixture.py``): 3 AdamW steps of
  DEIM-D-FINE-N (seeded random weights, 320 px, denoising on with a seed per step, DEIM's
  criterion, grad clipping 0.1, DEIM-N's parameter groups and learning rates, no schedule, no
  EMA, f32 on CPU): each step's loss and gradient norm, and the change of the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import dfine
from dfine.checkpoint import load_model
from dfine.config import get_config
from dfine.train.optim import build_param_groups
from dfine.train.recipes import get_recipe
from dfine.train.schedule import DEIMFlatCosine, build_schedule
from dfine.train.trainer import Trainer, TrainOptions
from tests.app_util import load_script
from tests.conftest import FIXTURES, cpu_fixture

RECIPES = json.loads((FIXTURES / "deim_recipes.json").read_text())["recipes"]
LOSS_RECORDER = load_script("scripts/record_deim_loss_fixture.py", "record_deim_loss_fixture")
EVAL_RECORDER = load_script("scripts/record_deim_fixture.py", "record_deim_fixture")
NAMES = list(RECIPES)


def test_every_deim_config_has_a_recipe():
    assert NAMES == ["deim_n", "deim_s", "deim_m", "deim_l", "deim_x", "deim_obj2coco_x"]
    for name in NAMES:
        get_recipe(name)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_mirrors_deims_config(name):
    deim, r = RECIPES[name]["settings"], get_recipe(name)
    opt = deim["optimizer"]
    assert (r.epochs, r.stop_epoch) == (deim["epochs"], deim["stop_epoch"])
    assert (r.lr, r.weight_decay, list(r.betas)) == (opt["lr"], opt["weight_decay"], opt["betas"])
    groups = [(g.pattern, g.lr, g.weight_decay) for g in r.param_groups]
    want = [(g["params"], g.get("lr"), g.get("weight_decay")) for g in opt["params"]]
    assert groups == want
    assert (r.batch_size, r.val_batch_size) == (
        deim["total_batch_size"],
        deim["val_total_batch_size"],
    )
    assert r.base_size_repeat == deim["base_size_repeat"]
    assert (r.clip_max_norm, r.amp, r.ema) == (
        deim["clip_max_norm"],
        deim["use_amp"],
        deim["use_ema"],
    )
    assert (r.ema_decay, r.ema_warmups) == (deim["ema"]["decay"], deim["ema"]["warmups"])
    assert r.ema_restart_decay == deim["ema_restart_decay"]
    assert deim["lrsheduler"] == "flatcosine" and r.scheduler == "deim_flatcosine"
    assert (r.warmup_iters, r.flat_epochs, r.no_aug_epochs, r.min_lr_ratio) == (
        deim["warmup_iter"],
        deim["flat_epoch"],
        deim["no_aug_epoch"],
        deim["lr_gamma"],
    )
    assert r.checkpoint_freq == deim["checkpoint_freq"]
    assert (r.num_classes, r.remap_mscoco_category) == (80, deim["remap_mscoco_category"])
    assert r.loss == "deim" and deim["criterion"]["losses"] == ["mal", "boxes", "local"]
    # Dense O2O: DEIM's policy epochs [e0, e1, e2] (e2 = the stop epoch) and mixup window
    p = r.data_policy
    assert [*p.mosaic_epochs, r.stop_epoch] == deim["policy"]["epoch"]
    assert list(p.mixup_epochs) == deim["mixup_epochs"]
    assert (p.mixup_prob, p.mosaic_prob) == (deim["mixup_prob"], deim["mosaic_prob"])


@pytest.mark.parametrize("name", NAMES)
def test_recipe_builds_deims_architecture(name):
    deim, r = RECIPES[name]["settings"], get_recipe(name)
    cfg = get_config(r.model_size, 80, family=r.family)
    assert cfg.decoder.activation == deim["activation"] and cfg.decoder.mlp_act == deim["mlp_act"]
    assert cfg.backbone.freeze_norm == deim["HGNetv2"]["freeze_norm"]
    # freeze_at -1: nothing frozen; 0 with freeze_stem_only: the stem only
    frozen_stem = deim["HGNetv2"]["freeze_at"] == 0 and deim["HGNetv2"]["freeze_stem_only"]
    assert cfg.backbone.freeze_stem == bool(frozen_stem)
    assert r.family == ("deim" if deim["activation"] == "silu" else "dfine")


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_are_deims(name):
    """Our groups on our model hold exactly the tensors DEIM's groups hold on DEIM's model."""
    r = get_recipe(name)
    model = dfine.build_model(r.model_size, family=r.family)
    ours = build_param_groups(model, r.param_groups)
    deim = RECIPES[name]["groups"]
    assert [g["pattern"] for g in ours[:-1]] == [g["params"] for g in deim[:-1]]
    counts = [(len(g["params"]), sum(p.numel() for p in g["params"])) for g in ours]
    assert counts == [(g["tensors"], g["numel"]) for g in deim]
    firsts = [g["names"][0] if g["names"] else None for g in ours]
    assert firsts == [g["first"] for g in deim]


def _our_lrs(name: str, steps: list[int]) -> list[list[float]]:
    r = get_recipe(name)
    lr = RECIPES[name]["lr"]
    model = dfine.build_model("n")
    optimizer = torch.optim.AdamW(
        build_param_groups(model, r.param_groups), lr=r.lr, weight_decay=r.weight_decay
    )
    schedule = build_schedule(optimizer, r, lr["iters_per_epoch"])
    assert isinstance(schedule, DEIMFlatCosine)
    wanted, result = set(steps), {}
    for i in range(max(steps) + 1):
        if i in wanted:
            result[i] = [g["lr"] for g in optimizer.param_groups]
        schedule.step_iter()
    return [result[i] for i in steps]


@pytest.mark.parametrize("name", NAMES[:5])
def test_schedule_gives_deims_lr_at_every_recorded_step(name):
    lr = RECIPES[name]["lr"]
    assert lr["error"] is None
    ours = _our_lrs(name, lr["steps"])
    for step, got, want in zip(lr["steps"], ours, lr["lrs"]):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-20), step
    # the recorded steps cover warm-up (quadratic, step 1 at lr 0), flat, decay and the end
    assert lr["lrs"][1] == [0.0] * len(lr["base_lrs"])
    assert lr["lrs"][0][0] == pytest.approx(lr["base_lrs"][0] / 500)


def test_obj2coco_schedule_has_no_warm_up():
    # DEIM's flat_cosine_schedule divides by warmup_iter (0 here) after the first step; ours
    # keeps the base lr (lr_gamma 1, flat for 12000 epochs)
    lr = RECIPES["deim_obj2coco_x"]["lr"]
    assert lr["error"].startswith("step 0: ZeroDivisionError")
    assert lr["steps"] == [0]
    ours = _our_lrs("deim_obj2coco_x", [0, 1, 2, 1000, 2399])
    assert ours[0] == pytest.approx(lr["lrs"][0], rel=1e-12)
    assert all(step == ours[0] for step in ours)


def test_schedule_resumes_where_it_stopped():
    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, build_schedule(opt, get_recipe("deim_s"), iters_per_epoch=20)

    opt, schedule = fresh()
    for _ in range(1700):  # into the cosine decay (flat until 64 x 20 = 1280)
        schedule.step_iter()
    state = json.loads(json.dumps(schedule.state_dict()))
    opt2, resumed = fresh()
    resumed.load_state_dict(state)
    resumed.step_iter()
    schedule.step_iter()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert 0.05 < opt.param_groups[0]["lr"] < 0.1


# ------------------------------------------------------------------------------- step parity
@pytest.fixture(scope="module")
def recorded_steps():
    from safetensors.torch import load_file

    stem = cpu_fixture(LOSS_RECORDER.for_this_cpu(FIXTURES / "deim_steps"))
    record = json.loads(Path(f"{stem}.json").read_text())
    return load_file(f"{stem}.safetensors"), record


def test_training_steps_match_deims(recorded_steps, tmp_path):
    """Three steps of our Trainer (DEIM-N recipe without schedule/EMA, f32, CPU) from DEIM's
    weights and batch: every recorded weight change within 1e-4 of DEIM's."""
    deltas, record = recorded_steps
    recipe = get_recipe("deim_n").replace(scheduler="multistep", warmup_iters=0, ema=False)
    model = dfine.build_model("n", family="deim")
    start = EVAL_RECORDER.random_state_dict(model.state_dict(), record["seed"])
    assert EVAL_RECORDER.checksum(start) == pytest.approx(record["checksum"], rel=1e-9)
    model.load_state_dict(start)
    start = {k: v.clone() for k, v in start.items()}
    images, targets = LOSS_RECORDER.batch(FIXTURES / "inputs.pt")
    options = TrainOptions(
        out_dir=tmp_path, device="cpu", amp="off", progress=False, tensorboard=False,
        channels_last=False,
    )  # fmt: skip
    trainer = Trainer(model.train(), recipe, [(images, targets)], options=options)
    groups = [
        {
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "numel": sum(p.numel() for p in g["params"]),
        }
        for g in trainer.optimizer.param_groups
    ]
    assert groups == record["param_groups"]
    assert recipe.clip_max_norm == record["clip_max_norm"]
    for step, want in enumerate(record["steps"]):
        torch.manual_seed(record["dn_seed"] + step)
        got = trainer.train_step(images, targets, epoch=0, step=step)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), step
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), step
    after = model.state_dict()
    full = [k for k in deltas]
    assert len(full) > 20
    for key in full:
        name = key[len("delta.") :]
        diff = (after[name] - start[name]) - deltas[key]
        assert diff.abs().max() <= 1e-4, name
    for name, stats in record["delta_stats"].items():
        delta = after[name] - start[name]
        assert float(delta.norm()) == pytest.approx(stats["norm"], rel=1e-3, abs=1e-4), name
        assert float(delta.abs().max()) == pytest.approx(stats["max"], abs=1e-4), name


# ------------------------------------------------------------------------------- CLI smoke
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dfine.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_deim")
    make_synthetic_dataset(root, num_train=4, num_val=1, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


@pytest.mark.parametrize("ablation", ["none", "golsd", "fdr"])
def test_dfine_train_deim_recipe(ablation, tiny, tmp_path, capsys):
    from dfine.cli import main as dfine_main

    out = tmp_path / ablation
    args = [
        "train", "--recipe", "deim_n", "--data", str(tiny), "--out", str(out),
        "--epochs", "1", "--batch-size", "2", "--input-size", "256", "--workers", "0",
        "--max-steps-per-epoch", "2" if ablation == "none" else "1", "--amp", "off", "--no-val",
        "--quiet", "--no-tensorboard", "--ablate", ablation,
    ]  # fmt: skip
    assert dfine_main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = " ".join(records[-1])
    assert "loss_mal" in terms and "loss_vfl" not in terms
    assert ("loss_ddf" in terms) == (ablation == "none")
    assert ("loss_fgl" in terms) == (ablation != "fdr")
    model = load_model(out / "final.safetensors")
    assert (model.family, model.ablation) == ("deim", ablation)
    assert model.config.decoder.activation == "silu" and not model.config.backbone.freeze_norm
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["model_config"]["family"] == "deim"
    assert last["recipe"]["name"] == "deim_n" and last["recipe"]["loss"] == "deim"
    capsys.readouterr()
    assert dfine_main(["inspect", str(out / "final.safetensors")]) == 0
    assert re.search(r"^family:\s+deim", capsys.readouterr().out, re.M)


def test_a_cpu_class_without_a_recording_skips_with_the_command(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NEON")
    stem = LOSS_RECORDER.for_this_cpu(FIXTURES / "deim_steps")
    assert stem.name == "deim_steps.neon"
    with pytest.raises(pytest.skip.Exception) as skip:
        cpu_fixture(stem)
    message = str(skip.value)
    assert "deim_steps.avx2.json" in message and "deim_steps.avx512.json" in message
    assert "scripts/record_deim_loss_fixture.py" in message
