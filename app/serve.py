"""Serve the app: what ``python app.py`` (Hugging Face Spaces) and ``dfine app`` both run."""

from __future__ import annotations

import os
import sys
import threading

import gradio as gr

from app.examples import photo_examples, synth_examples
from app.ui import build_demo, launch_options
from dfine.errors import DFineError, error_text


def create_demo(model_path: str | None = None) -> gr.Blocks:
    """The app with its queue: two requests run at once, at most 20 wait (others are told
    the app is busy)."""
    demo = build_demo(model_path)
    demo.queue(default_concurrency_limit=2, max_size=20)
    return demo


def serve(
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    warm: bool = True,
) -> None:
    """Build the app and serve it until interrupted. ``host``/``port`` default to
    ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``, else 127.0.0.1:7860."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, works offline
    try:
        demo = create_demo(model_path)
    except DFineError as e:  # a bad --model: one line, exit status 2 (as every dfine command)
        print(f"error: {error_text(e)}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if warm:
        # answer the first click on each bundled example from the cache (about 1 s, off the
        # request path; an error there is printed and leaves those clicks to compute as usual)
        examples = [*photo_examples(), *synth_examples()]
        threading.Thread(target=demo.dfine_state.warm, args=(examples,), daemon=True).start()
    demo.launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(),
    )
