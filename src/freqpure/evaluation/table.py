"""One markdown table from several evaluation runs: defences as rows, clean and per-attack accuracy as columns.

Each run directory must hold a finished ``results.json`` (written by :func:`freqpure.evaluation.evaluate`).
Columns are the attack labels (``attacks.N.label`` or the generated ``pgd-linf-8/255-full-eot4``) in the
order they first appear; a run without an attack of that label leaves its cell empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from freqpure.attacks import default_step_size
from freqpure.errors import NotFoundError, UsageError

__all__ = ["load_results", "defence_settings", "attack_settings", "render_table"]


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``results.json`` of ``run_dir``; a clear error when the run is missing or unfinished."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        hint = " (the run is unfinished: resume it with --resume)" if (Path(run_dir) / "samples.jsonl").exists() else ""
        raise NotFoundError(f"{path} does not exist{hint}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); re-run the evaluation") from None
    missing = [k for k in ("config", "clean", "robust", "per_attack", "n") if k not in results]
    if missing:
        raise UsageError(f"{path} lacks {missing}: not a freqpure evaluate results file")
    return results


def defence_settings(results: dict[str, Any]) -> str:
    """The defence in a few words, e.g. ``FreqPure 100:5 ddpm, r_a=3 r_p=3 δ=0.3 (paper), majority vote of 3``."""
    cfg = results["config"]
    p, d = cfg["purifier"], cfg["defence"]
    method = p["method"]
    if method == "none":
        return "none (classifier only)"
    text = f"{'FreqPure' if method == 'freqpure' else 'DiffPure'} {p['rounds']} {p['sampler']}"
    if method == "freqpure":
        text += f", r_a={p['amp_radius']:g} r_p={p['phase_radius']:g} δ={p['delta']:g} ({_variant_text(p)})"
    return text + f", {d['vote']} vote of {d['ensemble']}"


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
    step = attack.get("step_size")
    step = default_step_size(attack["norm"], eps, attack["steps"]) if step is None else step
    step_text = f" of {round(step * 255, 2):g}/255" if attack["norm"] == "linf" else f" of {step:.4g}"
    return (f"{attack['name'].upper()} {norm} {eps_text}, {attack['steps']} steps{step_text}, EOT {attack['eot']}, "
            f"{'random start, ' if attack['random_start'] else ''}{grad} gradient")


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render_table(results_list: list[dict[str, Any]]) -> str:
    """Markdown: the accuracy table (percent, 95% Wilson interval), then the settings and time of every run."""
    if not results_list:
        raise UsageError("no runs given")
    columns: list[str] = []
    for res in results_list:
        columns += [k for k in res["per_attack"] if k not in columns]
    head = ["defence", "n", "clean"] + [f"`{c}`" for c in columns] + ["worst case", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results_list:
        total = res.get("timings", {}).get("sample_seconds_total")
        cells = [defence_settings(res), str(res["n"]), _cell(res["clean"])]
        cells += [_cell(res["per_attack"].get(c)) for c in columns]
        cells += [_cell(res["robust"]), _minutes(total)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in percent with the 95% Wilson interval. Settings and attack time per run:", ""]
    for res in results_list:
        t = res.get("timings", {})
        lines.append(f"- **{res['name']}** ({defence_settings(res)}; seed {res['seed']}; "
                     f"{t.get('seconds_per_sample', float('nan')):.1f} s per sample in all, "
                     f"{res.get('world_size', 1)} process(es)):")
        # per_attack keeps the order of config.attacks (labels are unique within a run)
        attack_secs = t.get("per_attack_seconds_per_sample", {})
        for attack, label in zip(res["config"]["attacks"], res["per_attack"], strict=True):
            secs = attack_secs.get(label)
            time_text = f"; {secs:.1f} s per sample" if secs is not None else ""
            lines.append(f"  - `{label}`: {attack_settings(attack)}{time_text}")
        for warning in res.get("warnings", []):
            lines.append(f"  - warning: {warning}")
    return "\n".join(lines) + "\n"
