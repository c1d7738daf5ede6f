"""The package's import graph has no cycle, counting imports inside functions and the package
``__init__`` an import runs: a cycle is what made ``registry <-> wrapper <-> utils`` and
``intent.settings <-> backends`` hard to change. (The one cycle test of the whole package.)"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "recbole_llm4sbr"
NAME = PACKAGE.name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """Package modules imported anywhere in ``path``, inside functions too (``from pkg import name``
    counts ``pkg.name`` when that is a module). Importing ``a.b.c`` from outside package ``a.b`` also
    runs ``a/b/__init__``: that package counts as imported too."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{alias.name}" if f"{root}.{alias.name}" in modules else root for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names a module at some depth
                target = target.rpartition(".")[0]
            if not target or target.split(".")[0] != NAME:
                continue
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix in modules and prefix != me and (prefix == target or not me.startswith(prefix + ".")):
                    found.add(prefix)
    return found


def graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, modules) for m, p in files.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_finder_sees_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_graph_reads_relative_function_level_and_package_imports():
    edges = graph()
    assert "recbole_llm4sbr.errors" in edges["recbole_llm4sbr.validation"]
    assert "recbole_llm4sbr.compat" in edges["recbole_llm4sbr"]
    # config imports intent.backends: that runs intent/__init__ as well
    assert {"recbole_llm4sbr.intent", "recbole_llm4sbr.intent.backends"} <= edges["recbole_llm4sbr.config"]
    # a function-level import inside serve.py's functions
    assert "recbole_llm4sbr.data.dataset" in edges["recbole_llm4sbr.serve"]


def test_package_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)
