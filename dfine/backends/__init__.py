"""Inference backends behind one interface (:class:`dfine.backends.base.Backend`).

``torch`` (eager or deployed), ``onnxruntime`` (CPU / CUDA), ``openvino`` (CPU) and
``tensorrt`` (CUDA, FP32/FP16 with a precision guard). Optional packages are imported only
when their backend is created, with an error that names what to install. The names below are
imported on first use (:mod:`dfine._lazy`): :data:`BACKENDS` costs no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfine._lazy import lazy_package

if TYPE_CHECKING:
    from dfine.backends.base import Backend
    from dfine.backends.create import create_backend
    from dfine.backends.onnxruntime import OnnxRuntimeBackend
    from dfine.backends.openvino import OpenVINOBackend
    from dfine.backends.tensorrt import TensorRTBackend
    from dfine.backends.torch_backend import TorchBackend

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
"""The inference runtimes, by the name ``--backend`` and ``Detector(backend=)`` take."""

FASTEST = "fastest"
"""The backend name that means "the fastest runtime installed here"
(:func:`dfine.sources.fastest_backend`)."""

_EXPORTS = {
    "Backend": "base",
    "create_backend": "create",
    "OnnxRuntimeBackend": "onnxruntime",
    "OpenVINOBackend": "openvino",
    "TensorRTBackend": "tensorrt",
    "TorchBackend": "torch_backend",
}
__all__ = [
    "BACKENDS",
    "FASTEST",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TensorRTBackend",
    "TorchBackend",
    "create_backend",
]
lazy_package(__name__, _EXPORTS)
