"""PNG plots of the frequency analysis (matplotlib, Agg; no pyplot, so no global backend state).

The plots read the JSON-ready dict of :func:`freqpure.analysis.summarise_cases`, so they can be
redrawn from a saved ``analysis.json`` alone. matplotlib is an optional dependency
(``pip install 'freqpure[plots]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freqpure.errors import DependencyError, UsageError

__all__ = ["damage_plot", "ratio_plot", "CASE_STYLE", "GridColumn", "grid_columns", "make_grid", "accuracy_plot",
           "CORRECT_COLOUR", "WRONG_COLOUR", "new_figure"]

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


def new_figure(width: float = 7.0, height: float = 4.2):
    """A matplotlib ``(Figure, Axes)`` of ``width`` x ``height`` inches in the house style (no pyplot state)."""
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
    fig, ax = new_figure()
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
    fig, ax = new_figure(6.0, 3.8)
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


# ---------------------------------------------------------------------------------------------
# The example grid and the accuracy plot (demo and report)
# ---------------------------------------------------------------------------------------------
CORRECT_COLOUR = "#17803d"
WRONG_COLOUR = "#c2261b"


@dataclass(frozen=True)
class GridColumn:
    """One column of the example grid: a heading, images ``[N, C, H, W]`` in [0, 1], and per image the
    predicted class name and whether it is right."""

    defence: str
    heading: str
    images: Any
    captions: list[str]
    correct: list[bool]


def grid_columns(examples: Mapping[str, str | Path | Mapping[str, Any]], rows: int = 8) -> list[GridColumn]:
    """The grid's columns for ``{defence title: examples.npz (path or loaded dict)}``.

    Per defence: ``clean`` captioned with the defence's prediction on the clean image (``pred_clean``),
    ``adversarial`` with the defence's verdict on the attacked image (``pred_adversarial``, the one that counts),
    and, for a purifier, ``purified`` (one purification of the adversarial image) with the bare classifier's
    prediction on it (``pred_purified``; left out for runs that predate it). The undefended run
    (``purified`` identical to ``adversarial``) has no purified column.
    """
    import numpy as np

    columns: list[GridColumn] = []
    for title, source in examples.items():
        ex = dict(np.load(source)) if isinstance(source, str | Path) else dict(source)
        k = min(rows, len(ex["labels"]))
        labels = [int(v) for v in ex["labels"][:k]]
        names = [str(c) for c in ex["class_names"]] if "class_names" in ex else None

        def caption(preds: Any, k: int = k, names: list[str] | None = names) -> list[str]:
            return [names[int(p)] if names and 0 <= int(p) < len(names) else str(int(p)) for p in preds[:k]]

        def right(preds: Any, k: int = k, labels: list[int] = labels) -> list[bool]:
            return [int(p) == lab for p, lab in zip(preds[:k], labels)]

        columns.append(GridColumn(title, f"{title}: clean", ex["clean"][:k], caption(ex["pred_clean"]),
                                  right(ex["pred_clean"])))
        columns.append(GridColumn(title, f"{title}: adversarial", ex["adversarial"][:k],
                                  caption(ex["pred_adversarial"]), right(ex["pred_adversarial"])))
        purifies = "purified" in ex and not np.array_equal(ex["purified"], ex["adversarial"])
        if purifies and "pred_purified" in ex:
            columns.append(GridColumn(title, f"{title}: purified", ex["purified"][:k], caption(ex["pred_purified"]),
                                      right(ex["pred_purified"])))
    return columns


def make_grid(examples: Mapping[str, str | Path | Mapping[str, Any]], path: str | Path, rows: int = 8) -> Path:
    """A PNG of :func:`grid_columns`: per test image (row), its true class on the left, then each column's image
    with the prediction under it (green: correct, red: wrong) and a legend at the bottom."""
    import numpy as np

    cols = grid_columns(examples, rows)
    if not cols:
        raise UsageError("make_grid: no examples given")
    k = len(cols[0].captions)
    first = next(iter(examples.values()))
    ex0 = dict(np.load(first)) if isinstance(first, str | Path) else dict(first)
    names = [str(c) for c in ex0["class_names"]] if "class_names" in ex0 else None
    truth = [names[int(v)] if names else str(int(v)) for v in ex0["labels"][:k]]
    fig, _ = new_figure(1.05 * len(cols) + 0.9, 1.08 * k + 0.9)
    fig.clf()
    gs = fig.add_gridspec(k, len(cols))
    for c, col in enumerate(cols):
        for r in range(k):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(np.clip(np.asarray(col.images[r], dtype=np.float32).transpose(1, 2, 0), 0, 1),
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(col.captions[r], fontsize=7, labelpad=1,
                          color=CORRECT_COLOUR if col.correct[r] else WRONG_COLOUR)
            for spine in ax.spines.values():
                spine.set_edgecolor(CORRECT_COLOUR if col.correct[r] else WRONG_COLOUR)
                spine.set_linewidth(1.5)
            if r == 0:
                ax.set_title(col.heading.replace(": ", "\n"), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"true:\n{truth[r]}", fontsize=7)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=CORRECT_COLOUR, label="prediction correct"),
                        Patch(color=WRONG_COLOUR, label="prediction wrong")],
               loc="outside lower center", ncol=2, fontsize=7, frameon=False,
               title="clean / adversarial: the defence's decision; purified: the classifier on that one purification",
               title_fontsize=7)
    path = Path(path) if isinstance(path, str | Path) else path  # a file object works too
    fig.savefig(path, format="png", dpi=100)
    return path


def accuracy_plot(rows: list[tuple[str, str, float, float, float]], path: str | Path) -> Path:
    """Horizontal bars of accuracy with 95% intervals; ``rows``: ``(group, metric, accuracy, lo, hi)`` in [0, 1]."""
    fig, ax = new_figure(6.4, 0.42 * len(rows) + 1.0)
    colours = {"clean": "#7f8c99", "robust": "#1f77b4"}
    labels = []
    for i, (group, metric, acc, lo, hi) in enumerate(rows):
        ax.barh(i, 100 * acc, color=colours.get(metric, "#ff7f0e"), height=0.7)
        ax.errorbar(100 * acc, i, xerr=[[100 * (acc - lo)], [100 * (hi - acc)]], color="black", capsize=3, lw=1)
        labels.append(f"{group}, {metric}")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%) with 95% Wilson interval", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    path = Path(path) if isinstance(path, str | Path) else path  # a file object works too
    fig.savefig(path, format="png", dpi=90)
    return path
