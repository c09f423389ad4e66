"""Shared fixtures. Reference fixtures for the N model live in tests/fixtures (copied from
../shared/reference by scripts/make_test_fixtures.py); S tests read ../shared/reference when it
exists and skip otherwise.

Tests that need a Chromium carry the ``chromium`` marker (kaleido's static PNG/SVG) or the
``browser`` marker (Playwright): without one (:func:`dfine.optional.chromium_path`; CI's
fresh-machine run sets ``DFINE_CHROMIUM=none``) they are skipped with the reason, and
``-m "browser or chromium"`` selects exactly them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from dfine.errors import MissingDependencyError
from dfine.optional import require_chromium

FIXTURES = Path(__file__).parent / "fixtures"


def cpu_fixture(stem: Path) -> Path:
    """``stem`` (a recording for one kind of CPU, e.g. ``deim_steps.avx2``; see
    ``for_this_cpu`` in scripts/record_deim_loss_fixture.py) when it was recorded; otherwise
    the test skips, naming the recordings there are and the command that makes one."""
    if not Path(f"{stem}.json").exists():
        kind = stem.name.rsplit(".", 1)[0]
        have = sorted(p.name for p in stem.parent.glob(f"{kind}.*.json"))
        pytest.skip(
            f"{kind} is recorded for {have}, not for this CPU's kernels ({stem.name}): "
            "run scripts/record_deim_loss_fixture.py on it"
        )
    return stem


SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

torch.set_num_threads(2)

# dfine's own cache (zoo downloads, the ONNX exports that the non-torch backends and the app's
# fastest runtime make of a checkpoint): a folder of this test run, never the user's
# ~/.cache/dfine or their DFINE_HOME. Tests that need another set it themselves.
_TEST_HOME = tempfile.mkdtemp(prefix="dfine-test-home-")
os.environ["DFINE_HOME"] = _TEST_HOME


def pytest_unconfigure(config):
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _numerics_as_recorded():
    """Every test starts with the numerics the reference fixtures were recorded with (2
    threads, PyTorch's default kernels, denormals kept): a benchmark's thread count, a
    training run's deterministic kernels or a runtime's flush-to-zero from an earlier test in
    the same worker must not reorder the near-tied queries of a parity test."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    torch.set_flush_denormal(False)  # a runtime (OpenVINO's CPU plugin) may have set FTZ/DAZ
    yield


def reference_file(name: str) -> Path:
    """A reference fixture: tests/fixtures first, then ../shared/reference, else skip."""
    for base in (FIXTURES, SHARED_REFERENCE):
        if (base / name).exists():
            return base / name
    pytest.skip(
        f"reference fixture {name} not available (looked in {FIXTURES} and {SHARED_REFERENCE})"
    )


def load_tensors(name: str):
    return torch.load(reference_file(name), map_location="cpu", weights_only=True)


def pytest_collection_modifyitems(config, items):
    """Skip the tests that need a Chromium when there is none, saying why."""
    try:
        require_chromium("this test")
    except MissingDependencyError as err:
        skip = pytest.mark.skip(reason=str(err))
        for item in items:
            if item.get_closest_marker("chromium") or item.get_closest_marker("browser"):
                item.add_marker(skip)


@pytest.fixture
def no_chromium(monkeypatch):
    """A process without a browser (``DFINE_CHROMIUM=none``), whatever is installed."""
    from dfine import optional

    monkeypatch.setenv(optional.ENV, "none")
    optional.forget()
    yield
    monkeypatch.undo()
    optional.forget()


@pytest.fixture(scope="module")
def module_monkeypatch():
    """``monkeypatch`` for module-scoped fixtures (a served app, say): what it sets
    (``setenv``, ``setattr``) is undone when the test module is done."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="session")
def inputs():
    return load_tensors("inputs.pt")


@pytest.fixture(scope="session")
def manifest():
    return json.loads(reference_file("manifest.json").read_text())


_MODELS: dict[str, torch.nn.Module] = {}


def reference_model(name: str):
    """Eval-mode model loaded from the reference checkpoint ``dfine_{name}_random_official.pth``."""
    import dfine

    if name not in _MODELS:
        _MODELS[name] = dfine.load_model(reference_file(f"dfine_{name}_random_official.pth"))
    return _MODELS[name]


@pytest.fixture(scope="session")
def model_n():
    return reference_model("n")


@pytest.fixture(scope="session")
def model_n_perturbed():
    return reference_model("n_perturbed")


@pytest.fixture(scope="module")
def demo_detector():
    """The bundled demo model (D-FINE-N on the synthetic shapes) at threshold 0.5."""
    from dfine.predict import Detector
    from tests.app_util import DEMO

    if not DEMO.exists():
        pytest.skip("demo model assets/dfine_n_synth.safetensors not bundled")
    return Detector(DEMO, threshold=0.5)


@pytest.fixture(scope="session")
def demo_val20(tmp_path_factory):
    """20 synthetic val images (seed 7) the demo model was not trained on: calibration and
    guard data of the reduced-precision tests."""
    from dfine.cli import main

    out = tmp_path_factory.mktemp("synth_val20")
    args = ["data", "synth", "--out", str(out), "--train", "0", "--val", "20", "--seed", "7"]
    assert main([*args, "--quiet", "--workers", "0"]) == 0
    return out


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory):
    """The bundled demo model exported to ONNX (no parity check)."""
    from dfine.export import export_onnx
    from tests.app_util import DEMO

    path = tmp_path_factory.mktemp("demo_onnx") / "demo.onnx"
    return export_onnx(DEMO, path, check_parity=False).path
