"""dfine: the D-FINE real-time object detector in PyTorch."""

from dfine.config import SIZES, ModelConfig, get_config
from dfine.model import DFINE, build_model
from dfine.nn.decoder import DecoderTrace

__all__ = ["DFINE", "SIZES", "DecoderTrace", "ModelConfig", "build_model", "get_config"]
__version__ = "0.1.0"
