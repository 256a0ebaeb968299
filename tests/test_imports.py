"""The import contract: which way freqpure's modules may import each other (issue #22).

Read from the code (every ``import``/``from … import`` of ``freqpure``, function-level ones included; an
import of a package's ``__init__`` facade is not an edge). The rules:

* the command line is the top floor: no library module imports ``freqpure.cli``;
* no circles. :data:`KNOWN_CIRCLES` would list tolerated ones (it is a ratchet: a new circle fails, and so
  does a listed one that is gone); it is empty.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "freqpure"

KNOWN_CIRCLES: set[frozenset[str]] = set()  # none left (session 20 removed the last four)


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over src/freqpure (facade ``__init__`` targets left out)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("freqpure"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("freqpure")}
        graph[name] = {t for t in targets if t in files and t != name and files[t].name != "__init__.py"}
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == {frozenset({"a", "b", "c"})}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_no_library_module_imports_the_command_line():
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if t.startswith("freqpure.cli") and not m.startswith("freqpure.cli") and m != "freqpure.__main__")
    assert upward == []


def test_no_new_circle_and_no_stale_entry():
    found = circles(import_graph())
    new = sorted(sorted(c) for c in found - KNOWN_CIRCLES)
    gone = sorted(sorted(c) for c in KNOWN_CIRCLES - found)
    assert new == [], f"new import circle(s): {new}"
    assert gone == [], f"circle(s) removed: delete them from KNOWN_CIRCLES: {gone}"
