"""Which optional parts this installation has, found once without importing them.

``dfine --help`` lists them, the app offers only what it can do, and code that needs an absent
one raises :func:`require`'s :class:`~dfine.errors.MissingDependencyError` (one line naming the
package to install).

Chromium, a program rather than a package:

Static PNG/SVG figures (``dfine val --report``, the app's "Download the figure") go through
kaleido, which drives a Chromium-based browser. Nothing else needs one, so a machine without a
browser still writes every report (``metrics.json`` and the interactive ``index.html``); only
the PNG/SVG files are skipped, with one line that says why and how to get them.

:func:`chromium_path` decides, once per process:

- ``DFINE_CHROMIUM=none`` (or ``off``): there is no browser, whatever is installed (CI's
  fresh-machine run, or a user who wants no browser started);
- ``DFINE_CHROMIUM=/path/to/chrome`` (or a name on ``PATH``): that browser;
- otherwise where kaleido itself looks (its ``choreographer``: ``BROWSER_PATH``, the copy
  ``plotly_get_chrome`` downloads, then chrome/chromium/edge/brave on ``PATH`` and their usual
  install paths).

The figure export passes the path it found to kaleido, so the two can never disagree.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dfine.errors import MissingDependencyError, missing


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
    browser, why = _find()
    what = "static PNG/SVG figures (dfine val --report, the app's figure download)"
    if browser:
        lines.append(f"  {'Chromium':<24} found          {what}: {browser}")
    else:
        lines.append(f"  {'Chromium':<24} not found      {what} ({why}; {INSTALL})")
    return "\n".join(lines)


# Chromium (static PNG/SVG figures through kaleido)
ENV = "DFINE_CHROMIUM"
OFF = ("none", "off")
INSTALL = (
    "apt-get install chromium (or any Chrome), or run plotly_get_chrome for kaleido's own "
    f"copy; {ENV}=/path/to/chrome names one"
)


@functools.cache
def _find() -> tuple[str | None, str]:
    """(the browser's path or None, why there is none)."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None, f"{ENV}={setting} says there is none"
    if setting:
        found = shutil.which(setting)
        if found is None:
            return None, f"{ENV}={setting} is not an executable file"
        return found, ""
    try:
        from choreographer.browsers import Chromium  # kaleido's browser finder
    except ImportError:
        return None, "kaleido (and its choreographer) is not installed: pip install kaleido"
    found = Chromium.find_browser(skip_local=False)
    if found is None or not Path(found).is_file():
        return None, "no Chromium or Chrome was found"
    return str(found), ""


def chromium_path() -> str | None:
    """The Chromium (or Chrome) executable kaleido is to use, or None when there is none
    (``DFINE_CHROMIUM=none`` forces None). Looked up once per process."""
    return _find()[0]


def require_chromium(feature: str) -> str:
    """The browser's path, or :class:`~dfine.errors.MissingDependencyError` whose one line
    says that ``feature`` needs it, why none is used, and how to get one."""
    path, why = _find()
    if path is None:
        raise MissingDependencyError(feature, "Chromium", f"{why}; {INSTALL}")
    return path


def forget() -> None:
    """Look again on the next call (after ``DFINE_CHROMIUM`` changed; tests)."""
    _find.cache_clear()
