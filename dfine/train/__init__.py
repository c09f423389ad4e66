"""Training and evaluation of D-FINE: the reference recipes, AdamW parameter groups, warm-up
and step schedules, EMA, AMP, gradient clipping, atomic checkpoints with exact resume,
fine-tuning across class counts, DDP via ``torchrun`` and COCO mAP.

Heavy parts are imported lazily: ``import dfine.train`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfine._lazy import lazy_package

if TYPE_CHECKING:
    from dfine.train.ema import ModelEMA
    from dfine.train.optim import build_optimizer, build_param_groups, describe_param_groups
    from dfine.train.recipes import RECIPES, ParamGroup, Recipe, get_recipe, recipe_names
    from dfine.train.schedule import (
        DEIMFlatCosine,
        FlatCosine,
        LinearWarmup,
        WarmupMultiStep,
        build_schedule,
    )
    from dfine.train.trainer import NonFiniteLossError, Trainer, TrainOptions
    from dfine.train.tune import TuneReport, load_pretrained

_EXPORTS = {
    "ModelEMA": "ema",
    "build_optimizer": "optim",
    "build_param_groups": "optim",
    "describe_param_groups": "optim",
    "RECIPES": "recipes",
    "ParamGroup": "recipes",
    "Recipe": "recipes",
    "get_recipe": "recipes",
    "recipe_names": "recipes",
    "DEIMFlatCosine": "schedule",
    "FlatCosine": "schedule",
    "LinearWarmup": "schedule",
    "WarmupMultiStep": "schedule",
    "build_schedule": "schedule",
    "NonFiniteLossError": "trainer",
    "Trainer": "trainer",
    "TrainOptions": "trainer",
    "TuneReport": "tune",
    "load_pretrained": "tune",
}
__all__ = [
    "RECIPES",
    "DEIMFlatCosine",
    "FlatCosine",
    "LinearWarmup",
    "ModelEMA",
    "NonFiniteLossError",
    "ParamGroup",
    "Recipe",
    "TrainOptions",
    "Trainer",
    "TuneReport",
    "WarmupMultiStep",
    "build_optimizer",
    "build_param_groups",
    "build_schedule",
    "describe_param_groups",
    "get_recipe",
    "load_pretrained",
    "recipe_names",
]
lazy_package(__name__, _EXPORTS)
