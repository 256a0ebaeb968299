"""One markdown table from several evaluation runs: defences as rows, clean and per-attack accuracy as columns.

Each run directory must hold a finished ``results.json`` (read through
:func:`freqpure.evaluation.results.read_run`, any schema version): its numbers must be consistent, and
when the run's ``samples.jsonl`` is there every record is validated and must add up to them.

Columns are keyed by the attack's label *and* its full settings (:func:`attack_key`: norm, eps, steps,
step size, EOT, gradient, surrogate plan, restarts, loss, iterate): two runs' attacks share a column
only when both agree. An attack with a label already used for different settings gets a column of its
own, marked ``(2)``, ``(3)`` ... — a table never puts attacks of different strength under one heading.
Against an undefended classifier (``purifier.method: none``) the gradient mode and EOT change nothing
(there is no purifier to differentiate and no randomness to average), so those settings are not
compared for such runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freqpure.attacks import default_step_size
from freqpure.errors import UsageError
from freqpure.evaluation.results import Accuracy, Results, read_run
from freqpure.formatting import percent_cell

__all__ = ["load_results", "defence_settings", "attack_settings", "attack_key", "render_table", "Column",
           "table_columns"]

# Settings an undefended (deterministic, purifier-free) run's attack does not depend on.
_MOOT_WITHOUT_PURIFIER = ("gradient", "surrogate_rounds", "eot", "name")


def load_results(run_dir: str | Path) -> Results:
    """The :class:`Results` of ``run_dir``; a clear error when the run is missing or unfinished, or when
    its ``results.json`` is inconsistent in itself or with its ``samples.jsonl`` records
    (:func:`~freqpure.evaluation.results.read_run`)."""
    return read_run(run_dir)[0]


def defence_settings(results: Results) -> str:
    """The defence in a few words, e.g. ``FreqPure 100:5 ddpm, r_a=3 r_p=3 δ=0.3 (paper), majority vote of 3``."""
    cfg = results.config
    p, d = cfg["purifier"], cfg["defence"]
    method = p["method"]
    if method == "none":
        return "none (classifier only)"
    text = f"{'FreqPure' if method == 'freqpure' else 'DiffPure'} {p['rounds']} {p['sampler']}"
    if method == "freqpure":
        text += f", r_a={p['amp_radius']:g} r_p={p['phase_radius']:g} δ={p['delta']:g} ({_variant_text(p)})"
    return text + f", {d['vote']} vote of {d['ensemble']}"


def _step_size(attack: dict[str, Any]) -> float:
    step = attack.get("step_size")
    return default_step_size(attack["norm"], attack["eps"], attack["steps"]) if step is None else float(step)


def _variant_text(p: dict[str, Any]) -> str:
    """``paper``, ``official`` or ``official, step_rule=posterior`` (explicit overrides of the variant)."""
    from freqpure.purifiers import VARIANTS

    variant = p.get("variant") or "paper"
    preset = VARIANTS.get(variant, {})
    extras = [f"{k}={p[k]}" for k in preset if p.get(k) not in (None, preset[k])]
    return ", ".join([variant, *extras])


def attack_settings(attack: dict[str, Any]) -> str:
    """One attack config in a few words.

    E.g. ``PGD L∞ 8/255, 20 steps of 1/255, EOT 4, random start, full gradient``.
    """
    norm = {"linf": "L∞", "l2": "L2"}.get(attack["norm"], attack["norm"])
    eps = attack["eps"]
    eps_text = f"{round(eps * 255)}/255" if attack["norm"] == "linf" and abs(eps * 255 - round(eps * 255)) < 1e-6 \
        else f"{eps:g}"
    if attack["name"] == "autoattack":
        return f"AutoAttack {attack['version']} {norm} {eps_text}, EOT {attack['eot']}, {attack['gradient']} gradient"
    grad = attack["gradient"]
    if grad == "surrogate":
        grad = f"surrogate {attack['surrogate_rounds']}"
    step = _step_size(attack)
    step_text = f" of {round(step * 255, 2):g}/255" if attack["norm"] == "linf" else f" of {step:.4g}"
    restarts = attack.get("restarts", 1)
    return (f"{attack['name'].upper()} {norm} {eps_text}, {attack['steps']} steps{step_text}, EOT {attack['eot']}, "
            f"{'random start, ' if attack['random_start'] else ''}"
            f"{f'{restarts} restarts, ' if restarts > 1 else ''}{grad} gradient")


def _md_code(text: str) -> str:
    """``text`` as inline markdown code that cannot break a table row (pipes escaped, one line, backticks fenced)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _md_text(text: str) -> str:
    """``text`` as plain markdown: one line, markup characters escaped."""
    text = " ".join(str(text).split())
    for ch in "\\`*_[]<>|#":
        text = text.replace(ch, "\\" + ch)
    return text


def attack_key(attack: dict[str, Any], defence: str) -> dict[str, Any]:
    """The settings that decide an attack's strength; ``None`` marks a setting that ``defence`` makes moot."""
    autoattack = attack["name"] == "autoattack"
    key = {
        "name": attack["name"],
        "norm": attack["norm"],
        "eps": round(float(attack["eps"]), 12),
        "steps": None if autoattack else attack["steps"],
        "step_size": None if autoattack else round(_step_size(attack), 12),
        "eot": attack["eot"],
        "gradient": attack["gradient"],
        "surrogate_rounds": attack.get("surrogate_rounds") if attack["gradient"] == "surrogate" else None,
        "random_start": None if autoattack else bool(attack.get("random_start", True)),
        "restarts": None if autoattack else attack.get("restarts", 1),
        "loss": None if autoattack else attack.get("loss", "ce"),
        "keep": None if autoattack else attack.get("keep", "best"),
        "version": attack.get("version") if autoattack else None,
    }
    if defence == "none" and not autoattack:
        key.update({k: None for k in _MOOT_WITHOUT_PURIFIER})
    return key


def _compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] is None or b[k] is None or a[k] == b[k] for k in a)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] if a[k] is not None else b[k] for k in a}


@dataclass
class Column:
    """One table column: a heading, the label it came from, and the settings every cell in it shares."""

    heading: str
    label: str
    key: dict[str, Any]
    settings: str  # in words, from the first defended run that has it
    defended: bool = False


def table_columns(results_list: list[Results]) -> tuple[list[Column], list[dict[str, int]]]:
    """The columns, and for each run ``{attack label: column number}``."""
    columns: list[Column] = []
    placement: list[dict[str, int]] = []
    for res in results_list:
        mine: dict[str, int] = {}
        for label, attack in res.attacks():
            key = attack_key(attack, res.defence)
            match = next((i for i, c in enumerate(columns)
                          if c.label == label and _compatible(c.key, key) and i not in mine.values()), None)
            if match is None:
                same_label = sum(c.label == label for c in columns)
                heading = _md_code(label) + (f" ({same_label + 1})" if same_label else "")
                columns.append(Column(heading, label, key, attack_settings(attack), res.defence != "none"))
                match = len(columns) - 1
            else:
                column = columns[match]
                column.key = _merge(column.key, key)
                if not column.defended and res.defence != "none":  # a defended run's words name every setting
                    column.settings, column.defended = attack_settings(attack), True
            mine[label] = match
        placement.append(mine)
    return columns, placement


def _cell(entry: Accuracy | None) -> str:
    """``84.6 [81.2, 87.4]`` (:func:`~freqpure.formatting.percent_cell`); empty where the run has no such entry."""
    return "" if entry is None else percent_cell(entry.accuracy, entry.ci95)


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render_table(results_list: list[Results]) -> str:
    """Markdown: the accuracy table (percent, 95% Wilson interval), then the settings and time of every run."""
    if not results_list:
        raise UsageError("no runs given")
    columns, placement = table_columns(results_list)
    head = ["defence", "n", "clean"] + [c.heading for c in columns] + ["worst case", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res, mine in zip(results_list, placement):
        by_column = {i: res.per_attack[label] for label, i in mine.items()}
        cells = [defence_settings(res), str(res.n), _cell(res.clean)]
        cells += [_cell(by_column.get(i)) for i in range(len(columns))]
        cells += [_cell(res.robust), _minutes(res.timings.sample_seconds_total)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in percent with the 95% Wilson interval. A column holds one attack setting; a label "
              "used with different settings gets a numbered column of its own. Settings and attack time per run:", ""]
    for res in results_list:
        t = res.timings
        lines.append(f"- **{_md_text(res.name)}** ({defence_settings(res)}; seed {res.seed}; "
                     f"noise scheme {res.noise_scheme}; "
                     f"{t.seconds_per_sample:.1f} s per sample in all, {res.world_size} process(es)"
                     f"{'; resumed' if res.resumed else ''}):")
        for label, attack in res.attacks():
            secs = t.per_attack_seconds_per_sample.get(label)
            time_text = f"; {secs:.1f} s per sample" if secs is not None else ""
            lines.append(f"  - {_md_code(label)}: {attack_settings(attack)}{time_text}")
        for warning in res.warnings:
            lines.append(f"  - warning: {warning}")
    return "\n".join(lines) + "\n"
