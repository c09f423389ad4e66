"""dfine: the D-FINE real-time object detector in PyTorch.

The public names below are imported on first use (:mod:`dfine._lazy`), so ``import dfine``
and ``dfine --help`` do not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfine._lazy import lazy_package

if TYPE_CHECKING:
    from dfine.checkpoint import CheckpointError, load_model, save_model
    from dfine.config import SIZES, ModelConfig, get_config
    from dfine.detections import Detections
    from dfine.loss import build_criterion
    from dfine.model import DFINE, build_model
    from dfine.nn.decoder import DecoderTrace
    from dfine.postprocess import postprocess
    from dfine.predict import Detector

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "SIZES": "config",
    "ModelConfig": "config",
    "get_config": "config",
    "Detections": "detections",
    "build_criterion": "loss",
    "DFINE": "model",
    "build_model": "model",
    "DecoderTrace": "nn.decoder",
    "postprocess": "postprocess",
    "Detector": "predict",
}
__all__ = [
    "DFINE",
    "SIZES",
    "CheckpointError",
    "DecoderTrace",
    "Detections",
    "Detector",
    "ModelConfig",
    "build_criterion",
    "build_model",
    "get_config",
    "load_model",
    "postprocess",
    "save_model",
]
__version__ = "0.1.0"
lazy_package(__name__, _EXPORTS)
