"""The example images the app offers, and how the synthetic ones were made.

``assets/examples/*.jpg`` are photos (see ``assets/examples/SOURCES.md``);
``assets/examples/synth/`` holds four validation images of the synthetic shapes dataset with
their COCO annotations (``instances_val.json``), the ground truth of the GO-LSD tab. They were
written by :func:`make_synth_examples` (``python -m app.examples``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from app.paths import EXAMPLES_DIR, SYNTH_ANNOTATIONS, SYNTH_DIR
from dfine.data.synth import make_synthetic_dataset

SYNTH_ARGS = {"num_train": 0, "num_val": 4, "image_size": (320, 320), "seed": 123}


def photo_examples() -> list[str]:
    """The bundled photos, by name."""
    return [str(p) for p in sorted(EXAMPLES_DIR.glob("*.jpg"))]


def synth_examples() -> list[str]:
    """The synthetic validation images that have ground truth."""
    return [str(p) for p in sorted(SYNTH_DIR.glob("*.jpg"))]


def make_synth_examples(dest: Path = SYNTH_DIR) -> list[Path]:
    """Regenerate the synthetic examples (deterministic: same arguments, same bytes)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_synthetic_dataset(tmp, **SYNTH_ARGS)
        written = []
        for image in sorted(Path(paths["val_images"]).glob("*.jpg")):
            written.append(Path(shutil.copy2(image, dest / image.name)))
        target = dest / SYNTH_ANNOTATIONS.name
        written.append(Path(shutil.copy2(paths["val_annotations"], target)))
    return written


if __name__ == "__main__":
    for path in make_synth_examples():
        print(path)
