"""ZeroGPU: the app's forward passes run under ``spaces.GPU`` when the ``spaces`` package is
importable (Hugging Face installs it on Spaces; it is not a dependency of this project), and as
plain calls elsewhere. ZeroGPU runs a decorated function in a worker process, so its arguments
and results are pickled: a :class:`~dfine.Detector` and an image, detections and a trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np
import torch

import dfine
from dfine.detections import Detections
from dfine.nn.decoder import DecoderTrace
from dfine.sources import fastest_backend

P = ParamSpec("P")
R = TypeVar("R")


def gpu(fn: Callable[P, R]) -> Callable[P, R]:
    """``spaces.GPU(fn)`` when ``spaces`` is importable, else ``fn`` itself (decides once, when
    the decorated function is defined: ZeroGPU wants its functions known at start-up)."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def plain_backend(source: object) -> str:
    """The runtime of the app's plain detections (webcam, video without tracking analysis):
    the fastest installed (:func:`dfine.sources.fastest_backend`), but torch where ``spaces``
    is importable, whose decorated calls pickle the detector (a compiled OpenVINO or ONNX
    Runtime model cannot be pickled) and run it on ZeroGPU's GPU."""
    try:  # the same test as gpu()'s
        import spaces  # noqa: F401
    except ImportError:
        return fastest_backend(source)
    return "torch"


@gpu
def trace(
    detector: dfine.Detector, image: str | np.ndarray, threshold: float | None = None
) -> tuple[Detections, DecoderTrace, torch.Tensor]:
    """``detector.trace(image, threshold=threshold)``: detections, decoder trace, query ids."""
    return detector.trace(image, threshold=threshold)


@gpu
def detect(detector: dfine.Detector, image: np.ndarray, threshold: float) -> Detections:
    """``detector(image, threshold=threshold)``: the plain forward pass (no trace)."""
    return detector(image, threshold=threshold)
