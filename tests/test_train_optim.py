"""Optimizer parameter groups, learning-rate schedules, EMA and recipes (dfine.train)."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

import dfine
from dfine.errors import InvalidArgumentError
from dfine.train.ema import ModelEMA
from dfine.train.optim import (
    DEFAULT_GROUP,
    build_optimizer,
    build_param_groups,
    describe_param_groups,
    format_param_groups,
)
from dfine.train.recipes import RECIPES, ParamGroup, Recipe, get_recipe
from dfine.train.schedule import FlatCosine, LinearWarmup, WarmupMultiStep, build_schedule


@pytest.fixture(scope="module")
def model_n():
    return dfine.build_model("n", num_classes=3)


@pytest.fixture(scope="module")
def model_l():
    return dfine.build_model("l", num_classes=3)


def _ids(groups):
    return [id(p) for g in groups for p in g["params"]]


# ---------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("fixture", ["model_n", "model_l"])
def test_every_trainable_parameter_in_exactly_one_group(fixture, request):
    model = request.getfixturevalue(fixture)
    recipe = get_recipe(f"coco_{'n' if fixture == 'model_n' else 'l'}")
    groups = build_param_groups(model, recipe.param_groups)
    ids = _ids(groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & set(ids)  # N: decoder up/reg_scale; L: the frozen stem


def test_n_groups_follow_the_reference_regexes(model_n):
    recipe = get_recipe("coco_n")
    opt = build_optimizer(model_n, recipe)
    info = describe_param_groups(opt)
    assert [g["pattern"] for g in info] == [g.pattern for g in recipe.param_groups] + [
        DEFAULT_GROUP
    ]
    backbone, backbone_norm, head_norm, default = info
    assert (backbone["lr"], backbone["weight_decay"]) == (4e-4, 1e-4)
    assert (backbone_norm["lr"], backbone_norm["weight_decay"]) == (4e-4, 0.0)
    assert (head_norm["lr"], head_norm["weight_decay"]) == (8e-4, 0.0)
    assert (default["lr"], default["weight_decay"]) == (8e-4, 1e-4)
    assert opt.defaults["betas"] == (0.9, 0.999)
    # reference regex precedence: HGNetv2 BatchNorms ("...bn.weight") stay in the first group
    assert backbone_norm["tensors"] == 0
    assert "backbone.stem.stem1.bn.weight" in backbone["names"]
    # encoder/decoder norms, batch norms and biases: no weight decay
    for name in head_norm["names"]:
        assert name.startswith(("encoder", "decoder"))
        assert re.search("norm|bn|bias", name)
    assert "decoder.dec_score_head.0.bias" in head_norm["names"]
    assert "encoder.input_proj.0.norm.weight" in head_norm["names"]
    assert all(n.startswith(("encoder", "decoder")) for n in default["names"])
    assert all(not re.search("norm|bn|bias", n) for n in default["names"])
    assert "decoder.up" not in [n for g in info for n in g["names"]]  # frozen
    assert "lr" in format_param_groups(opt)


def test_l_groups_keep_biases_decayed(model_l):
    info = describe_param_groups(build_optimizer(model_l, get_recipe("coco_l")))
    backbone, head_norm, default = info
    assert backbone["lr"] == 1.25e-5 and head_norm["weight_decay"] == 0.0
    assert default["lr"] == 2.5e-4 and default["weight_decay"] == 1.25e-4
    assert "decoder.dec_score_head.0.bias" in default["names"]  # L/X: only norm|bn get wd 0
    assert not any(n.startswith("backbone.stem") and "conv" in n for n in backbone["names"])


def test_first_matching_group_wins():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    groups = build_param_groups(
        model, (ParamGroup("weight", lr=1.0), ParamGroup(".*", weight_decay=0.0))
    )
    assert [g["names"] for g in groups] == [["0.weight"], ["0.bias"]]
    assert groups[0]["lr"] == 1.0 and groups[1]["weight_decay"] == 0.0


# ---------------------------------------------------------------------- schedules
def _optimizer(lrs=(1.0, 0.5)):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])


def test_linear_warmup_values_per_iteration():
    opt = _optimizer()
    sched = WarmupMultiStep(opt, warmup_iters=4, milestones=(2,), gamma=0.1)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step_iter()
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [s[0] for s in seen] == pytest.approx(expected)
    assert [s[1] for s in seen] == pytest.approx([v * 0.5 for v in expected])
    assert sched.warmup.finished()


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_multistep_counts_only_epochs_after_warmup():
    opt = _optimizer((1.0,))
    sched = WarmupMultiStep(opt, warmup_iters=3, milestones=(2,), gamma=0.1)
    lrs = []
    for _epoch in range(5):
        for _ in range(2):  # 2 iterations per epoch: warm-up spans epochs 0 and 1
            sched.step_iter()
        sched.step_epoch()
        lrs.append(opt.param_groups[0]["lr"])
    # epoch 0 ends inside the warm-up (its last lr is already 3/3, but the warm-up finishes
    # one step later): MultiStepLR does not step then; it steps after epochs 1, 2, ... as its
    # epochs 1, 2, ..., so milestone 2 is reached after epoch 2, not epoch 1
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1])
    assert sched.multistep.last_epoch == 4


def test_zero_warmup_leaves_lr_alone():
    opt = _optimizer((1.0,))
    sched = WarmupMultiStep(opt, warmup_iters=0)
    assert opt.param_groups[0]["lr"] == 1.0 and sched.warmup.finished()


def test_flat_cosine_values():
    opt = _optimizer((1.0,))
    sched = FlatCosine(opt, total_iters=10, warmup_iters=2, flat_iters=4, min_lr_ratio=0.1)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        sched.step_iter()
    assert seen[:4] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6))
    assert seen[7] == pytest.approx(mid)
    assert seen[9] > 0.1 and seen[10:] == pytest.approx([0.1, 0.1])
    assert all(a >= b for a, b in itertools.pairwise(seen[3:]))


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("kind", ["multistep", "flatcosine"])
def test_schedule_state_round_trip(kind):
    recipe = get_recipe("synth").replace(scheduler=kind, warmup_iters=5, flat_epochs=1)
    opt_a = _optimizer()
    a = build_schedule(opt_a, recipe, iters_per_epoch=4)
    for _ in range(3):
        a.step_iter()
    opt_b = _optimizer()
    b = build_schedule(opt_b, recipe, iters_per_epoch=4)
    opt_b.load_state_dict(opt_a.state_dict())
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        a.step_iter()
        b.step_iter()
        a.step_epoch()
        b.step_epoch()
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]


def test_warmup_works_on_a_bare_optimizer():
    opt = _optimizer((2.0,))
    w = LinearWarmup(opt, 2)
    assert opt.param_groups[0]["lr"] == 1.0
    w.step()
    assert opt.param_groups[0]["lr"] == 2.0


# ---------------------------------------------------------------------- EMA
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.bn = torch.nn.BatchNorm1d(1)


def test_ema_decay_schedule():
    ema = ModelEMA(_Tiny(), decay=0.9999, warmups=1000)
    for k in (1, 10, 1000, 5000):
        assert ema.decay_at(k) == pytest.approx(0.9999 * (1 - math.exp(-k / 1000)))
    assert ModelEMA(_Tiny(), decay=0.99, warmups=0).decay_at(1) == 0.99


def test_ema_update_math_and_buffers():
    model = _Tiny()
    ema = ModelEMA(model, decay=0.9, warmups=10)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model.lin.weight.add_(1.0)
        model.bn.running_mean.fill_(2.0)
        model.bn.num_batches_tracked.fill_(7)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 10))
    sd = ema.module.state_dict()
    expected = start["lin.weight"] * d + (1 - d) * model.lin.weight
    torch.testing.assert_close(sd["lin.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(sd["bn.running_mean"], torch.full((1,), (1 - d) * 2.0))
    assert int(sd["bn.num_batches_tracked"]) == 0  # integer buffers are not averaged
    assert ema.updates == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_ema_restart_and_state_dict():
    model = _Tiny()
    ema = ModelEMA(model, decay=0.9999, warmups=0)
    for _ in range(3):
        ema.update(model)
    ema.restart(0.9998)
    assert ema.decay_at(ema.updates + 1) == 0.9998 and ema.updates == 3
    other = ModelEMA(_Tiny(), decay=0.5, warmups=7)
    other.load_state_dict(ema.state_dict())
    assert (other.updates, other.decay, other.warmups) == (3, 0.9998, 0)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(other.module.state_dict()[k], v)


# ---------------------------------------------------------------------- recipes
def test_recipes_mirror_reference_configs():
    n, x = get_recipe("coco_n"), get_recipe("coco_x")
    assert (n.epochs, n.stop_epoch, n.lr, n.batch_size, n.base_size_repeat) == (
        160,
        148,
        8e-4,
        128,
        None,
    )
    assert (x.epochs, x.stop_epoch, x.ema_restart_decay, x.base_size_repeat) == (80, 72, 0.9998, 3)
    assert get_recipe("coco_s").base_size_repeat == 20 and get_recipe("coco_m").epochs == 132
    o = get_recipe("obj2coco_l")
    assert (o.epochs, o.stop_epoch, o.warmup_iters, o.ema_warmups) == (36, 30, 0, 0)
    assert o.tune_from == "dfine_l_obj365" and o.num_classes == 80
    assert get_recipe("obj365_x").num_classes == 366 and get_recipe("obj365_s").epochs == 36
    assert get_recipe("obj2custom_s").num_classes is None
    for r in RECIPES.values():
        assert r.clip_max_norm == 0.1 and r.betas == (0.9, 0.999)
    synth = get_recipe("synth")
    assert synth.model_size == "n" and synth.input_size == 320 and not synth.amp
    with pytest.raises(InvalidArgumentError, match="known recipes"):
        get_recipe("nope")


def test_recipe_dict_round_trip():
    for r in RECIPES.values():
        assert Recipe.from_dict(r.to_dict()) == r
