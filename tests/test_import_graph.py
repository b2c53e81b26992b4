"""The package has no import circles: module-level ``qwen_backends`` imports form no cycle.

Read statically: the imports a module runs when it is imported (top level, class bodies,
``try`` / ``if`` blocks), not those under ``if TYPE_CHECKING:`` nor inside functions, which run
after every module has loaded.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    """``qwen_backends/a/b.py`` -> ``qwen_backends.a.b`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_at_import(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of ``body`` that run when the module is imported, nested ones included."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from run_at_import(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            nested = getattr(node, field, None)
            if isinstance(nested, list):
                yield from run_at_import([s for s in nested if isinstance(s, ast.stmt)])
        for handler in getattr(node, "handlers", []):
            yield from run_at_import(handler.body)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time."""
    modules = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in run_at_import(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or ``None`` when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_qwen_backends_has_no_import_circle() -> None:
    graph = import_graph(ROOT, "qwen_backends")
    assert len(graph) > 50 and graph["qwen_backends.factory"] >= {"qwen_backends.registry"}
    assert find_cycle(graph) is None


def test_the_former_circles_stay_broken() -> None:
    graph = import_graph(ROOT, "qwen_backends")
    assert "qwen_backends.finetune.engines" not in graph["qwen_backends.finetune.config"]
    assert "qwen_backends.backends.base" not in graph["qwen_backends.tools"]


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_check_finds_a_circle_and_ignores_deferred_imports(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/a.py", "from pkg.b import x\n")
    write(
        tmp_path,
        "pkg/b.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.a import y\n"
        "def f():\n    import pkg.a\n"
        "x = 1\n",
    )
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
    write(tmp_path, "pkg/c.py", "try:\n    from pkg import d\nexcept ImportError:\n    pass\n")
    write(tmp_path, "pkg/d.py", "class K:\n    from pkg.c import z\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.c", "pkg.d", "pkg.c"]
