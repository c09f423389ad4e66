"""Create a backend by name (:data:`dfine.backends.BACKENDS`)."""

from __future__ import annotations

import os
from pathlib import Path

from dfine.backends import BACKENDS
from dfine.backends.base import Backend, check_budget, onnx_for
from dfine.backends.onnxruntime import OnnxRuntimeBackend
from dfine.backends.openvino import OpenVINOBackend
from dfine.backends.tensorrt import TensorRTBackend
from dfine.backends.torch_backend import TorchBackend
from dfine.errors import InvalidArgumentError
from dfine.export import read_metadata
from dfine.model import DFINE


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
    raise InvalidArgumentError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
