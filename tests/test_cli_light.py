"""The command line answers at once: ``dfine --help``, every ``--help`` and an argument error
import no torch; every command's help has examples; ``dfine --help`` says which optional parts
are installed; ``--quiet`` silences NNCF and torch around an INT8 export."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys

import pytest

from dfine import optional
from dfine.cli import build_parser

NO_TORCH = """
import sys
from dfine.cli import main
try:
    main({argv!r})
except SystemExit as e:
    print("exit", e.code)
heavy = sorted(m for m in ("torch", "torchvision", "cv2", "onnxruntime", "openvino", "gradio")
               if m in sys.modules)
print("heavy", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["predict", "--help"],
        ["train", "--help"],
        ["val", "--help"],
        ["data", "synth", "--help"],
        ["predict", "photo.jpg", "--threshold", "2"],  # an argument error
        ["export"],  # a missing argument
    ],
    ids=" ".join,
)
def test_help_and_argument_errors_import_no_torch(argv):
    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "heavy []" in res.stdout, res.stdout
    assert ("exit 0" if "--help" in argv else "exit 2") in res.stdout


def _commands(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
            return
    yield path, parser


def test_every_command_has_examples():
    commands = dict(_commands(build_parser()))
    assert {("predict",), ("inspect",), ("export",), ("benchmark",), ("app",), ("train",),
            ("val",), ("data", "synth"), ("data", "synth-video")} <= set(commands)  # fmt: skip
    missing = [" ".join(p) for p, sub in commands.items() if "example" not in (sub.epilog or "")]
    assert not missing, f"no examples in the --help of: {', '.join(missing)}"
    assert "dfine inspect assets/dfine_n_synth.safetensors" in commands[("inspect",)].epilog


def test_help_lists_the_optional_parts(monkeypatch, capsys):
    monkeypatch.setattr(optional, "available", lambda module: module != "openvino")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "optional parts:" in text
    for part in optional.PARTS.values():
        assert part.package in text
    [line] = [x for x in text.splitlines() if x.strip().startswith("openvino ")]
    assert "not installed" in line and "pip install openvino" in line
    [line] = [x for x in text.splitlines() if x.strip().startswith("onnxruntime ")]
    assert "not installed" not in line


def test_detection_is_cached_and_needs_no_import():
    before = set(sys.modules)
    optional.available.cache_clear()
    assert optional.available("tensorrt") is optional.available("tensorrt")
    assert optional.available.cache_info().hits >= 1
    assert not {"tensorrt", "openvino", "onnxruntime"} & (set(sys.modules) - before)


def test_require_names_the_package(monkeypatch):
    from dfine.errors import MissingDependencyError

    monkeypatch.setattr(optional, "available", lambda module: False)
    with pytest.raises(MissingDependencyError, match=r"pip install opencv-python-headless"):
        optional.require("cv2", "video")


def test_quiet_silences_nncf_bars_and_the_cuda_warning(capsys):
    if importlib.util.find_spec("nncf") is None:  # not importorskip: importing it is the test
        pytest.skip("INT8 needs nncf (pip install nncf)")
    import rich

    from dfine.quantize import _quiet

    logger = logging.getLogger(_quiet.CPP_EXTENSION_LOGGER)  # torch's own handler prints it
    assert logger.isEnabledFor(logging.WARNING)
    with _quiet(progress=False):
        assert not logger.isEnabledFor(logging.WARNING)
        rich.get_console().print("Statistics collection ━━━━ 100%")
    assert "Statistics" not in capsys.readouterr().out
    assert logger.isEnabledFor(logging.WARNING) and not rich.get_console().quiet  # restored
    with _quiet(progress=True):
        assert logger.isEnabledFor(logging.WARNING)
        rich.get_console().print("Statistics collection ━━━━ 100%")
    assert "Statistics" in capsys.readouterr().out


@pytest.mark.parametrize("package", ["dfine", "dfine.train", "dfine.data", "dfine.backends"])
def test_lazy_packages_export_every_public_name(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_dfine_postprocess_stays_the_function():
    """The function ``dfine.postprocess`` shares its name with its module: importing the
    module (as every prediction does) must not replace the function on the package."""
    import dfine
    import dfine.predict  # imports the module dfine.postprocess

    assert callable(dfine.postprocess) and dfine.postprocess.__name__ == "postprocess"
    assert dfine.postprocess is sys.modules["dfine.postprocess"].postprocess
