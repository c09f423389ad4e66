"""Helpers shared by the tests: the bundled demo model's and first synthetic example's paths, the app launched on 127.0.0.1,
its endpoints called, small checkpoints and splits made on the fly."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "dfine_n_synth.safetensors"  # the bundled demo model
SYNTH_EXAMPLE = ROOT / "assets" / "examples" / "synth" / "000001.jpg"  # 6 annotated shapes


# a browser script: every text element of every visible plotly figure on the page, none clipped
# by its figure, none overlapping another (titles, axis titles, subplot titles, notes); returns
# [{id, problems}] per figure
PLOTLY_TEXT_PROBLEMS = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.offsetParent)
  .map(plot => {
    const svg = plot.querySelector('svg.main-svg').getBoundingClientRect();
    const items = Array.from(plot.querySelectorAll(
      '.gtitle, .g-xtitle text, .g-ytitle text, .annotation-text, .g-x2title text'))
      .map(t => ({text: t.textContent, r: t.getBoundingClientRect()}))
      .filter(t => t.text.trim() && t.r.width > 0);
    const problems = [];
    for (const t of items) {
      if (t.r.left < svg.left - 1 || t.r.right > svg.right + 1 || t.r.top < svg.top - 1
          || t.r.bottom > svg.bottom + 1) problems.push('clipped: ' + t.text);
    }
    for (let i = 0; i < items.length; i++) for (let j = i + 1; j < items.length; j++) {
      const a = items[i].r, b = items[j].r;
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 2 && h > 2) problems.push('overlap: ' + items[i].text + ' | ' + items[j].text);
    }
    return {id: plot.closest('[id]')?.id, problems};
  })
"""


def app_state(tmp: Path, weights: Path | None = None):
    """A fresh ``AppState`` whose default model is ``weights`` (the bundled demo model), with
    uploads and outputs under ``tmp`` and empty caches."""
    from app.files import OutputDir
    from app.ground_truth import AnnotatedExamples
    from app.models import ModelStore
    from app.paths import BUNDLED_WEIGHTS
    from app.results import ResultCache
    from app.state import AppState

    store = ModelStore(weights or BUNDLED_WEIGHTS, upload_dir=tmp / "uploads")
    return AppState(store, ResultCache(), AnnotatedExamples(), OutputDir(tmp / "out"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(path: str, module_name: str):
    """The repository's script ``path`` (relative to the root, e.g. ``scripts/ablation.py``)
    as a module named ``module_name``: scripts are files, not packages."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_app_py(module_name: str = "dfine_app_main"):
    """The repository's ``app.py`` as a module (it is a script, not a package)."""
    return load_script("app.py", module_name)


@contextmanager
def serve(demo) -> Iterator[str]:
    """Launch ``demo`` on 127.0.0.1 (free port, no thread lock); yield its URL; close it."""
    from app import launch_options

    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        **launch_options(),
    )
    try:
        yield url
    finally:
        demo.close()


def call(client, *args, api_name: str, timeout: float):
    """``client.predict`` with a bound on the wait."""
    return client.submit(*args, api_name=api_name).result(timeout=timeout)


def ablated_checkpoint(path: Path, ablation: str) -> Path:
    """A random-init D-FINE-N of the ``ablation`` variant with the demo model's 8 classes,
    saved to ``path`` (seeded: the same weights every time)."""
    import torch

    import dfine
    from app.paths import BUNDLED_WEIGHTS

    torch.manual_seed(0)
    names = dfine.load_model(BUNDLED_WEIGHTS).class_names
    model = dfine.build_model("n", num_classes=8, class_names=names, ablation=ablation)
    return dfine.save_model(model.eval(), path)


def synth_split_zip(path: Path) -> Path:
    """The 4 annotated synthetic examples as a COCO-layout zip (a fast Evaluate split)."""
    import json
    import zipfile

    from app.paths import SYNTH_DIR

    coco = json.loads((SYNTH_DIR / "instances_val.json").read_text())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("annotations/instances_val.json", json.dumps(coco))
        for im in coco["images"]:
            zf.write(SYNTH_DIR / im["file_name"], f"val/{im['file_name']}")
    return path
