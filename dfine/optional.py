"""Which optional parts this installation has, found once without importing them.

``dfine --help`` lists them, the app offers only what it can do, and code that needs an absent
one raises :func:`require`'s :class:`~dfine.errors.MissingDependencyError` (one line naming the
package to install).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

from dfine.errors import missing


@dataclass(frozen=True)
class Part:
    """An optional package: its import name, what to ``pip install`` and what it enables."""

    module: str
    package: str
    enables: str


PARTS: dict[str, Part] = {
    p.module: p
    for p in (
        Part("onnx", "onnx", "ONNX export (dfine export; the graphs the other backends run)"),
        Part("onnxruntime", "onnxruntime", "ONNX Runtime backend, export parity check"),
        Part("openvino", "openvino", "OpenVINO backend, f32/bf16/int8 OpenVINO exports"),
        Part("nncf", "nncf", "INT8 export (calibrated quantization)"),
        Part("tensorrt", "tensorrt", "TensorRT backend (CUDA GPU)"),
        Part("supervision", "supervision", "Detections.to_supervision(), video tracking"),
        Part("trackers", "trackers", "video tracking (ByteTrack)"),
        Part("cv2", "opencv-python-headless", "video reading and writing"),
    )
}
"""The optional parts, by import name."""


@functools.cache
def available(module: str) -> bool:
    """Whether the optional ``module`` (a key of :data:`PARTS`) is installed; checked once,
    without importing it."""
    if module not in PARTS:
        raise KeyError(f"{module!r} is not one of dfine's optional parts: {', '.join(PARTS)}")
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken installation counts as absent
        return False


def require(module: str, feature: str) -> None:
    """Raise :class:`~dfine.errors.MissingDependencyError` for ``feature`` when ``module`` is
    absent."""
    if not available(module):
        raise missing(feature, PARTS[module].package)


def summary() -> str:
    """Lines for ``dfine --help``: what is installed, what is not and how to get it."""
    have = [p for p in PARTS.values() if available(p.module)]
    absent = [p for p in PARTS.values() if not available(p.module)]
    lines = ["optional parts:"]
    lines += [f"  {p.package:<24} installed      {p.enables}" for p in have]
    lines += [
        f"  {p.package:<24} not installed  {p.enables} (pip install {p.package})" for p in absent
    ]
    return "\n".join(lines)
