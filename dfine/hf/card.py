"""A model folder for the Hugging Face Hub: :func:`dfine.hf.save_hf_checkpoint`'s
``config.json`` and ``model.safetensors``, plus ``preprocessor_config.json`` (transformers'
``RTDetrImageProcessor`` at the model's input size, no mean/std normalization, as D-FINE
feeds images) and a model card ``README.md`` whose front matter carries the Hub's metadata
(license, library, pipeline tag, datasets, the COCO AP when known).

``transformers.DFineForObjectDetection.from_pretrained(folder)`` reads it; so does
:func:`dfine.load_model` (and, once uploaded, ``dfine.load_model("owner/name")``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dfine.coco import COCO_CLASSES
from dfine.files import atomic_write
from dfine.hf.files import PREPROCESSOR_NAME, save_hf_checkpoint

CARD_NAME = "README.md"


def preprocessor_config(input_size: tuple[int, int]) -> dict:
    """``preprocessor_config.json`` for transformers: resize to ``input_size`` (h, w), scale to
    [0, 1], no normalization, COCO-style boxes."""
    h, w = input_size
    return {
        "image_processor_type": "RTDetrImageProcessor",
        "do_resize": True,
        "size": {"height": int(h), "width": int(w)},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "do_pad": False,
        "do_convert_annotations": True,
        "format": "coco_detection",
    }


def model_card(model, name: str, ap: float | None = None) -> str:
    """The ``README.md`` of an exported model (a :class:`dfine.DFINE`) called ``name``."""
    cfg = model.config
    coco = model.class_names == COCO_CLASSES
    family = "DEIM-D-FINE" if cfg.family == "deim" else "D-FINE"
    front = [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: object-detection",
        "tags:",
        "- object-detection",
        "- d-fine",
        *(["- deim"] if cfg.family == "deim" else []),
        *(["datasets:", "- coco"] if coco else []),
    ]
    if ap is not None:
        front += [
            "model-index:",
            f"- name: {name}",
            "  results:",
            "  - task:",
            "      type: object-detection",
            "    dataset:",
            "      name: COCO val2017",
            "      type: coco",
            "    metrics:",
            "    - type: mAP",
            f"      value: {ap / 100:.3f}",
            "      name: AP@[.5:.95]",
        ]
    front.append("---")
    h, w = cfg.eval_size
    body = [
        f"# {name}",
        "",
        f"{family}-{cfg.size.upper()} ({cfg.num_classes} classes, input {h}x{w}), exported by "
        "[dfine](https://github.com/Peterande/D-FINE) in the transformers `d_fine` layout.",
        *(["", f"COCO val2017 AP: {ap:g}."] if ap is not None else []),
        "",
        "```python",
        "import dfine",
        f'detector = dfine.Detector("{name}")  # or a local folder',
        'detections = detector("image.jpg")',
        "```",
        "",
        "```python",
        "from transformers import AutoImageProcessor, DFineForObjectDetection",
        f'model = DFineForObjectDetection.from_pretrained("{name}")',
        "```",
    ]
    if cfg.family == "deim":
        body += [
            "",
            "This is a DEIM-D-FINE model: SiLU in every decoder MLP (`decoder_activation_function:"
            " silu`). transformers applies that activation to the decoder FFNs only and keeps"
            " ReLU in its box heads, query-position head and LQE, so its scores differ from the"
            " model's own; `dfine` runs it exactly.",
        ]
    return "\n".join([*front, "", *body]) + "\n"


def export_hf(
    model, folder: str | os.PathLike, *, name: str | None = None, ap: float | None = None
) -> Path:
    """Write ``model`` to ``folder`` for the Hub: ``config.json``, ``model.safetensors``,
    ``preprocessor_config.json`` and ``README.md`` (``name``: the Hub id or title it shows,
    default the folder's name; ``ap``: COCO AP in percent, when known)."""
    folder = save_hf_checkpoint(model, folder)
    pre = json.dumps(preprocessor_config(model.config.eval_size), indent=2) + "\n"
    atomic_write(folder / PREPROCESSOR_NAME, lambda tmp: tmp.write_text(pre, encoding="utf-8"))
    card = model_card(model, name or folder.resolve().name, ap)
    atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    return folder


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hub repository ``repo_id`` (created when missing;
    needs `hf auth login`). Returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return str(url)
