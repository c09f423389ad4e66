"""The one seam between the library and the app: ``dfine app`` (:func:`serve`) and
``dfine val --report`` (:func:`evaluation_report`), from a source checkout or an installed wheel.

The app (``app/``) and the analysis library it draws with (``analysis/``) keep the Hugging Face
Spaces layout: top-level folders of the repository, importable as ``app`` and ``analysis``. A
wheel must not install such generic top-level names (they would collide with any other
project's ``app``), so it carries both inside ``dfine/_webapp/``, and this module puts that one
folder first on ``sys.path`` of the process, on request. The rest of the library never imports
them; this module imports exactly two modules by literal name (``app.serve`` and
``analysis.evaluation.cli``), and ``tests/test_imports.py`` reads those calls as import edges
and checks that no other library module loads a module by name.
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from dfine.errors import DFineError

if TYPE_CHECKING:
    import argparse


class AppUnavailableError(DFineError, RuntimeError):
    """The app's code or its dependencies are missing; the message says what to install."""


def app_root() -> Path | None:
    """The folder holding the app's ``app/`` and ``analysis/``: ``dfine/_webapp`` in an
    installed wheel, the repository in a source checkout (or editable install); None when
    neither is there."""
    bundled = Path(str(resources.files("dfine"))) / "_webapp"
    if (bundled / "app" / "serve.py").is_file():
        return bundled
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "app" / "serve.py").is_file() else None


def _put_on_path() -> Path | None:
    root = app_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _unavailable(what: str, e: ModuleNotFoundError) -> AppUnavailableError:
    """The one line for a failed import of the app's ``what``: the app is not installed, or
    one of its packages is missing."""
    if e.name is not None and e.name.split(".")[0] in ("app", "analysis"):
        return AppUnavailableError(
            f"{what} is not part of this installation: install the dfine wheel (it carries "
            "the app) or run from the source checkout (python app.py)"
        )
    return AppUnavailableError(f"{what} needs the '{e.name}' package: pip install 'dfine[app]'")


def load_serve() -> ModuleType:
    """The app's ``app.serve`` module (see :func:`app_root` for where it comes from)."""
    root = _put_on_path()
    try:
        serve = importlib.import_module("app.serve")
    except ModuleNotFoundError as e:
        raise _unavailable("the dfine app", e) from e
    if root is None or not Path(serve.__file__).resolve().is_relative_to(root.resolve()):
        raise AppUnavailableError(
            f"another module named 'app' ({serve.__file__}) shadows the dfine app; run "
            "`dfine app` from another folder"
        )
    return serve


def evaluation_report(args: argparse.Namespace) -> int:
    """``dfine val --report``: the analysis layer's dataset report
    (``analysis.evaluation.cli.run_report``), loaded from the same place as :func:`load_serve`."""
    _put_on_path()
    try:
        cli = importlib.import_module("analysis.evaluation.cli")
    except ModuleNotFoundError as e:
        raise _unavailable("dfine val --report", e) from e
    return cli.run_report(args)


def serve(model: str | None = None, host: str | None = None, port: int | None = None) -> None:
    """Serve the app until interrupted (``host``/``port``: default 127.0.0.1:7860)."""
    load_serve().serve(model, host, port)
