"""Where the app finds its files, and the few constants every module shares."""

from __future__ import annotations

from pathlib import Path

from dfine.resources import DEMO_WEIGHTS_NAME, asset_path

REPO = Path(__file__).resolve().parents[1]
"""The source checkout (only the test fixture below is looked up in it)."""
ASSETS = asset_path()
"""The bundled files (``dfine/assets`` package data; the repository's ``assets/``)."""
BUNDLED_WEIGHTS = ASSETS / DEMO_WEIGHTS_NAME
"""The demo model trained on the synthetic shapes dataset; used as soon as the file exists."""
FIXTURE_WEIGHTS = REPO / "tests" / "fixtures" / "dfine_n_perturbed_random_official.pth"
"""Fallback while the demo weights are not bundled: a randomly initialised parity fixture."""
EXAMPLES_DIR = ASSETS / "examples"
SYNTH_DIR = EXAMPLES_DIR / "synth"
SYNTH_ANNOTATIONS = SYNTH_DIR / "instances_val.json"

FIXTURE_BANNER = (
    "Demo weights not bundled yet: this is a randomly initialised parity fixture — "
    "its detections are meaningless"
)
FIXTURE_THRESHOLD = 0.02
"""The fixture's scores are all about 0.05: a threshold that lets some of them through."""
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_DETECTIONS = 25
INPUT_SIZES = tuple(range(256, 801, 32))
"""Network input sizes offered (square, pixels; multiples of 32). From 256: the smallest size
``dfine train`` and ``scripts/ablation.py`` train at, so such a model starts at its own size."""
MAX_STAGES = 8
"""Stages of the largest official model (encoder b0, pre-head, 6 decoder layers)."""
