"""PNG plots of the frequency analysis (matplotlib, Agg; no pyplot, so no global backend state).

The plots read the JSON-ready dict of :func:`freqpure.analysis.summarise_cases`, so they can be
redrawn from a saved ``analysis.json`` alone. matplotlib is an optional dependency
(``pip install 'freqpure[plots]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freqpure.errors import DependencyError, UsageError

__all__ = ["damage_plot", "ratio_plot", "CASE_STYLE"]

# Colour and label per case name; unknown cases get matplotlib's colour cycle.
CASE_STYLE: dict[str, tuple[str, str]] = {
    "adversarial": ("#d62728", "adversarial (no defence)"),
    "diffpure": ("#1f77b4", "DiffPure"),
    "freqpure": ("#2ca02c", "FreqPure"),
    "clean_diffpure": ("#9467bd", "DiffPure on clean"),
    "clean_freqpure": ("#8c564b", "FreqPure on clean"),
}

_YLABEL = {
    "amplitude": "mean relative amplitude error |A - A_clean| / A_clean",
    "phase": "mean phase distance |wrap(phi - phi_clean)| (rad)",
}


def _figure(width: float = 7.0, height: float = 4.2):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DependencyError("plots need matplotlib: pip install 'freqpure[plots]'") from err
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.add_subplot()


def _finite(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _shade_low(ax: Any, radius: float | None, label: str) -> None:
    if radius is not None:
        ax.axvspan(-0.5, radius + 0.5, color="0.92", zorder=0, label=label)


def damage_plot(
    summary: Mapping[str, Any],
    quantity: str,
    path: str | Path,
    *,
    radius: float | None = None,
    log_y: bool | None = None,
    title: str | None = None,
) -> Path:
    """Damage vs band index for every case, with the per-band confidence band; writes a PNG.

    Args:
        summary: the dict of :func:`freqpure.analysis.summarise_cases` (``cases``, ``bands``, ``ci``).
        quantity: ``"amplitude"`` or ``"phase"``.
        path: output ``.png`` path.
        radius: FreqPure's exchange radius; the bands inside it are shaded.
        log_y: logarithmic y axis (default: on for amplitude when every mean is positive).
        title: plot title.
    """
    if quantity not in _YLABEL:
        raise UsageError(f"quantity must be 'amplitude' or 'phase', got {quantity!r}")
    fig, ax = _figure()
    ci = summary.get("ci", {})
    level = ci.get("level", 0.95)
    _shade_low(ax, radius, f"FreqPure exchange disc (r <= {radius:g})" if radius is not None else "")
    positive = True
    for name, case in summary["cases"].items():
        stats = case[quantity]
        mean, lo, hi = _finite(stats["mean"]), _finite(stats["lower"]), _finite(stats["upper"])
        k = list(range(len(mean)))
        colour, label = CASE_STYLE.get(name, (None, name))
        rho = stats.get("spearman")
        rho_txt = f", Spearman {rho:.2f}" if isinstance(rho, float) and math.isfinite(rho) else ""
        style = "--" if name == "adversarial" else "-"  # FreqPure's low bands coincide with it: keep both visible
        line = ax.plot(k, mean, style, marker="o", ms=3, lw=1.5, color=colour, label=f"{label}{rho_txt}")[0]
        ax.fill_between(k, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
        positive &= all(v > 0 for v in mean if math.isfinite(v))
    if log_y if log_y is not None else (quantity == "amplitude" and positive):
        ax.set_yscale("log")
    ax.set_xlabel("frequency band k (radius k-1 < r <= k, frequency-index units)")
    ax.set_ylabel(_YLABEL[quantity], fontsize=8)
    ax.set_title(title or f"{quantity.capitalize()} damage vs frequency (mean, {level:.0%} CI over images)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def ratio_plot(summary: Mapping[str, Any], key: str, path: str | Path, *, title: str | None = None) -> Path:
    """Per-band ratio of mean damage (e.g. ``"freqpure/diffpure"``) in the low bands, with CI bars."""
    entry = summary["ratios"][key]
    fig, ax = _figure(6.0, 3.8)
    width = 0.38
    for j, (quantity, colour) in enumerate((("amplitude", "#2ca02c"), ("phase", "#ff7f0e"))):
        stats = entry.get(quantity)
        if not stats:
            continue
        bands = stats.get("bands", entry["bands"])
        mean, lo, hi = _finite(stats["mean"]), _finite(stats["lower"]), _finite(stats["upper"])
        x = [b + (j - 0.5) * width for b in bands]
        err = [[max(m - low, 0) for m, low in zip(mean, lo)], [max(high - m, 0) for m, high in zip(mean, hi)]]
        ax.bar(x, mean, width, yerr=err, color=colour, alpha=0.8, capsize=2, label=quantity)
    ax.axhline(1.0, color="0.3", lw=1, ls="--")
    ax.set_xlabel("frequency band k")
    ax.set_ylabel(f"damage ratio {key}")
    num = key.split("/")[0]
    ax.set_title(title or f"Low-frequency damage ratio {key} (below 1: {num} damages the band less)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
