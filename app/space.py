"""What the app starts on when no model is named: on Hugging Face Spaces, an official COCO model.

The Space's ``README.md`` front matter preloads :data:`SPACE_MODEL` into the Hub cache when the
Space is built (``preload_from_hub``). On Spaces (``SPACE_ID`` set) with that copy in the cache,
:func:`startup_model` returns its folder and the app starts on it; anywhere else, or when the
copy is missing or incomplete, it returns None and the app starts on the bundled demo model.
Either way one log line says which and why. The cache is only read: never a request to the Hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dfine import hub

SPACE_MODEL = "ustc-community/dfine-small-coco"
"""D-FINE-S, COCO (AP 48.5; 10 M parameters, 41.5 MB): the photo examples' objects at a speed
a CPU Space serves; the same id as in the README's ``preload_from_hub``."""


def _say(line: str) -> None:
    """The one start-up line, on stderr (the Space's log)."""
    print(f"dfine app: {line}", file=sys.stderr)


def startup_model() -> Path | None:
    """The folder of the preloaded :data:`SPACE_MODEL` when running on Spaces with it in the
    Hub cache, else None (the bundled demo model); logs one line saying which and why."""
    fallback = "the app starts on the bundled demo model"
    if not os.environ.get("SPACE_ID"):
        _say(f"not on Hugging Face Spaces (SPACE_ID is unset): {fallback}")
        return None
    try:
        folder = hub.snapshot(SPACE_MODEL, local_only=True)
    except hub.HubError as e:  # huggingface_hub itself comes with gradio
        _say(
            f"{SPACE_MODEL} is not in the Hugging Face cache ({type(e).__name__}; README.md's "
            f"preload_from_hub puts it there when the Space is built): {fallback}"
        )
        return None
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        _say(
            f"the cached copy of {SPACE_MODEL} in {folder} lacks config.json or weights: {fallback}"
        )
        return None
    _say(f"on Hugging Face Spaces: the app starts on {SPACE_MODEL} (cached in {folder})")
    return folder
