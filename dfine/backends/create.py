"""Create a backend by name (:data:`dfine.backends.BACKENDS`)."""

from __future__ import annotations

import os

from dfine.backends import BACKENDS
from dfine.backends.base import Backend
from dfine.backends.onnxruntime import OnnxRuntimeBackend
from dfine.backends.openvino import OpenVINOBackend
from dfine.backends.tensorrt import TensorRTBackend
from dfine.backends.torch_backend import TorchBackend
from dfine.errors import InvalidArgumentError


def create_backend(name: str, weights: str | os.PathLike, **options) -> Backend:
    """A backend by name. ``weights``: checkpoint, zoo name, DFINE model (torch only) or
    ``.onnx`` file (the non-torch backends export checkpoints to ONNX once, cached)."""
    if name == "torch":
        return TorchBackend(weights, **options)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(weights, **options)
    if name == "openvino":
        return OpenVINOBackend(weights, **options)
    if name == "tensorrt":
        return TensorRTBackend(weights, **options)
    raise InvalidArgumentError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
