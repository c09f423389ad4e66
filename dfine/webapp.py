"""``dfine app``: start the Gradio app, from a source checkout or from an installed wheel.

The app (``app/``) and the analysis library it draws with (``analysis/``) keep the Hugging Face
Spaces layout: top-level folders of the repository, importable as ``app`` and ``analysis``. A
wheel must not install such generic top-level names (they would collide with any other
project's ``app``), so it carries both inside ``dfine/_webapp/``, and this module puts that one
folder first on ``sys.path`` of the ``dfine app`` process only. The library itself never imports
them (``tests/test_imports.py``): this launcher loads the app by name, on request.
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType


class AppUnavailableError(RuntimeError):
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


def load_serve() -> ModuleType:
    """The app's ``app.serve`` module (see :func:`app_root` for where it comes from)."""
    root = app_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        serve = importlib.import_module("app.serve")
    except ModuleNotFoundError as e:
        if e.name in ("app", "app.serve", "analysis"):
            raise AppUnavailableError(
                "the dfine app is not part of this installation: install the dfine wheel (it "
                "carries the app) or run from the source checkout (python app.py)"
            ) from e
        raise AppUnavailableError(
            f"the dfine app needs the '{e.name}' package: pip install 'dfine[app]'"
        ) from e
    if root is None or not Path(serve.__file__).resolve().is_relative_to(root.resolve()):
        raise AppUnavailableError(
            f"another module named 'app' ({serve.__file__}) shadows the dfine app; run "
            "`dfine app` from another folder"
        )
    return serve


def load_module(name: str) -> ModuleType:
    """A module of the app's ``analysis`` or ``app`` packages by name (``dfine val --report``
    loads ``analysis.evaluation.cli`` so), from the same place as :func:`load_serve`."""
    root = app_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] in ("app", "analysis"):
            raise AppUnavailableError(
                f"{name} is not part of this installation: install the dfine wheel or run "
                "from the source checkout"
            ) from e
        raise AppUnavailableError(
            f"{name} needs the '{e.name}' package: pip install 'dfine[app]'"
        ) from e


def serve(model: str | None = None, host: str | None = None, port: int | None = None) -> None:
    """Serve the app until interrupted (``host``/``port``: default 127.0.0.1:7860)."""
    load_serve().serve(model, host, port)
