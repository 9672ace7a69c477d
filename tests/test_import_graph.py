"""Imports point one way: dabench (presentation) -> harness (engine) -> harness.protocols; xda (method
code on top of the engine) sees only the engine's protocols, config and records.

The graph is read from the source (``ast``), so an import inside a function, or under
``if TYPE_CHECKING:``, counts as much as one at the top of a module: a circle hidden in a function
body is still a circle. ``__main__`` modules are left out (they are only ever run as scripts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dabench", "harness", "methods", "tasks", "paper_figures", "xda")
#: The engine modules a method or task may import (its contract with the harness).
PLUGIN_API = ("harness.protocols", "harness.config", "harness.cache", "harness.registry", "harness.measures")
#: The engine modules the xda package may import.
XDA_ENGINE_API = ("harness.protocols", "harness.config", "harness.records")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` lands in (``harness.report.fmt`` -> ``harness.report``), None outside ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports, at any depth; relative imports made absolute."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    edges = {}
    for module, path in modules.items():
        targets = {_resolve(name, modules) for name in _imported(module, path)}
        edges[module] = {t for t in targets if t is not None and t != module}
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    """The test cannot pass on an empty or unresolved graph."""
    assert {"dabench.cli", "dabench.report", "harness.report", "harness.runs", "paper_figures"} <= set(graph)
    assert "harness.report" in graph["dabench.report"]
    assert "harness.runs" in graph["harness.report"]
    assert "harness.protocols" in graph["methods.random_baseline"]
    assert {"xda", "xda.lrp", "xda.pairs", "xda.results", "xda.document"} <= set(graph)
    assert "xda" in graph["dabench.xda_command"] and "harness.records" in graph["xda.document"]


def test_imports_form_no_circle(graph: dict[str, set[str]]) -> None:
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_a_circle_is_found_and_named() -> None:
    found = _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_engine_imports_no_presentation(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "harness"
        for target in targets
        if target.split(".")[0] in ("dabench", "paper_figures")
    )
    assert not wrong, "harness must not import dabench or paper_figures: " + "; ".join(wrong)


def test_methods_and_tasks_use_only_the_plugin_api(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] in ("methods", "tasks")
        for target in targets
        if target.split(".")[0] in ("harness", "dabench", "paper_figures") and target not in PLUGIN_API
    )
    assert not wrong, f"methods/ and tasks/ may import only {', '.join(PLUGIN_API)}: " + "; ".join(wrong)


def test_xda_is_its_own_package_on_the_engine(graph: dict[str, set[str]]) -> None:
    """The engine never imports xda; xda imports of the engine only its protocols, config and records,
    and no method, task or presentation module."""
    engine = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "harness"
        for target in targets
        if target.split(".")[0] == "xda"
    )
    assert not engine, "harness must not import xda: " + "; ".join(engine)
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "xda"
        for target in targets
        if target.split(".")[0] != "xda" and target not in XDA_ENGINE_API
    )
    assert not wrong, f"xda may import only {', '.join(XDA_ENGINE_API)} of ours: " + "; ".join(wrong)
