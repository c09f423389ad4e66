"""dfine.optional: the one Chromium detector (DFINE_CHROMIUM=none / a path / where kaleido
looks), looked up once per process, and the one-line user error when there is none."""

from __future__ import annotations

import shutil

import pytest

from dfine import optional
from dfine.errors import DFineError, MissingDependencyError


@pytest.fixture
def env(monkeypatch):
    """Set DFINE_CHROMIUM for one test (and look again before and after it)."""

    def set_to(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(optional.ENV, raising=False)
        else:
            monkeypatch.setenv(optional.ENV, value)
        optional.forget()

    yield set_to
    monkeypatch.undo()
    optional.forget()


@pytest.mark.parametrize("value", ["none", "None", " off "])
def test_none_means_no_browser_whatever_is_installed(env, value):
    env(value)
    assert optional.chromium_path() is None
    with pytest.raises(MissingDependencyError) as err:
        optional.require_chromium("PNG export")
    text = str(err.value)
    assert isinstance(err.value, DFineError) and isinstance(err.value, ImportError)
    assert text.startswith("PNG export needs the 'Chromium'") and "\n" not in text
    assert f"DFINE_CHROMIUM={value.strip()} says there is none" in text
    assert "apt-get install chromium" in text and "plotly_get_chrome" in text


def test_an_explicit_path_is_used_as_it_is(env, tmp_path):
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env(str(fake))
    assert optional.chromium_path() == str(fake) == optional.require_chromium("x")
    env(str(tmp_path / "absent"))
    assert optional.chromium_path() is None
    with pytest.raises(MissingDependencyError, match="is not an executable file"):
        optional.require_chromium("PNG export")
    env("sh")  # a name on PATH
    assert optional.chromium_path() == shutil.which("sh")


def test_looked_up_once_per_process(env, monkeypatch, tmp_path):
    env("none")
    assert optional.chromium_path() is None
    monkeypatch.setenv(optional.ENV, shutil.which("sh"))  # changed without forget(): cached
    assert optional.chromium_path() is None
    optional.forget()
    assert optional.chromium_path() == shutil.which("sh")


def test_unset_finds_what_kaleido_would(env):
    choreographer = pytest.importorskip("choreographer.browsers")
    env(None)
    found = choreographer.Chromium.find_browser(skip_local=False)
    assert optional.chromium_path() == (str(found) if found else None)


def test_help_summary_says_whether_chromium_is_there(env, tmp_path):
    env("none")
    line = optional.summary().splitlines()[-1]
    assert line.split()[:3] == ["Chromium", "not", "found"] and "apt-get install chromium" in line
    fake = tmp_path / "chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env(str(fake))
    line = optional.summary().splitlines()[-1]
    assert line.split()[:2] == ["Chromium", "found"] and line.endswith(str(fake))
