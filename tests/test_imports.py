"""The import graph of ``dfine``, ``analysis`` and ``app`` is acyclic and keeps DESIGN.md's rules.

Every ``import`` counts, function-local ones and ``if TYPE_CHECKING:`` ones included (a lazy
import must not hide a cycle, and a type-only cycle says a type lives in the wrong module).
Rules:

- ``dfine`` never imports ``app`` or ``analysis`` — by statement or by module name — except
  through its one documented seam (``SEAM``: ``dfine.webapp``, the ``dfine app`` /
  ``dfine val --report`` launcher); ``analysis`` never imports ``app``;
- inference code (``dfine.nn``, ``dfine.predict``, ``dfine.backends``) never imports training
  or data code (``dfine.train``, ``dfine.data``);
- a function-local import is for an optional heavy dependency only (``LAZY_OK``), or in a
  command-line module (``LAZY_PROJECT_OK``, with its reason);
- a module loaded by name (``importlib.import_module("x.y")``, ``__import__``) is an edge like
  any import: a literal name is read as one; a computed name is allowed only where the target
  is known to stay inside the module's own package (``DYNAMIC_OK``, with its reason).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dfine", "analysis", "app")

# optional or heavy third-party packages a function may import lazily
LAZY_OK = {
    "av",
    "choreographer",  # kaleido's browser finder (dfine.optional)
    "cv2",
    "gradio",
    "gradio_client",
    "huggingface_hub",
    "kaleido",  # static PNG/SVG (analysis.export); optional, with Chromium
    "matplotlib",
    "nncf",
    "onnx",
    "onnxruntime",
    "openvino",
    "pandas",
    "plotly",
    "pycocotools",
    "spaces",  # Hugging Face ZeroGPU (app.gpu; present only on Spaces)
    "rich",  # nncf's progress bars (dfine.quantize silences them)
    "faster_coco_eval",
    "supervision",
    "tensorboard",
    "tensorrt",
    "trackers",
    "torch.utils.tensorboard",
    "transformers",
    "yaml",
}

SEAM = "dfine.webapp"
"""The one library module that may load ``app``/``analysis`` (by literal module name)."""

LAZY_PROJECT_OK = {
    module: "its commands import what they run when they run, so `dfine --help` and argument "
    "errors answer without importing torch"
    for module in ("dfine.cli", "dfine.train.cli", "dfine.data.cli", "dfine.video_cli")
}
LAZY_PROJECT_OK["analysis"] = (
    "loads its plotly-based submodules (figures, export) on first use, so the data functions "
    "work without plotly"
)
LAZY_PROJECT_OK[SEAM] = "loads the app or the report on request (SEAM_LOADS)"

DYNAMIC_OK = {
    "dfine._lazy": "resolves a package's lazy exports, which that package also imports under "
    "`if TYPE_CHECKING:` (read as its edges)",
}

FORBIDDEN = [
    ("dfine", ("app", "analysis"), "dfine never imports app/ or analysis/"),
    ("analysis", ("app",), "analysis never imports app/"),
    *[
        (inference, ("dfine.train", "dfine.data"), "inference code never imports training code")
        for inference in ("dfine.nn", "dfine.predict", "dfine.backends")
    ],
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


DYNAMIC = "<computed>"
"""The name recorded for a module loaded by a name that is not a literal string."""


def _dynamic_import(node: ast.AST) -> str | None:
    """The module a call loads by name (``importlib.import_module("a.b")``,
    ``import_module(...)``, ``__import__(...)``): its literal name, the literal prefix of an
    f-string (``f"analysis.{name}"`` → ``analysis``), :data:`DYNAMIC` for a computed one;
    None for any other node."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__"):
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        return prefix.rsplit(".", 1)[0] if "." in prefix else DYNAMIC
    return DYNAMIC


def _imports(module: str, path: Path, is_package: bool) -> list[tuple[str, int, bool]]:
    """``(imported name, line, lazy)`` for every import of a module, modules loaded by name
    included; lazy: inside a function (``if TYPE_CHECKING:`` imports count as eager: they
    never run, so they need no excuse)."""
    tree = ast.parse(path.read_text(), str(path))
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            loaded = _dynamic_import(child)
            if loaded is not None:
                found.append((loaded, child.lineno, in_function))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    prefix = ".".join(base[: len(base) - child.level + 1])
                    name = f"{prefix}.{child.module}" if child.module else prefix
                else:
                    name = child.module or ""
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                found.extend((f"{name}.{a.name}", child.lineno, in_function) for a in child.names)
            func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or func)

    visit(tree, False)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (the longest existing prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int, bool]]]:
    """Edges between project modules, and every import as ``(module, name, line, local)``."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    every = []
    for module, path in modules.items():
        for name, line, local in _imports(module, path, path.name == "__init__.py"):
            every.append((module, name, line, local))
            target = _resolve(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
    return graph, every


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted.

    A package's ``__init__`` importing its own submodules (``dfine`` → ``dfine.model``) is the
    normal way to re-export a public API, so the edge from a submodule to one of its parent
    packages is left out (it runs the parent's ``__init__`` first, which Python allows)."""
    edges = {m: {t for t in ts if t not in _ancestors(m)} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


GRAPH, IMPORTS = import_graph()


@pytest.mark.parametrize("package", PACKAGES)
def test_import_graph_is_acyclic(package):
    cycles = [c for c in find_cycles(GRAPH) if any(_within(m, package) for m in c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_dependency_rules():
    broken = [
        f"{module}:{line} imports {name} ({why})"
        for module, name, line, _ in IMPORTS
        for source, targets, why in FORBIDDEN
        if _within(module, source)
        and any(_within(name, t) for t in targets)
        and not (module == SEAM and name in SEAM_LOADS)
    ]
    assert not broken, "\n".join(broken)


SEAM_LOADS = ("app.serve", "analysis.evaluation.cli")
"""What the seam loads, by literal name (DESIGN.md, "Dependency direction")."""


def test_the_seam_is_the_one_library_module_that_loads_the_app():
    """``dfine val --report`` and ``dfine app`` reach ``analysis``/``app`` through
    ``dfine.webapp`` only, by literal names the graph sees (and so the cycle test)."""
    loaded = sorted(
        (module, name)
        for module, name, _, _ in IMPORTS
        if _within(module, "dfine") and any(_within(name, t) for t in ("app", "analysis"))
    )
    assert loaded == sorted((SEAM, name) for name in SEAM_LOADS)
    assert {"app.serve", "analysis.evaluation.cli"} <= GRAPH[SEAM]


def test_modules_loaded_by_a_computed_name_stay_in_their_package():
    bad = [
        f"{module}:{line} loads a module by a computed name"
        for module, name, line, _ in IMPORTS
        if name == DYNAMIC and module not in DYNAMIC_OK
    ]
    assert not bad, "\n".join(bad)


def test_lazy_imports_are_for_optional_dependencies_only():
    modules = set(_modules())
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for module, name, line, local in IMPORTS:
        if not local or module in LAZY_PROJECT_OK or name == DYNAMIC:
            continue
        top = name.split(".")[0]
        if top in stdlib or any(_within(name, ok) for ok in LAZY_OK):
            continue
        if _resolve(name, modules) is not None:
            bad.append(f"{module}:{line} imports {name} inside a function")
        elif top not in stdlib:
            bad.append(f"{module}:{line} imports {name} lazily (not an optional dependency)")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_cycles_and_local_imports(tmp_path):
    """The checks above can fail: a two-module cycle through a function-local import."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    found = {m: _imports(m, tmp_path / f"{m}.py", False) for m in ("a", "b")}
    assert found["b"] == [("a.x", 2, True)]
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {m: {_resolve(n, modules) for n, *_ in found[m]} - {None} for m in modules}
    assert find_cycles(graph) == [["a", "b"]]


def test_the_checker_sees_modules_loaded_by_name(tmp_path):
    """A string-loaded module is an edge: a cycle through one is found, and a computed name
    is recorded as such."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text(
        "import importlib\n\ndef f(n):\n    importlib.import_module('a')\n"
        "    return __import__(n)\n"
    )
    found = _imports("b", tmp_path / "b.py", False)
    assert ("a", 4, True) in found and (DYNAMIC, 5, True) in found
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {m: {_resolve(n, modules) for n, *_ in _imports(m, p, False)} - {None}
             for m, p in modules.items()}  # fmt: skip
    assert find_cycles(graph) == [["a", "b"]]
