"""The dfine Gradio app: detections, layer-by-layer refinement, FDR edge distributions, W(n)
and GO-LSD self-distillation for any image, every tab also a named API endpoint.

>>> from app import build_demo, launch_options
>>> demo = build_demo()                     # doctest: +SKIP
>>> demo.queue(default_concurrency_limit=2, max_size=20).launch(**launch_options())  # doctest: +SKIP

``app.py`` at the repository root does exactly this (the Hugging Face Spaces entry point).
"""

from __future__ import annotations

from dfine.errors import missing

try:
    import gradio  # noqa: F401  (fail early, naming the package)
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing("the dfine app", "gradio", "pip install 'dfine[app]'") from err

from app.ui import build_demo, launch_options

__all__ = ["build_demo", "launch_options"]
