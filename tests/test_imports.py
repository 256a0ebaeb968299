"""The import contract: which way freqpure's modules may import each other (issue #22).

Read from the code (every ``import``/``from … import`` of ``freqpure``, function-level ones included; an
import of a package's ``__init__`` facade is not an edge). The rules:

* every module stands on a floor (:data:`FLOORS`, the table of docs/architecture.md) and imports only
  modules on its own floor or below: no upward import;
* the command line is the top floor: no library module imports ``freqpure.cli``;
* no circles. :data:`KNOWN_CIRCLES` would list tolerated ones (it is a ratchet: a new circle fails, and so
  does a listed one that is gone); it is empty.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "freqpure"

KNOWN_CIRCLES: set[frozenset[str]] = set()  # none left (session 20 removed the last four)

# The floors of the house, bottom up (docs/architecture.md). A name covers the module and, for a package,
# everything in it; the longest matching name decides. A new module needs a floor here.
FLOORS: dict[str, int] = {
    # 0 ground: no freqpure imports but each other
    "errors": 0, "transforms": 0, "formatting": 0, "_threadenv": 0, "provenance": 0,
    # 1 foundations: files, checks, devices and precision, FFT ops, schedules, noise, data, presets
    "_fileio": 1, "_checks": 1, "precision": 1, "runtime": 1, "spectral": 1, "schedules": 1, "checkpointing": 1,
    "data": 1, "cifar10": 1, "imagefolder": 1, "plots": 1, "noise": 1, "presets": 1, "epsmodel": 1,
    "config.io": 1,
    # 2 math and models: samplers over an eps callable, spectral analysis, passthrough, the model zoo, images
    "samplers": 2, "analysis": 2, "bandstats": 2, "passthrough": 2, "models": 2, "imageio": 2,
    # 3 purification
    "purifiers": 3, "ensemble": 3,
    # 4 configuration and attacks
    "config": 4, "attacks": 4,
    # 5 one evaluation (attack runs and clean runs)
    "evaluation": 5,
    # 6 what is built from evaluations: the study, the report, purified data sets
    "study": 6, "report": 6, "purified_data": 6,
    # 7 training
    "training": 7,
    # 8 the edge: the command line and the package facade
    "cli": 8, "__main__": 8, "": 8,
}


def floor(module: str) -> int:
    """The floor of ``freqpure.X.Y`` (the longest name of :data:`FLOORS` that is ``X.Y`` or a package above it)."""
    name = module.removeprefix("freqpure").removeprefix(".")
    parts = name.split(".") if name else []
    for k in range(len(parts), -1, -1):
        key = ".".join(parts[:k])
        if key in FLOORS and (k > 0 or not parts):
            return FLOORS[key]
    raise AssertionError(f"{module} stands on no floor: add it to FLOORS (tests/test_imports.py) and to "
                         "docs/architecture.md")


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


def test_every_module_has_a_floor_and_imports_only_downwards():
    graph = import_graph()
    for module in graph:
        floor(module)  # raises for a module without a floor
    upward = sorted(f"{m} (floor {floor(m)}) -> {t} (floor {floor(t)})" for m, ts in graph.items() for t in ts
                    if floor(t) > floor(m))
    assert upward == [], "upward import(s):\n" + "\n".join(upward)


def _doc_floors() -> dict[str, int]:
    """``{room: floor}`` read from the floor table of docs/architecture.md (rows ``| N | `room`, ... | ... |``)."""
    doc = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    rooms: dict[str, int] = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            for room in re.findall(r"`([^`]+)`", cells[1]):
                name = room.removesuffix(".py").removesuffix("/").replace("/", ".")
                rooms[name] = int(cells[0])
    return rooms


def test_the_floor_map_is_the_architecture_documents():
    """Every room of FLOORS stands on the same floor in docs/architecture.md's table, and the table names no
    room FLOORS lacks (the facade ``freqpure`` itself aside)."""
    doc = _doc_floors()
    named = {k: v for k, v in FLOORS.items() if k}
    assert doc == named, ("docs/architecture.md and FLOORS disagree: "
                          f"{sorted(set(doc.items()) ^ set(named.items()))}")


def test_no_private_name_crosses_a_module():
    """``from freqpure.x import _name`` from another room is a private name crossing: make it public. (Within
    one package, e.g. its ``__init__`` facade re-exporting a helper of its own module, a name stays inside.)"""
    def room(module: str) -> str:
        return module.split(".")[1] if module.count(".") else module

    crossings = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("freqpure"):
                if room(node.module) == room(_module(path)) and (ROOT / room(node.module)).is_dir():
                    continue
                crossings += [f"{_module(path)} imports {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossings == []


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
