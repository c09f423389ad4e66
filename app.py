"""Hugging Face Spaces entry point: ``python app.py`` serves the dfine app.

Works offline on a fresh clone: the default model is bundled (assets/dfine_n_synth.safetensors;
the parity fixture in tests/fixtures if that file is missing). ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT`` choose the address (default 127.0.0.1:7860; Spaces sets 0.0.0.0);
``DFINE_APP_MODEL`` or ``--model`` (a checkpoint path or a zoo name such as ``dfine_s_coco``,
downloaded once into ``DFINE_HOME``) replaces the default model. An installed package serves
the same app with ``dfine app [--model W] [--port P]``. On Hugging Face Spaces (``SPACE_ID``
set) with no model named, it starts on the official COCO model that README.md's
``preload_from_hub`` put in the Hub cache (:mod:`app.space`), when that copy is there.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, works offline

from app.serve import create_demo, serve
from app.space import startup_model

__all__ = ["create_demo", "main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the D-FINE explorer (Gradio).")
    parser.add_argument(
        "--model",
        default=os.environ.get("DFINE_APP_MODEL"),
        help="default model: a .pth/.safetensors checkpoint, a Hugging Face folder or a zoo name "
        "(default: the bundled demo model; on Spaces the preloaded COCO model)",
    )
    args = parser.parse_args(argv)
    model = args.model or startup_model()
    serve(str(model) if model else None)


if __name__ == "__main__":
    main()
