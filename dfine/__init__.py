"""dfine: the D-FINE real-time object detector in PyTorch."""

from dfine.checkpoint import CheckpointError, load_model, save_model
from dfine.config import SIZES, ModelConfig, get_config
from dfine.detections import Detections
from dfine.loss import build_criterion
from dfine.model import DFINE, build_model
from dfine.nn.decoder import DecoderTrace
from dfine.postprocess import postprocess
from dfine.predict import Detector

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
