"""Lazy re-exports for a package's ``__init__``: ``import dfine`` (and so every ``dfine``
command, ``dfine --help`` included) stays cheap, and a public name's submodule (with torch
behind it) is imported on first use.

A package lists its exports as ``{name: submodule}``, repeats the imports under
``if TYPE_CHECKING:`` (for type checkers, and for ``tests/test_imports.py``, which reads them as
the package's edges) and calls :func:`lazy_package`. This module is the one place that imports
a project module by a name that is not a literal string.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any


class LazyPackage(ModuleType):
    """A package whose public names are imported from their submodules on first access."""

    _exports: Mapping[str, str]

    def __getattr__(self, name: str) -> Any:
        submodule = self.__dict__["_exports"].get(name)
        if submodule is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{submodule}"), name)
        setattr(self, name, value)  # the next access is a plain attribute
        return value

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__["_exports"]})

    def __setattr__(self, name: str, value: Any) -> None:
        # importing a submodule binds it on its package: an export of the same name (the
        # function dfine.postprocess of the module dfine.postprocess) keeps that name
        if isinstance(value, ModuleType) and self.__dict__["_exports"].get(name) == name:
            return
        super().__setattr__(name, value)


def lazy_package(package: str, exports: Mapping[str, str]) -> None:
    """Make the (already imported) ``package`` resolve ``exports`` — ``{public name:
    submodule relative to package}`` — on first access."""
    module = sys.modules[package]
    module.__dict__["_exports"] = dict(exports)
    module.__class__ = LazyPackage
