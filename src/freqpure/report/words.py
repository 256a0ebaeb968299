"""The report's words about one run: the defence in a sentence, the purifier's facts, the sanity checks and
the protocol (without what only a purifier has, for the undefended run)."""

from __future__ import annotations

import math
from typing import Any

from freqpure.evaluation.results import Results
from freqpure.formatting import TITLES, percent

__all__ = ["defence_in_words", "purifier_facts", "sanity_rows", "protocol_rows", "bare_note", "attack_heading"]


def _purifier_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The purifier section with the variant's keys (mode, reference, step rule, grid, variance) filled in:
    a saved config keeps them ``null`` when they are as its variant says."""
    from freqpure.config.io import from_dict
    from freqpure.config.purifier import PurifierConfig

    if p.get("method") == "none":
        return p
    return {**p, "variant": p.get("variant") or "paper", **from_dict(PurifierConfig, p, "purifier").effective()}


def defence_in_words(results: Results) -> str:
    """The defence as a sentence fragment, e.g. ``DiffPure with cifar10-ddpm-small, plan 100:5 (...)``."""
    cfg = results.config
    p, d = _purifier_settings(cfg["purifier"]), cfg["defence"]
    if p["method"] == "none":
        return f"the classifier {cfg['classifier']['name']} alone, attacked directly"
    t_star, _, steps = str(p["rounds"]).partition(":")
    text = (f"{TITLES.get(p['method'], p['method'])} with the diffusion model {p['diffusion']}: "
            f"noise to t* = {t_star}, "
            f"then {steps or '?'} {p['sampler'].upper()} denoising steps (plan {p['rounds']})")
    if p["method"] == "freqpure":
        text += (f", keeping the input's amplitude within radius {p['amp_radius']:g} and its phase within "
                 f"radius {p['phase_radius']:g} (δ = {p['delta']:g}, {p['variant']} variant: {p['mode']} arithmetic, "
                 f"reference = {p['reference']})")
    return text + (f"; the classifier {cfg['classifier']['name']} decides by {d['vote']} vote over "
                   f"{d['ensemble']} purification(s) per image")


def purifier_facts(results: Results) -> list[tuple[str, str]]:
    cfg = results.config
    p, d = _purifier_settings(cfg["purifier"]), cfg["defence"]
    facts = [("classifier", cfg["classifier"]["name"])]
    if p["method"] == "none":
        return facts + [("purifier", "none: the attack and the judgement see the bare classifier")]
    facts += [("purifier", TITLES.get(p["method"], p["method"])), ("diffusion model", p["diffusion"]),
              ("plan", f"{p['rounds']} (t*:steps per round), {p['sampler']} sampler")]
    if p["method"] == "freqpure":
        facts += [("amplitude kept within radius", f"{p['amp_radius']:g}"),
                  ("phase kept within radius", f"{p['phase_radius']:g}, projected to within δ = {p['delta']:g}"),
                  ("variant", f"{p['variant']}: {p['mode']} arithmetic, reference = {p['reference']}, "
                              f"step rule {p['step_rule']}, grid {p['grid']}")]
    facts.append(("decision", f"{d['vote']} vote over {d['ensemble']} purification(s) per image"))
    if d.get("purify_size"):
        facts.append(("purified at", f"{d['purify_size']} px"))
    return facts


def sanity_rows(results: Results) -> list[dict[str, Any]]:
    s = results.sanity
    rows = []
    falls = s.get("undefended_falls")
    if falls:
        accs = ", ".join(f"{k}: {percent(v.accuracy)}" for k, v in results.undefended.items())
        rows.append({"check": "the bare classifier falls to a plain PGD",
                     "result": f"{accs} correct (must be <= {percent(falls['threshold'])})", "ok": falls["ok"]})
    for label, g in (s.get("gradients_finite_nonzero") or {}).items():
        median = g.get("median_norm")
        median_text = f", median norm {median:.3g}" if isinstance(median, int | float) and math.isfinite(median) else ""
        bad = g.get("samples_with_zero_or_nonfinite_gradient", 0)
        rows.append({"check": f"{label}: gradient through the purifier is finite and non-zero",
                     "result": f"{bad} image(s) with a zero or non-finite gradient{median_text}", "ok": g["ok"]})
    sweep = s.get("eps_sweep")
    if sweep:
        points = ", ".join(f"ε = {e * 255:.3g}/255: {percent(a)}" for e, a in zip(sweep["eps"], sweep["accuracy"]))
        points = points or str(sweep.get("verdict", ""))  # a sweep not run says why
        rows.append({"check": f"accuracy falls as ε grows ({sweep['attack']}, {sweep['samples']} images)",
                     "result": points, "ok": sweep["falls"]})
    return rows


# Protocol entries about the purifier's randomness or graph: they do not apply to the bare classifier.
_PURIFIER_ONLY = ("noise", "noise_scheme", "gradient_memory")


_BARE_WORDING = (("judged once by the defence with its own randomness (noise seeded by (seed, batch), independent of "
                  "the attack's draws)", "classified once by the bare classifier (deterministic: no purifier, no "
                  "vote)"),
                 ("following the exact gradient through every purification step",
                  "following the classifier's own gradient (there is no purifier)"),
                 ("(1 against a deterministic defence)", "(1: the bare classifier has no randomness)"))


def protocol_rows(results: Results) -> list[tuple[str, str]]:
    """The protocol of a run in words; for the undefended run, without what only a purifier has."""
    bare = results.config["purifier"]["method"] == "none"
    rows = []
    for key, value in results.protocol.items():
        if bare and key in _PURIFIER_ONLY:
            continue
        name = key.replace("_", " ")
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items())
        value = str(value)
        if bare:
            for old, new in _BARE_WORDING:
                value = value.replace(old, new)
        rows.append((name, value))
    return rows


def bare_note(results: Results) -> str | None:
    """One sentence on the no-defence card: what its attack column and its sanity row count, and why they differ."""
    if results.config["purifier"]["method"] != "none":
        return None
    text = (f"Attack columns: the same attack the defences face, aimed straight at the bare classifier; an image "
            f"counts only when the classifier gets both the clean and the attacked image right "
            f"({results.robust.correct} of {results.n} here, {percent(results.robust.accuracy)}).")
    if results.undefended:
        acc = next(iter(results.undefended.values()))
        steps = results.config.get("sanity", {}).get("undefended_steps", "?")
        text += (f" The sanity row is a separate check that the attack code works: a plain {steps}-step PGD on the "
                 f"same images, counted on the attacked image alone ({acc.correct} of {acc.n}, "
                 f"{percent(acc.accuracy)}); it must fall to "
                 f"{percent(results.sanity.get('undefended_falls', {}).get('threshold', 0.05))} or less. The two "
                 "differ "
                 "because the attacks differ (steps, step size, EOT, random start) and the sanity row does not need "
                 "the clean image right.")
    return text


def attack_heading(attack: dict[str, Any]) -> str:
    """A column heading in words, e.g. ``PGD L∞ 8/255, full gradient`` (the label is a slug for files)."""
    from freqpure.evaluation.table import attack_settings

    parts = attack_settings(attack).split(", ")
    return f"{parts[0]}, {parts[-1]}" if len(parts) > 1 else parts[0]
