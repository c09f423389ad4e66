"""pyproject.toml is the one list of dependencies; the files that install from elsewhere
(requirements.txt for Hugging Face Spaces, requirements-dev.txt for CI) add nothing to it."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_spaces_requirements_are_the_library_and_app_dependencies():
    declared = {_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["app"]}
    spaces = {_name(r) for r in _lines(ROOT / "requirements.txt") if not r.startswith("-")}
    assert spaces <= declared, f"in requirements.txt but not in pyproject: {spaces - declared}"
    # everything the app needs at run time is what Spaces installs
    needed = {_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["app"]}
    assert needed <= spaces, f"Spaces would miss: {needed - spaces}"


def test_dev_requirements_install_the_dev_extra():
    lines = _lines(ROOT / "requirements-dev.txt")
    assert any(re.fullmatch(r"(-e\s+)?\.\[dev\]", line) for line in lines), lines
    extras = {_name(line) for line in lines if not line.startswith(("-", "."))}
    assert not extras, f"requirements-dev.txt lists packages itself (put them in [dev]): {extras}"
    dev = " ".join(PROJECT["optional-dependencies"]["dev"])
    for extra in ("app", "export", "train", "video"):
        assert extra in dev and extra in PROJECT["optional-dependencies"]


def test_bundled_files_resolve_and_a_missing_one_says_so():
    import pytest

    from dfine import resources

    assert resources.demo_weights().is_file()
    assert [p.name for p in resources.example_photos()] == sorted(
        p.name for p in (ROOT / "assets" / "examples").glob("*.jpg")
    )
    with pytest.raises(resources.MissingAssetError, match="installation is incomplete"):
        resources.asset("examples", "no-such-photo.jpg")
