"""How results are written for people: the defences' names and order, and accuracies as percentages.

One place for the words the demo's terminal table, ``results.md`` and the HTML report share (a ground-floor
module: it imports nothing of freqpure).
"""

from __future__ import annotations

__all__ = ["DEFENCES", "TITLES", "interval", "percent"]

# the defences of a demo (and of a report of one), in the order they are shown
DEFENCES = ("none", "diffpure", "freqpure")
# each defence (a purifier ``method``) by name, as a reader sees it
TITLES = {"none": "no defence", "diffpure": "DiffPure", "freqpure": "FreqPure"}


def percent(fraction: float) -> str:
    """``0.846`` → ``"84.6%"``."""
    return f"{100 * fraction:.1f}%"


def interval(ci: tuple[float, float]) -> str:
    """A 95% interval of fractions in percent: ``(0.812, 0.874)`` → ``"[81.2, 87.4]"``."""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
