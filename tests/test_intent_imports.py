"""Stage 1's modules import each other without a cycle, so each concept has one owner and any module
can be imported first: settings no longer imports backends/prompts/typical back (in a function) for
the table identity (identity.py does), and IntentError lives in errors.py."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import recbole_llm4sbr.intent as intent_pkg

PACKAGE = "recbole_llm4sbr.intent"
ROOT = Path(intent_pkg.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE] + parts)


def module_imports(path: Path, modules: Set[str]) -> Set[str]:
    """The stage-1 modules ``path`` imports, anywhere in it: a cycle hidden in a function-level import
    (as settings.table_identity's was) is still a cycle."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if node.module:  # `from . import encoder` imports the submodule, its package is the parent
                found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: module_imports(p, set(files)) for m, p in files.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as ``[a, b, ..., a]``, or [] when there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_stage_one_imports():
    graph = import_graph()
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.settings"]
    assert f"{PACKAGE}.encoder" in graph[f"{PACKAGE}.pipeline"]  # `from . import encoder as enc`
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.backends"]  # `from ..errors import`


def test_no_import_cycle_in_stage_one():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)
