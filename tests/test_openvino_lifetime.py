"""OpenVINO backends freed in any order leave the process able to handle signals.

Every ``openvino.Core`` loads its own CPU plugin, which swaps the compiling thread's alternate
signal stack for one it maps and restores the previous one when the Core is destroyed. Two
Cores freed first-in first-out left the thread's alternate stack unmapped, and the next signal
with a Python handler (all run there, SA_ONSTACK) — torch DataLoader's SIGCHLD handler when a
subprocess ended — killed the process with SIGSEGV and no traceback (the single-process test
suite died that way at test_readme.py). The backends share one Core
(:func:`dfine.backends.openvino.shared_core`)."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("openvino")
if not sys.platform.startswith("linux"):
    pytest.skip(
        "the alternate signal stack is checked through Linux's /proc", allow_module_level=True
    )

from dfine.backends.openvino import OpenVINOBackend, shared_core
from dfine.export import export_onnx
from tests.app_util import DEMO

ROOT = Path(__file__).resolve().parents[1]


class _Stack(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


def _alternate_stack_is_usable() -> bool:
    """Whether this thread's alternate signal stack is disabled or lies in mapped memory."""
    stack = _Stack()
    assert ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(stack)) == 0
    if stack.ss_flags & 2:  # SS_DISABLE
        return True
    start = stack.ss_sp or 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(v, 16) for v in line.split()[0].split("-"))
        if low <= start and start + stack.ss_size <= high and "w" in line.split()[1]:
            return True
    return False


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return export_onnx(DEMO, tmp_path_factory.mktemp("ov") / "demo.onnx", check_parity=False).path


def test_backends_share_one_core(onnx_file):
    first, second = OpenVINOBackend(onnx_file), OpenVINOBackend(onnx_file)
    assert shared_core() is shared_core()
    assert first.compiled.get_property("EXECUTION_DEVICES") == ["CPU"]
    del first, second  # first-in first-out
    gc.collect()
    assert _alternate_stack_is_usable()


def test_a_subprocess_after_backends_freed_in_creation_order(onnx_file):
    """The crash itself, in a fresh interpreter: a SIGCHLD handler (as torch's DataLoader
    installs), two backends freed first-in first-out, then a subprocess ends."""
    code = textwrap.dedent(
        f"""
        import gc, signal, subprocess
        from dfine.backends.openvino import OpenVINOBackend
        signal.signal(signal.SIGCHLD, lambda *_: None)
        a = OpenVINOBackend({str(onnx_file)!r})
        b = OpenVINOBackend({str(onnx_file)!r})
        del a, b
        gc.collect()
        subprocess.run(["true"], check=True)
        print("survived")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "survived" in res.stdout, (res.returncode, res.stderr[-2000:])
