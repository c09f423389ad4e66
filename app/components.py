"""``raw_image``: a ``gr.Image`` input that hands the uploaded file to ``dfine.io.load_image``
untouched.

``gr.Image(type="filepath")`` opens every upload with PIL before the handler runs: a text file
named ``.jpg`` fails there with an unreadable error, and a decompression bomb is parsed by
gradio instead of being refused by our size limit. The component made here skips that step
for uploaded files, so one decoder (with its size limit, EXIF orientation and clear errors)
sees them all. It is a plain ``gr.Image`` with its ``preprocess`` replaced on the instance: a
subclass would make gradio write a ``.pyi`` stub next to this file at import time.
"""

from __future__ import annotations

import types
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData


def _preprocess_raw(self: gr.Image, payload: ImageData | None) -> str | None:
    """The uploaded file's path; pasted base64 data is written to a file by gradio first."""
    if payload is None:
        return None
    if payload.path is None or (payload.url or "").startswith("data:"):
        return gr.Image.preprocess(self, payload)
    return str(payload.path)


def raw_image(**kwargs: Any) -> gr.Image:
    """``gr.Image(type="filepath", **kwargs)`` whose value is the uploaded file itself."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.preprocess = types.MethodType(_preprocess_raw, image)  # type: ignore[method-assign]
    return image
