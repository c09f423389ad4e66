"""The Space starts on a real model (issue 23), without the network.

On Spaces (``SPACE_ID`` set) with README.md's ``preload_from_hub`` copy of
:data:`app.space.SPACE_MODEL` in the Hub cache, ``app.py`` starts on it and the Detect tab shows
the photo examples first; anywhere else, or without that copy, it starts on the bundled demo
model. The cache (``HF_HUB_CACHE`` in ``tmp_path``) holds a random-init D-FINE-N with the COCO
classes saved in the transformers layout under the official repository's name. ZeroGPU: a fake
``spaces`` module records what ``spaces.GPU`` wraps and calls.
"""

from __future__ import annotations

import importlib
import pickle
import socket
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
import yaml

import dfine
from app import gpu
from app.examples import photo_examples, synth_examples
from app.space import SPACE_MODEL
from dfine.coco import COCO_CLASSES
from dfine.hf import save_hf_checkpoint
from tests.app_util import app_state, load_app_py

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
PHOTOS, SYNTH = "Photos", "Synthetic shapes (with ground truth; see the GO-LSD tab)"


@pytest.fixture(scope="module")
def coco_model() -> dfine.DFINE:
    torch.manual_seed(0)
    return dfine.build_model("n", num_classes=80, class_names=COCO_CLASSES).eval()


@pytest.fixture
def on_spaces(tmp_path, monkeypatch) -> Path:
    """``SPACE_ID`` set, an empty Hub cache in ``tmp_path``, no model named, and any attempt to
    open a network connection fails the test."""
    monkeypatch.setenv("SPACE_ID", "someone/dfine-explorer")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DFINE_APP_MODEL", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"start-up opened a connection: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "hf-cache"


def _preload(cache: Path, model: dfine.DFINE) -> Path:
    """What ``preload_from_hub`` leaves in the Hub cache: the snapshot and ``refs/main``."""
    repo = cache / f"models--{SPACE_MODEL.replace('/', '--')}"
    snapshot = save_hf_checkpoint(model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def _started_on(monkeypatch) -> str | None:
    """The default model ``python app.py`` passes to ``serve`` (not serving it)."""
    module = load_app_py("dfine_app_space")
    seen = []
    monkeypatch.setattr(module, "serve", seen.append)
    module.main([])
    return seen[0]


def _galleries(demo: gr.Blocks) -> list[str]:
    """The labels of the Detect tab's example galleries, in the order shown."""
    labels = [getattr(b, "label", None) for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    return [label for label in labels if label in (PHOTOS, SYNTH)]


def test_the_front_matter_preloads_the_space_model():
    front = yaml.safe_load((ROOT / "README.md").read_text().split("---\n")[1])
    repo, files = front["preload_from_hub"][0].split()
    assert repo == SPACE_MODEL
    assert {"config.json", "model.safetensors"} <= set(files.split(","))


def test_on_spaces_the_app_starts_on_the_cached_coco_model_with_photos_first(
    on_spaces, coco_model, monkeypatch, tmp_path, capsys
):
    snapshot = _preload(on_spaces, coco_model)
    chosen = _started_on(monkeypatch)
    assert Path(chosen) == snapshot
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dfine app: on Hugging Face Spaces: the app starts on {SPACE_MODEL} (cached in {snapshot})"
    ]
    from app.ui import build_demo

    demo = build_demo(chosen)
    default = demo.dfine_state.store.get(None)
    assert default.entry.label == f"Default: {SPACE_MODEL}"
    assert default.class_names == tuple(COCO_CLASSES) and not default.is_synthetic
    assert default.entry.source == str(snapshot)
    ours, ref = default.model.state_dict(), coco_model.state_dict()
    decoder = [k for k in ref if k.startswith("decoder.")]  # not fused by deploy()
    assert decoder and all(torch.equal(ours[k], ref[k]) for k in decoder)
    assert _galleries(demo) == [PHOTOS, SYNTH]
    assert photo_examples() and synth_examples()


@pytest.mark.parametrize("case", ["no copy", "incomplete copy", "not on spaces"])
def test_otherwise_the_app_starts_on_the_bundled_demo_model(
    case, on_spaces, coco_model, monkeypatch, capsys
):
    if case == "incomplete copy":  # preloaded with a file list that left out the weights
        (_preload(on_spaces, coco_model) / "model.safetensors").unlink()
    if case == "not on spaces":
        _preload(on_spaces, coco_model)
        monkeypatch.delenv("SPACE_ID")
    assert _started_on(monkeypatch) is None
    err = capsys.readouterr().err.strip().splitlines()
    why = {
        "no copy": f"{SPACE_MODEL} is not in the Hugging Face cache",
        "incomplete copy": f"the cached copy of {SPACE_MODEL} in ",
        "not on spaces": "not on Hugging Face Spaces (SPACE_ID is unset)",
    }[case]
    assert len(err) == 1 and err[0].startswith(f"dfine app: {why}"), err
    assert err[0].endswith("the app starts on the bundled demo model")


def test_a_named_model_wins_over_the_space_model(on_spaces, coco_model, monkeypatch, capsys):
    _preload(on_spaces, coco_model)
    monkeypatch.setenv("DFINE_APP_MODEL", "dfine_s_coco")
    assert _started_on(monkeypatch) == "dfine_s_coco"
    assert capsys.readouterr().err == ""


def test_the_demo_model_shows_the_synthetic_examples_first():
    from app.ui import build_demo

    demo = build_demo(None)
    assert demo.dfine_state.store.get(None).is_synthetic
    assert _galleries(demo) == [SYNTH, PHOTOS]


def _fake_spaces(record: list[tuple[str, str]]) -> types.ModuleType:
    """A stand-in for the ``spaces`` package: ``GPU`` records what it wraps and each call, and
    pickles the arguments and result as ZeroGPU does to reach its worker process."""

    def GPU(fn):
        record.append(("wrapped", fn.__name__))

        def run(*args, **kwargs):
            record.append(("called", fn.__name__))
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            return pickle.loads(pickle.dumps(fn(*args, **kwargs)))

        return run

    return types.SimpleNamespace(GPU=GPU)


def test_zerogpu_runs_the_forward_passes_under_spaces_gpu(tmp_path, monkeypatch):
    from app.state import SharedInputs
    from app.tabs.video import VideoTab

    record: list[tuple[str, str]] = []
    monkeypatch.setitem(sys.modules, "spaces", _fake_spaces(record))
    try:
        importlib.reload(gpu)  # what importing the app on a Space does
        assert record == [("wrapped", "trace"), ("wrapped", "detect")]
        state = app_state(tmp_path)
        photo = photo_examples()[0]
        sel = state.select(SharedInputs(photo, 0.5, 320, None, 10))
        assert record[2:] == [("called", "trace")] and not sel.cached
        state.select(SharedInputs(photo, 0.3, 320, None, 10))  # cached: no forward pass
        assert record[2:] == [("called", "trace")]
        frame = np.zeros((240, 320, 3), np.uint8)
        image, _, _ = VideoTab(state).webcam(frame, 0.5, 320, None)
        assert image.shape == (240, 320, 3) and record[3:] == [("called", "detect")]
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(gpu)


def test_without_spaces_the_decorator_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces raises ImportError

    def forward(x: int) -> int:
        return x + 1

    assert gpu.gpu(forward) is forward
