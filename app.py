"""Hugging Face Spaces entry point: ``python app.py`` serves the dfine app.

Works offline on a fresh clone: the default model is bundled (assets/dfine_n_synth.safetensors;
the parity fixture in tests/fixtures if that file is missing). ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT`` choose the address (default 127.0.0.1:7860; Spaces sets 0.0.0.0);
``DFINE_APP_MODEL`` or ``--model`` (a checkpoint path or a zoo name such as ``dfine_s_coco``,
downloaded once into ``DFINE_HOME``) replaces the default model.
"""

from __future__ import annotations

import argparse
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, works offline

import gradio as gr

from app import build_demo, launch_options
from app.examples import photo_examples, synth_examples


def create_demo(model_path: str | None = None) -> gr.Blocks:
    """The app with its queue: two requests run at once, at most 20 wait (others are told
    the app is busy)."""
    demo = build_demo(model_path)
    demo.queue(default_concurrency_limit=2, max_size=20)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the D-FINE explorer (Gradio).")
    parser.add_argument(
        "--model",
        default=os.environ.get("DFINE_APP_MODEL"),
        help="default model: a checkpoint path or a zoo name (default: the bundled demo model)",
    )
    args = parser.parse_args(argv)
    demo = create_demo(args.model)
    # answer the first click on each bundled example from the cache (about 1 s, off the
    # request path; an error there is printed and leaves those clicks to compute as usual)
    examples = [*photo_examples(), *synth_examples()]
    threading.Thread(target=demo.dfine_state.warm, args=(examples,), daemon=True).start()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(),
    )


if __name__ == "__main__":
    main()
