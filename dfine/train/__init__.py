"""Training and evaluation of D-FINE: the reference recipes, AdamW parameter groups, warm-up
and step schedules, EMA, AMP, gradient clipping, atomic checkpoints with exact resume,
fine-tuning across class counts, DDP via ``torchrun`` and COCO mAP.

Heavy parts are imported lazily: ``import dfine.train`` is cheap.
"""

from dfine.train.ema import ModelEMA
from dfine.train.optim import build_optimizer, build_param_groups, describe_param_groups
from dfine.train.recipes import RECIPES, ParamGroup, Recipe, get_recipe, recipe_names
from dfine.train.schedule import FlatCosine, LinearWarmup, WarmupMultiStep, build_schedule
from dfine.train.trainer import NonFiniteLossError, Trainer, TrainOptions
from dfine.train.tune import TuneReport, load_pretrained

__all__ = [
    "RECIPES",
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
