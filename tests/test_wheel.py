"""The package works installed: build the wheel, install it into a fresh virtual environment
outside the repository, and run the CLI there (help, synthetic data with the bundled photo
backgrounds, prediction with the bundled demo model, the app's start-up).

The environment reuses the packages of the interpreter running the tests (so torch is not
downloaded again): a ``.pth`` file puts that interpreter's site-packages folders after the new
environment's own. That is the running interpreter's, a virtual environment's included —
``--system-site-packages`` would give the *base* interpreter's, without the venv's torch. The
``.pth`` lists folders only (their own ``.pth`` files, such as an editable install's, are not
run), so dfine itself comes only from the wheel (``pip install --no-deps``), and nothing runs
with the repository on ``sys.path`` (no PYTHONPATH, working folder outside it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def site_folders() -> list[str]:
    """The site-packages folders of the interpreter running the tests, in import order."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]


def _reuse_packages(python: Path, env: dict[str, str], cwd: Path) -> None:
    """Make the venv of ``python`` see this interpreter's packages after its own."""
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([str(python), "-c", where], env, cwd).strip())
    (purelib / "_dfine_test_reuse.pth").write_text("".join(f"{p}\n" for p in site_folders()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin folder, environment, working folder)`` of a venv holding only the wheel's dfine."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = tmp / "src"  # build from a copy: the checkout stays free of build/ and egg-info
    skip = {".git", "tests", "runs", "data", "test-artifacts", "build", "dist", "benchmarks"}
    cache = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache", ".hypothesis")
    shutil.copytree(
        ROOT,
        build,
        symlinks=True,
        ignore=lambda d, names: (
            ({n for n in names if n in skip} if Path(d) == ROOT else set()) | cache(d, names)
        ),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp / "dist")],
        env, build,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("dfine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"dfine", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(tops)
    for needed in (
        "dfine/assets/dfine_n_synth.safetensors",
        "dfine/assets/examples/coffee.jpg",
        "dfine/assets/examples/synth/instances_val.json",
        "dfine/_webapp/app/serve.py",
        "dfine/_webapp/app/tabs/detect.py",
        "dfine/_webapp/analysis/figures.py",
    ):
        assert needed in names, f"{needed} is not in the wheel"
    packages = {
        (f"dfine/_webapp/{rel}" if not rel.startswith("dfine") else rel)
        for top in ("dfine", "app", "analysis")
        for p in (ROOT / top).rglob("__init__.py")
        if (rel := p.parent.relative_to(ROOT).as_posix())
    }
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"packages left out of pyproject's list: {sorted(missing)}"
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    _reuse_packages(bin_dir / "python", env, tmp)
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], env, tmp)
    work = tmp / "work"
    work.mkdir()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["DFINE_HOME"] = str(tmp / "home")
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    return bin_dir, env, work


def test_the_installed_package_is_the_wheel(installed):
    bin_dir, env, work = installed
    where = _run([str(bin_dir / "python"), "-c", "import dfine; print(dfine.__file__)"], env, work)
    assert Path(where.strip()).is_relative_to(bin_dir.parent), where
    # no top-level `app` / `analysis` of ours in the environment (another editable install of
    # this repository in the base interpreter may still expose its own: not the wheel's doing)
    probe = "import importlib.util as u; print([getattr(u.find_spec(n), 'origin', '') for n in ('app', 'analysis')])"
    origins = _run([str(bin_dir / "python"), "-c", probe], env, work)
    assert str(bin_dir.parent) not in origins, origins


def test_the_environment_has_the_running_interpreters_packages(installed):
    """torch and the rest come from the interpreter running the tests (a venv's included)."""
    bin_dir, env, work = installed
    probe = "import torch, PIL; print(torch.__file__); print(PIL.__file__)"
    got = _run([str(bin_dir / "python"), "-c", probe], env, work).split()
    import PIL
    import torch

    assert got == [torch.__file__, PIL.__file__]


def test_cli_help_synth_and_predict_outside_the_repo(installed):
    bin_dir, env, work = installed
    dfine = str(bin_dir / "dfine")
    text = _run([dfine, "--help"], env, work)
    for command in ("predict", "train", "val", "export", "data", "app"):
        assert command in text
    # photo backgrounds come from the bundled example photos (package data)
    _run([dfine, "data", "synth", "--out", "synth", "--train", "3", "--val", "1",
          "--photos", "1", "--quiet"], env, work)  # fmt: skip
    train = json.loads((work / "synth/annotations/instances_train.json").read_text())
    assert len(train["images"]) == 3 and train["annotations"]
    assert (work / "synth" / "train" / train["images"][0]["file_name"]).is_file()
    # no --weights: the bundled demo model, on a bundled synthetic example (both package data)
    where = "from dfine.resources import examples_dir; print(examples_dir() / 'synth')"
    synth = Path(_run([str(bin_dir / "python"), "-c", where], env, work).strip())
    assert synth.is_relative_to(bin_dir.parent)
    _run([dfine, "predict", str(synth / "000001.jpg"), "--out", "pred", "--quiet"], env, work)
    record = json.loads((work / "pred" / "000001.json").read_text())
    assert (work / "pred" / "000001.jpg").is_file() and record["detections"]
    demo_classes = {"red circle", "blue square", "green triangle", "yellow star", "purple ring"}
    demo_classes |= {"orange cross", "cyan hexagon", "pink heart"}
    assert {d["name"] for d in record["detections"]} <= demo_classes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_starts_from_the_wheel(installed):
    pytest.importorskip("gradio")
    bin_dir, env, work = installed
    port = _free_port()
    proc = subprocess.Popen(
        [str(bin_dir / "dfine"), "app", "--port", str(port)],
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        config = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.loads(r.read())
                break
            except OSError:
                time.sleep(1)
        assert config is not None, (
            f"the app did not start:\n{proc.communicate(timeout=30)[0][-3000:]}"
        )
        assert any(d.get("api_name") == "detect" for d in config.get("dependencies", []))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
