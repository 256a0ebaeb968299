"""Draw the house: freqpure's rooms on their floors, sized by lines, with the imports between them as arrows.

The floors are those of the import contract (``FLOORS`` in tests/test_imports.py, the same table as
docs/architecture.md); the arrows are read from the code's own imports. A room is a top-level module or
package of ``src/freqpure``; an arrow A → B means some module of A imports some module of B (a room's
imports among its own modules are not drawn). Every arrow points down or sideways: an upward one would fail
the contract's test.

    python scripts/draw_house.py [docs/img/house.png]      # needs matplotlib (pip install 'freqpure[plots]')
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_imports import FLOORS, ROOT, floor, import_graph  # noqa: E402

FLOOR_NAMES = {0: "ground", 1: "foundations", 2: "math and models", 3: "purification", 4: "configuration, attacks",
               5: "one evaluation", 6: "study, report, data", 7: "training", 8: "command line"}


def room(module: str) -> str:
    """The room of ``freqpure.a.b``: ``a`` (a top-level module or package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "freqpure"


def room_lines() -> dict[str, int]:
    """Lines of code per room."""
    lines: dict[str, int] = defaultdict(int)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        name = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "freqpure"
        lines[name] += len(path.read_text().splitlines())
    return dict(lines)


def main(out: str = str(REPO / "docs" / "img" / "house.png")) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle

    graph = import_graph()
    lines = room_lines()
    rooms = sorted((r for r in lines if r != "freqpure"), key=lambda r: (floor(f"freqpure.{r}"), -lines[r]))
    edges = {(room(a), room(b)) for a, targets in graph.items() for b in targets if room(a) != room(b)}
    edges = {(a, b) for a, b in edges if "freqpure" not in (a, b)}
    by_floor: dict[int, list[str]] = defaultdict(list)
    for r in rooms:
        by_floor[floor(f"freqpure.{r}")].append(r)
    width, gap, height = 100.0, 1.2, 6.0
    boxes: dict[str, tuple[float, float, float, float]] = {}
    fig = Figure(figsize=(16, 12), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for level, members in sorted(by_floor.items()):
        total = sum(lines[m] ** 0.5 for m in members)
        free = width - gap * (len(members) + 1)
        x, y = gap, level * (height + 3.0)
        ax.add_patch(Rectangle((0, y - 0.8), width, height + 1.6, color="#f3efe6", zorder=0))
        ax.text(-1.5, y + height / 2, f"{level}\n{FLOOR_NAMES.get(level, '')}", ha="right", va="center", fontsize=9)
        for m in members:
            w = free * lines[m] ** 0.5 / total
            boxes[m] = (x, y, w, height)
            package = (ROOT / m).is_dir()
            ax.add_patch(Rectangle((x, y), w, height, facecolor="#cfe3f3" if package else "#e8f1d8",
                                   edgecolor="#34495e", lw=0.8, zorder=2))
            label = f"{m}{'/' if package else ''}\n{lines[m]}"
            ax.text(x + w / 2, y + height / 2, label, ha="center", va="center", fontsize=7 if w > 4 else 5.5,
                    rotation=0 if w > 4 else 90, zorder=3)
            x += w + gap
    for a, b in sorted(edges):
        xa, ya, wa, ha = boxes[a]
        xb, yb, wb, hb = boxes[b]
        same = floor(f"freqpure.{a}") == floor(f"freqpure.{b}")
        start = (xa + wa / 2, ya + (ha if same else 0))
        end = (xb + wb / 2, yb + hb)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=7, lw=0.5, alpha=0.35,
                                     color="#c0392b" if same else "#2c3e50",
                                     connectionstyle="arc3,rad=0.35" if same else "arc3,rad=0.05", zorder=1))
    top = max(by_floor) * (height + 3.0) + height
    ax.set_xlim(-12, width + 1)
    ax.set_ylim(-2, top + 2)
    ax.axis("off")
    ax.set_title(f"freqpure: {len(rooms)} rooms on {len(by_floor)} floors, {len(edges)} arrows between rooms "
                 f"(blue: package, green: module; lines of code; red arrows stay on their floor)", fontsize=11)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(path)
    return path


if __name__ == "__main__":
    assert FLOORS  # the contract's table is the one source of the floors
    main(*sys.argv[1:2])
