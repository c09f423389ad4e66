"""Named training recipes mirroring the reference configs (D-FINE commit 4a1f73a).

Each :class:`Recipe` gathers what ``configs/dfine/**/dfine_hgnetv2_*.yml`` set after their
``__include__`` chain (``runtime.yml``, ``include/optimizer.yml``, ``include/dataloader.yml``):

- ``coco_{n,s,m,l,x}``: COCO from an ImageNet-pretrained backbone (``dfine_hgnetv2_*_coco.yml``);
- ``obj365_{n,s,m,l,x}``: Objects365 pre-training (366-logit heads, no category remapping);
- ``obj2coco_{n,s,m,l,x}``: COCO fine-tuning from the Objects365 weights (no lr warm-up, no EMA
  warm-up, shorter schedule);
- ``custom_{n,s,m,l,x}`` and ``obj2custom_{s,m,l,x}``: a custom COCO-format dataset, from scratch
  or from Objects365 weights (``configs/dfine/custom``);
- ``synth``: a small CPU recipe for the synthetic dataset (not from the reference);
- ``deim_{n,s,m,l,x}`` and ``deim_obj2coco_x``: DEIM (github.com/ShihuaHuang95/DEIM,
  ``configs/deim_dfine/deim_hgnetv2_*_coco.yml`` and ``object365/deim_hgnetv2_x_obj2coco_24e.yml``
  after their ``__include__`` chain): the DEIM criterion (MAL), DEIM's flat-cosine schedule
  (``deim_flatcosine``), the ``deim`` model family (SiLU decoder, unfrozen backbone BatchNorm;
  the Objects365→COCO config keeps D-FINE's ReLU decoder and frozen BatchNorm), DEIM's groups.
  DEIM defines no custom-dataset configs, so there are no ``deim_custom_*`` recipes.

Values common to every reference config: AdamW betas (0.9, 0.999), gradient clipping 0.1, AMP on,
EMA decay 0.9999 with 1000 warm-up updates, linear lr warm-up over 500 iterations, MultiStepLR
milestones [500] (epochs, so never reached) with gamma 0.1, multi-scale base size 640,
SyncBatchNorm, checkpoint every 12 epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dfine.data.policy import DenseO2OPolicy, deim_policy
from dfine.errors import InvalidArgumentError

# The reference's parameter-group regexes, verbatim. Note the operator precedence in
# ``(?!.*norm|bn)``: it reads "not (contains 'norm' or starts with 'bn')", so the HGNetv2
# BatchNorm parameters (named ``...bn.weight``) fall in the *first* group (backbone lr, default
# weight decay) and the "backbone norm" group is empty. Kept as is for parity.
BACKBONE_NON_NORM = r"^(?=.*backbone)(?!.*norm|bn).*$"
BACKBONE_NORM = r"^(?=.*backbone)(?=.*norm|bn).*$"
HEAD_NORM_BIAS = r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$"
HEAD_NORM = r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$"


@dataclass(frozen=True)
class ParamGroup:
    """One AdamW parameter group: parameter names matching ``pattern`` (``re.search``), with
    ``lr`` / ``weight_decay`` overriding the optimizer defaults when not None."""

    pattern: str
    lr: float | None = None
    weight_decay: float | None = None


@dataclass(frozen=True)
class Recipe:
    """A complete training recipe. Frozen: derive variants with :meth:`replace`."""

    name: str
    model_size: str
    dataset: str  # "coco", "obj365", "custom" or "synth"
    num_classes: int | None  # None: taken from the dataset
    epochs: int
    stop_epoch: int  # from this epoch on: no strong augmentation, no multi-scale, EMA restart
    lr: float
    weight_decay: float
    param_groups: tuple[ParamGroup, ...]
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32  # total over all processes, as the reference's total_batch_size
    val_batch_size: int = 64
    num_workers: int = 4
    input_size: int = 640  # train base size and eval size (square)
    base_size_repeat: int | None = 3  # multi-scale: how often the base size is drawn; None: off
    data_policy: DenseO2OPolicy | None = None  # DEIM's mosaic + mixup windows; None: D-FINE's
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmups: int = 1000
    ema_restart_decay: float = 0.9999
    ema_search: bool = True  # after stop_epoch: no AP gain -> decay -= 1e-4, reload best stage 1
    warmup_iters: int = 500
    scheduler: str = "multistep"  # "multistep" (reference), "flatcosine" or "deim_flatcosine"
    lr_milestones: tuple[int, ...] = (500,)
    lr_gamma: float = 0.1
    flat_epochs: int = 0  # flatcosine only: epochs at the base lr before the cosine decay
    min_lr_ratio: float = 0.05  # flatcosine only: final lr / base lr (DEIM's lr_gamma)
    no_aug_epochs: int = 0  # deim_flatcosine only: last epochs at the final lr
    family: str = "dfine"  # the model family trained (dfine.config.FAMILIES)
    loss: str = "dfine"  # the criterion (dfine.loss.criterion.LOSS_KINDS): dfine (VFL), deim (MAL)
    clip_max_norm: float = 0.1
    amp: bool = True
    sync_bn: bool = True
    checkpoint_freq: int = 12
    eval_every: int = 1
    pretrained_backbone: bool = True  # the reference starts from ImageNet HGNetv2 weights
    tune_from: str | None = None  # suggested starting weights (a model-zoo name)
    remap_mscoco_category: bool = False
    notes: str = ""

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dictionary (stored in checkpoints and metadata)."""
        d = dataclasses.asdict(self)
        d["param_groups"] = [dataclasses.asdict(g) for g in self.param_groups]
        d["betas"] = list(self.betas)
        d["lr_milestones"] = list(self.lr_milestones)
        d["data_policy"] = self.data_policy.to_dict() if self.data_policy else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["param_groups"] = tuple(ParamGroup(**g) for g in kw.get("param_groups", ()))
        kw["betas"] = tuple(kw.get("betas", (0.9, 0.999)))
        kw["lr_milestones"] = tuple(kw.get("lr_milestones", (500,)))
        if kw.get("data_policy") is not None:
            kw["data_policy"] = DenseO2OPolicy.from_dict(kw["data_policy"])
        return cls(**kw)


def _groups_three(backbone_lr: float) -> tuple[ParamGroup, ...]:
    """N/S/M: backbone (lr), backbone norms (lr, wd 0), encoder/decoder norm/bn/bias (wd 0)."""
    return (
        ParamGroup(BACKBONE_NON_NORM, lr=backbone_lr),
        ParamGroup(BACKBONE_NORM, lr=backbone_lr, weight_decay=0.0),
        ParamGroup(HEAD_NORM_BIAS, weight_decay=0.0),
    )


def _groups_two(backbone_lr: float) -> tuple[ParamGroup, ...]:
    """L/X: backbone (lr; its BatchNorms are frozen), encoder/decoder norm/bn (wd 0)."""
    return (ParamGroup(BACKBONE_NON_NORM, lr=backbone_lr), ParamGroup(HEAD_NORM, weight_decay=0.0))


def _make(
    name: str,
    size: str,
    dataset: str,
    lrs: tuple[float, float, float],
    epochs: int,
    stop: int,
    repeat: int | None,
    **kw: Any,
) -> Recipe:
    """``lrs`` = (backbone lr, base lr, weight decay)."""
    backbone_lr, lr, wd = lrs
    groups = _groups_two(backbone_lr) if size in ("l", "x") else _groups_three(backbone_lr)
    num_classes = {"coco": 80, "obj365": 366}.get(dataset)
    return Recipe(
        name=name,
        model_size=size,
        dataset=dataset,
        num_classes=num_classes,
        epochs=epochs,
        stop_epoch=stop,
        lr=lr,
        weight_decay=wd,
        param_groups=groups,
        base_size_repeat=repeat,
        remap_mscoco_category=dataset == "coco",
        **kw,
    )


_N_LRS = (4e-4, 8e-4, 1e-4)
_L_LRS = (1.25e-5, 2.5e-4, 1.25e-4)
_X_LRS = (2.5e-6, 2.5e-4, 1.25e-4)
_N_BATCH = {"batch_size": 128, "val_batch_size": 256}
# fine-tuning from Objects365: no lr warm-up, no EMA warm-up (``warmups: 0``)
_FINETUNE = {"warmup_iters": 0, "ema_warmups": 0}


def _coco() -> list[Recipe]:
    return [
        _make("coco_n", "n", "coco", _N_LRS, 160, 148, None, **_N_BATCH),
        _make("coco_s", "s", "coco", (1e-4, 2e-4, 1e-4), 132, 120, 20),
        _make("coco_m", "m", "coco", (2e-5, 2e-4, 1e-4), 132, 120, 6),
        _make("coco_l", "l", "coco", _L_LRS, 80, 72, 4),
        _make("coco_x", "x", "coco", _X_LRS, 80, 72, 3, ema_restart_decay=0.9998),
    ]


def _obj365() -> list[Recipe]:
    # stop epoch 500: strong augmentation and multi-scale stay on for the whole (early-stopped)
    # run; a checkpoint every epoch
    kw: dict[str, Any] = {"checkpoint_freq": 1}
    return [
        _make("obj365_n", "n", "obj365", _N_LRS, 48, 500, None, **_N_BATCH, **kw),
        _make("obj365_s", "s", "obj365", (1.25e-4, 2.5e-4, 1.25e-4), 36, 500, 20, **kw),
        _make("obj365_m", "m", "obj365", (2.5e-5, 2.5e-4, 1.25e-4), 36, 500, 6, **kw),
        _make("obj365_l", "l", "obj365", _L_LRS, 24, 500, 4, **kw),
        _make("obj365_x", "x", "obj365", _X_LRS, 24, 500, 3, **kw),
    ]


def _obj2coco() -> list[Recipe]:
    def tune(size: str) -> dict[str, Any]:
        return {"tune_from": f"dfine_{size}_obj365", **_FINETUNE}

    return [
        _make("obj2coco_n", "n", "coco", _N_LRS, 64, 56, None, **_N_BATCH, **tune("n")),
        _make("obj2coco_s", "s", "coco", (1.25e-4, 2.5e-4, 1.25e-4), 64, 56, 10, **tune("s")),
        _make("obj2coco_m", "m", "coco", (2.5e-5, 2.5e-4, 1.25e-4), 56, 48, 6, **tune("m")),
        _make("obj2coco_l", "l", "coco", _L_LRS, 36, 30, 4, **tune("l")),
        _make("obj2coco_x", "x", "coco", _X_LRS, 36, 30, 3, **tune("x")),
    ]


def _custom() -> list[Recipe]:
    return [
        _make("custom_n", "n", "custom", _N_LRS, 220, 200, None, **_N_BATCH),
        _make(
            "custom_s",
            "s",
            "custom",
            (2e-4, 4e-4, 1e-4),
            220,
            200,
            20,
            batch_size=64,
            val_batch_size=128,
        ),
        _make("custom_m", "m", "custom", (2.5e-5, 2.5e-4, 1.25e-4), 132, 120, 6),
        _make("custom_l", "l", "custom", _L_LRS, 80, 72, 4),
        _make("custom_x", "x", "custom", _X_LRS, 80, 72, 3, ema_restart_decay=0.9998),
    ]


def _obj2custom() -> list[Recipe]:
    def tune(size: str) -> dict[str, Any]:
        return {"tune_from": f"dfine_{size}_obj365", "pretrained_backbone": False, **_FINETUNE}

    return [
        _make("obj2custom_s", "s", "custom", (1.25e-4, 2.5e-4, 1.25e-4), 64, 56, 10, **tune("s")),
        _make("obj2custom_m", "m", "custom", (2.5e-5, 2.5e-4, 1.25e-4), 56, 48, 6, **tune("m")),
        _make("obj2custom_l", "l", "custom", _L_LRS, 36, 30, 4, **tune("l")),
        _make("obj2custom_x", "x", "custom", _X_LRS, 36, 30, 3, **tune("x")),
    ]


def _synth() -> Recipe:
    # Not from the reference: D-FINE-N at 320 px for a 2-core CPU. Shorter EMA horizon and
    # warm-up because a run has only a few thousand steps; AMP off (CPU).
    # No multi-scale, as the reference's N recipes: N has 300 queries, and at 0.75 x 320 = 224
    # its two feature maps hold only 14^2 + 7^2 = 245 positions.
    return _make(
        "synth",
        "n",
        "synth",
        _N_LRS,
        24,
        20,
        None,
        batch_size=4,
        val_batch_size=8,
        num_workers=2,
        input_size=320,
        ema_decay=0.999,
        ema_warmups=200,
        ema_restart_decay=0.999,
        warmup_iters=100,
        amp=False,
        sync_bn=False,
        checkpoint_freq=4,
        eval_every=2,
        pretrained_backbone=False,
        notes="small CPU recipe for the synthetic shapes dataset (dfine.data.synth)",
    )


# DEIM's S and M groups: backbone without BatchNorm (lr), every norm/bn anywhere (wd 0; the
# backbone's BatchNorms train at the base lr)
DEIM_BACKBONE_NON_BN = r"^(?=.*backbone)(?!.*bn).*$"
DEIM_ALL_NORM = r"^(?=.*(?:norm|bn)).*$"
# DEIM's settings common to its D-FINE-architecture configs (configs/base/deim.yml):
# quadratic lr warm-up over 2000 iterations, checkpoint every 4 epochs (its dfine_hgnetv2.yml)
_DEIM = {
    "scheduler": "deim_flatcosine",
    "warmup_iters": 2000,
    "checkpoint_freq": 4,
    "family": "deim",
    "loss": "deim",
}


def _deim(
    name: str,
    size: str,
    lrs: tuple[float, float, float],
    epochs: tuple[int, int, int, int],
    repeat: int | None,
    min_lr_ratio: float,
    **kw: Any,
) -> Recipe:
    """``epochs`` = (epochs, stop epoch, flat epochs, no-aug epochs); the Dense O2O data
    policy is DEIM's for the config ``name`` names (:func:`dfine.data.policy.deim_policy`)."""
    total, stop, flat, no_aug = epochs
    policy = deim_policy(name.removeprefix("deim_"))
    recipe = _make(name, size, "coco", lrs, total, stop, repeat, **{**_DEIM, **kw})
    return recipe.replace(
        flat_epochs=flat, no_aug_epochs=no_aug, min_lr_ratio=min_lr_ratio, data_policy=policy
    )


def _deim_coco() -> list[Recipe]:
    # DEIM's Dense O2O data policy (configs/base/deim.yml; the recipe's data_policy), policy
    # epochs [e0, e1, e2] per line: before e0 no strong augmentation (PhotometricDistort,
    # ZoomOut, IoUCrop, Mosaic off); in [e0, e1) Mosaic (output 320, prob 0.5; a mosaic sample
    # skips ZoomOut/IoUCrop) plus the others; in [e1, e2) the others without Mosaic; from e2
    # (= stop epoch: multi-scale off too) none. MixUp (prob 0.5) in [mixup0, mixup1).
    s_m = (DEIM_BACKBONE_NON_BN, DEIM_ALL_NORM)
    return [
        # policy epochs [4, 78, 148], mixup epochs [4, 78]
        _deim("deim_n", "n", _N_LRS, (160, 148, 7800, 12), None, 1.0, **_N_BATCH),
        # policy epochs [4, 64, 120], mixup epochs [4, 64]
        _deim("deim_s", "s", (2e-4, 4e-4, 1e-4), (132, 120, 64, 12), 20, 0.5).replace(
            param_groups=(ParamGroup(s_m[0], lr=2e-4), ParamGroup(s_m[1], weight_decay=0.0))
        ),
        # policy epochs [4, 49, 90], mixup epochs [4, 49]
        _deim("deim_m", "m", (4e-5, 4e-4, 1e-4), (102, 90, 49, 12), 6, 0.5).replace(
            param_groups=(ParamGroup(s_m[0], lr=4e-5), ParamGroup(s_m[1], weight_decay=0.0))
        ),
        # policy epochs [4, 29, 50], mixup epochs [4, 29]
        _deim("deim_l", "l", (2.5e-5, 5e-4, 1.25e-4), (58, 50, 29, 8), 4, 0.5),
        # policy epochs [4, 29, 50], mixup epochs [4, 29]
        _deim(
            "deim_x", "x", (5e-6, 5e-4, 1.25e-4), (58, 50, 29, 8), 3, 0.5, ema_restart_decay=0.9998
        ),
    ]


def _deim_obj2coco() -> Recipe:
    # From D-FINE's Objects365 X weights; D-FINE's ReLU decoder and frozen backbone BatchNorm
    # (the config sets them back), no lr or EMA warm-up. DEIM's own scheduler divides by its
    # warm-up length, 0 here, at the first step; here warm-up 0 means none (the lr is constant:
    # lr_gamma 1). Policy epochs [2, 12, 20], mixup epochs [2, 12].
    return _deim(
        "deim_obj2coco_x",
        "x",
        _X_LRS,
        (24, 20, 12000, 4),
        3,
        1.0,
        tune_from="dfine_x_obj365",
        family="dfine",
        **_FINETUNE,
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        *_coco(),
        *_obj365(),
        *_obj2coco(),
        *_custom(),
        *_obj2custom(),
        _synth(),
        *_deim_coco(),
        _deim_obj2coco(),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (see :data:`RECIPES`); a clear error lists the known names."""
    key = name.lower().replace("-", "_")
    if key not in RECIPES:
        raise InvalidArgumentError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[key]


def recipe_names() -> list[str]:
    """All recipe names, in definition order."""
    return list(RECIPES)
