"""The shape of the code, as docs/design.md draws it: no import circles between reslab's modules
(imports inside functions and under ``TYPE_CHECKING`` count), and a report side that reads run
folders without reaching the training side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reslab"
# What reads results: it must work where nothing of training is importable (a laptop that only
# holds copied run folders) and must not change when training changes.
REPORT_SIDE = ("reslab.report", "reslab.report_figures", "reslab.sweep_summary")
TRAINING_SIDE = (
    "reslab.train", "reslab.module", "reslab.callbacks", "reslab.launch", "reslab.checks",
    "reslab.cli", "reslab.checkpoints", "reslab.loggers",
)  # fmt: skip


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Each reslab module → the reslab modules it imports anywhere in its file (top level,
    inside functions, under ``if TYPE_CHECKING:``); ``from reslab import x`` counts as
    importing ``reslab.x`` when that is a module."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .base import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}".rstrip(".")
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reaches(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not, with one import chain to it."""
    chains, todo = {start: [start]}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in chains:
                chains[nxt] = [*chains[node], nxt]
                todo.append(nxt)
    return chains


def test_reslab_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' → '.join(cycle or [])}"


@pytest.mark.parametrize("module", REPORT_SIDE)
def test_the_report_side_does_not_reach_training(module: str) -> None:
    chains = reaches(import_graph(), module)
    bad = {m: chain for m, chain in chains.items() if m in TRAINING_SIDE}
    assert not bad, "; ".join(" → ".join(chain) for chain in bad.values())


def test_the_checks_find_what_they_are_for(tmp_path: Path) -> None:
    """The checker itself: a circle through a function-level import and a TYPE_CHECKING one is
    found, and a chain from a report module into training is named."""
    pkg = tmp_path / "reslab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from reslab import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from reslab.a import f\n"
    )
    (pkg / "report.py").write_text("from .b import x\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) in (["reslab.a", "reslab.b", "reslab.a"],
                                 ["reslab.b", "reslab.a", "reslab.b"])  # fmt: skip
    assert reaches(graph, "reslab.report")["reslab.a"] == ["reslab.report", "reslab.b", "reslab.a"]
    (pkg / "b.py").write_text("x = 1\n")
    assert find_cycle(import_graph(pkg)) is None
