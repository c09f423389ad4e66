"""README.md runs as written: every ```bash and ```python block, in order, offline. Commands
run from a view of the repository root (a temporary folder linking the checkout's files, so
outputs never land in the checkout); Python blocks from another, empty folder, with only the
``dfine`` package importable (as after ``pip install``: no ``analysis``, no ``assets/``). What
the blocks write must be covered by ``.gitignore``.

An HTML comment just before a block changes how it is run (a reader sees it in the page
source): ``<!-- readme-test: skip — reason -->`` (installs packages, or is the test suite
itself, or trains for hours), ``<!-- readme-test: serve — … -->`` (a server: started,
checked to answer on its port, stopped) and ``<!-- readme-test: root — reason -->`` (a
Python block run from the repository view, with the checkout importable: it reads files of
the checkout or what a command above wrote). Nothing in a block is substituted; the
environment only makes the run offline (an unreachable zoo URL, a temporary ``DFINE_HOME``),
puts the repository's ``dfine`` first on ``PATH`` and picks a free port for the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app_util import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?:<!--\s*readme-test:\s*(?P<mode>\w+)[^>]*-->\s*\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
    re.S,
)
OUTPUTS = {"runs", "data", "test-artifacts", "crops", "exports"}
INSTALL_COMMAND = "pip install -r requirements.txt && pip install -e ."
TEST_COMMAND = "pip install -r requirements-dev.txt && pip install -e . && python -m pytest -q"


def blocks() -> list[tuple[str, str, str]]:
    """``(mode, language, code)`` of every bash/python block; mode ``run`` unless marked."""
    return [(m["mode"] or "run", m["lang"], m["code"]) for m in BLOCK.finditer(README.read_text())]


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(an empty folder outside the checkout, a PYTHONPATH holding only this ``dfine``)."""
    only = tmp_path_factory.mktemp("only_dfine")
    (only / "dfine").symlink_to(ROOT / "dfine", target_is_directory=True)
    return tmp_path_factory.mktemp("elsewhere"), {"PYTHONPATH": str(only)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():  # the checkout's files, linked; outputs stay in `work`
        if entry.name not in OUTPUTS and not entry.name.startswith(".") and entry.suffix != ".onnx":
            (work / entry.name).symlink_to(entry)
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "dfine"  # this checkout's CLI, whatever `dfine` an install put on PATH
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dfine.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        # this checkout's CLI, then this interpreter as `python` (its environment's packages)
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "DFINE_HOME": str(tmp_path_factory.mktemp("dfine_home")),
        "DFINE_ZOO_URL": "http://127.0.0.1:9/offline",  # refused at once: no network used
        "GRADIO_ANALYTICS_ENABLED": "False",
        "MPLBACKEND": "Agg",
    }
    return work, env


def test_the_quick_start_commands_are_what_ci_runs_on_a_fresh_machine():
    skipped = [code.strip() for mode, _, code in blocks() if mode == "skip"]
    assert INSTALL_COMMAND in skipped and TEST_COMMAND in skipped  # shown verbatim, not run
    ci = (ROOT / ".ci" / "run").read_text()
    # phase 1: in a new venv, no browser by construction, the two commands as written, then apt
    steps = ["python3 -m venv", "export DFINE_CHROMIUM=none", INSTALL_COMMAND, TEST_COMMAND]
    at = [ci.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at))
    assert at[-1] < ci.find("apt-get update -qq") and 'pytest -q -m "browser or chromium"' in ci


def test_every_block_runs_as_written(workspace, elsewhere, record_property):
    work, env = workspace
    away, away_env = elsewhere
    before = set(os.listdir(work))
    ran = {"run": 0, "serve": 0, "skip": 0, "root": 0}
    start = time.perf_counter()
    for mode, lang, code in blocks():
        ran[mode] += 1
        if mode == "skip":
            continue
        if mode == "serve":
            _serve(code, work, env)
            continue
        args = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable]
        anywhere = lang == "python" and mode == "run"
        res = subprocess.run(
            args,
            input=code if lang == "python" else None,
            cwd=away if anywhere else work,
            env={**env, **away_env} if anywhere else env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"README block failed:\n{code}\n--- stderr:\n{res.stderr}"
    assert ran["run"] >= 3 and ran["serve"] == 1 and ran["skip"] == 3 and ran["root"] >= 1
    assert (work / "runs" / "predict" / "000001.json").is_file()
    assert (work / "dfine_n_synth.onnx").is_file()
    # the Python section wrote only into runs/readme/ of the folder it ran in
    assert os.listdir(away) == ["runs"] and os.listdir(away / "runs") == ["readme"]
    assert {"shapes_pred.jpg", "shapes.json", "crops", "mine.safetensors", "demo.onnx"} <= set(
        os.listdir(away / "runs" / "readme")
    )
    # and every block wrote only what .gitignore covers
    for name in sorted(set(os.listdir(work)) - before):
        path = name + "/" if (work / name).is_dir() else name  # `/runs/` matches folders only
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert ignored.returncode == 0, f"a README block wrote {name}, which .gitignore misses"
    record_property("readme_blocks", ran)
    record_property("readme_seconds", round(time.perf_counter() - start, 1))


def test_the_offline_message_shown_is_the_real_one(workspace):
    work, env = workspace
    res = subprocess.run(
        ["dfine", "inspect", "dfine_l_coco.pth"], cwd=work, env=env, capture_output=True, text=True
    )
    assert res.returncode == 2
    shown = README.read_text()
    error = next(line for line in res.stderr.splitlines() if line.startswith("error: "))
    first = error.split(" from ")[0]  # "error: dfine_l_coco.pth is not a file here; …"
    assert first in shown, first
    assert "Download that file (about 127 MB) yourself and save it as" in res.stderr
    assert "Download that file (about 127 MB) yourself and save it as" in shown


def _serve(code: str, work: Path, env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["bash", "-c", code],
        cwd=work,
        env={**env, "GRADIO_SERVER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the app exited:\n{proc.stderr.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200 and b"D-FINE explorer" in r.read()
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("the app did not answer within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
