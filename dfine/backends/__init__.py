"""Inference backends behind one interface (:class:`dfine.backends.base.Backend`).

``torch`` (eager or deployed), ``onnxruntime`` (CPU / CUDA), ``openvino`` (CPU) and
``tensorrt`` (CUDA, FP32/FP16 with a precision guard). Optional packages are imported only
when their backend is created, with an error that names what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfine.backends.base import Backend, check_budget, onnx_for
from dfine.backends.onnxruntime import OnnxRuntimeBackend
from dfine.backends.openvino import OpenVINOBackend
from dfine.backends.tensorrt import TensorRTBackend
from dfine.backends.torch_backend import TorchBackend
from dfine.export import read_metadata
from dfine.model import DFINE

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


def create_backend(
    name: str,
    weights: str | os.PathLike,
    *,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
    **options,
) -> Backend:
    """A backend by name. ``weights``: checkpoint, zoo name, DFINE model (torch only) or
    ``.onnx`` file (the non-torch backends export checkpoints to ONNX once, cached).
    ``decoder_layers`` / ``num_queries``: the inference budget
    (:meth:`dfine.model.DFINE.set_decoder_budget`); an exported file must have been exported
    with the one asked for."""
    if name == "torch":
        return TorchBackend(
            weights, decoder_layers=decoder_layers, num_queries=num_queries, **options
        )
    budget = decoder_layers is not None or num_queries is not None
    if budget and not isinstance(weights, DFINE) and Path(weights).suffix in (".onnx", ".xml"):
        check_budget(Path(weights), read_metadata(weights), decoder_layers, num_queries)
    elif budget and not isinstance(weights, DFINE):
        weights = onnx_for(weights, options.get("size"), decoder_layers, num_queries)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(weights, **options)
    if name == "openvino":
        return OpenVINOBackend(weights, **options)
    if name == "tensorrt":
        return TensorRTBackend(weights, **options)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TensorRTBackend",
    "TorchBackend",
    "create_backend",
]
