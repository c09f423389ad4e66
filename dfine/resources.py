"""Files the library ships as package data (``dfine/assets``): the demo model and the example
images, found through :mod:`importlib.resources` so they resolve the same in a source checkout
and in an installed wheel.

In the repository ``dfine/assets`` is a link to the top-level ``assets/`` folder (the Hugging
Face Spaces layout); a wheel holds a copy of the files the library needs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dfine.errors import InputFileError

DEMO_WEIGHTS_NAME = "dfine_n_synth.safetensors"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class MissingAssetError(InputFileError):
    """A bundled file is absent: the installation is incomplete."""


def asset_path(*parts: str) -> Path:
    """Where a bundled file or folder is (``asset_path()``: the assets folder itself), whether
    or not it exists; links resolved."""
    return Path(str(resources.files("dfine").joinpath("assets", *parts))).resolve()


def asset(*parts: str) -> Path:
    """The path of a bundled file or folder, e.g. ``asset("examples", "coffee.jpg")``; a
    missing one raises :class:`MissingAssetError`."""
    path = asset_path(*parts)
    if not path.exists():
        raise MissingAssetError(
            f"bundled file {'/'.join(parts)} is missing from {path.parent}: the dfine "
            "installation is incomplete; reinstall it (pip install --force-reinstall dfine)"
        )
    return path


def demo_weights() -> Path:
    """The bundled D-FINE-N trained on the synthetic shapes (8 classes, 320x320)."""
    return asset(DEMO_WEIGHTS_NAME)


def examples_dir() -> Path:
    """The folder of bundled example photos (``synth/`` inside holds the synthetic ones)."""
    return asset("examples")


def example_photos() -> list[Path]:
    """The bundled example photos, sorted by name."""
    return sorted(p for p in examples_dir().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
