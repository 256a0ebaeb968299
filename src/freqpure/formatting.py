"""How results are written for people: the defences' names and order, and accuracies as percentages.

One place for the words the demo's terminal table, ``results.md`` and the HTML report share (a ground-floor
module: it imports nothing of freqpure).
"""

from __future__ import annotations

__all__ = ["DEFENCES", "TITLES", "interval", "percent", "percent_cell", "percent_value"]

# the defences of a demo (and of a report of one), in the order they are shown
DEFENCES = ("none", "diffpure", "freqpure")
# each defence (a purifier ``method``) by name, as a reader sees it
TITLES = {"none": "no defence", "diffpure": "DiffPure", "freqpure": "FreqPure"}


def percent_value(fraction: float) -> str:
    """``0.846`` → ``"84.6"``: a percentage without its sign, for a table that says it is in percent."""
    return f"{100 * fraction:.1f}"


def percent(fraction: float) -> str:
    """``0.846`` → ``"84.6%"``."""
    return f"{percent_value(fraction)}%"


def interval(ci: tuple[float, float]) -> str:
    """A 95% interval of fractions in percent: ``(0.812, 0.874)`` → ``"[81.2, 87.4]"``."""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def percent_cell(fraction: float, ci: tuple[float, float]) -> str:
    """A table cell in percent (the table says so) with its 95% interval: ``0.846, (0.812, 0.874)`` →
    ``"84.6 [81.2, 87.4]"``."""
    return f"{percent_value(fraction)} {interval(ci)}"
