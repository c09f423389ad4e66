"""D-FINE losses: Hungarian matcher and the criterion (VFL, L1, GIoU, FGL, DDF with GO-LSD)."""

from dfine.loss.criterion import DFINECriterion, build_criterion
from dfine.loss.matcher import HungarianMatcher

__all__ = ["DFINECriterion", "HungarianMatcher", "build_criterion"]
