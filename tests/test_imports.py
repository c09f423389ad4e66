"""The import graph of ``dfine``, ``analysis`` and ``app`` is acyclic and keeps DESIGN.md's rules.

Every ``import`` counts, function-local ones and ``if TYPE_CHECKING:`` ones included (a lazy
import must not hide a cycle, and a type-only cycle says a type lives in the wrong module).
Rules:

- ``dfine`` never imports ``app`` or ``analysis``; ``analysis`` never imports ``app``;
- inference code (``dfine.nn``, ``dfine.predict``, ``dfine.backends``) never imports training
  or data code (``dfine.train``, ``dfine.data``);
- a function-local import is for an optional heavy dependency only (``LAZY_OK``), or for a
  project module that itself needs one (``LAZY_PROJECT_OK``, each with its reason).
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
    "faster_coco_eval",
    "supervision",
    "tensorboard",
    "tensorrt",
    "trackers",
    "torch.utils.tensorboard",
    "transformers",
    "yaml",
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


def _imports(module: str, path: Path, is_package: bool) -> list[tuple[str, int, bool]]:
    """``(imported name, line, lazy)`` for every import of a module; lazy: inside a function
    (``if TYPE_CHECKING:`` imports count as eager: they never run, so they need no excuse)."""
    tree = ast.parse(path.read_text(), str(path))
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
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
        if _within(module, source) and any(_within(name, t) for t in targets)
    ]
    assert not broken, "\n".join(broken)


def test_lazy_imports_are_for_optional_dependencies_only():
    modules = set(_modules())
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for module, name, line, local in IMPORTS:
        if not local:
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
