"""The report page: the sections of a run, a comparison or an analysis assembled into one HTML file
(``templates/report.html.j2``), kept under :data:`MAX_BYTES`, and written atomically."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

from freqpure._fileio import write_text_atomic
from freqpure.errors import UsageError
from freqpure.formatting import interval, percent
from freqpure.report.figures import (
    CYCLIC,
    SEQUENTIAL,
    accuracy_png,
    axes_key,
    colour_bar,
    grid_png,
    image_view,
    spectra_rows,
)
from freqpure.report.inputs import AnalysisData, ReportInputs, RunData
from freqpure.report.words import (
    attack_heading,
    bare_note,
    defence_in_words,
    protocol_rows,
    purifier_facts,
    sanity_rows,
)

__all__ = ["write_report", "render_html", "is_report", "what_was_run", "REPORT_NAME", "MAX_BYTES", "CSP"]

REPORT_NAME = "report.html"
MAX_BYTES = 2_000_000  # the page stays under 2 MB: fewer grid rows and spectra are shown when it would not
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _anchor(text: str) -> str:
    return "run-" + re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-").lower()


def _attack_configs(runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    return {label: attack for run in runs for label, attack in run.results.attacks()}


def _paired(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    from freqpure.errors import FreqpureError
    from freqpure.evaluation.paired import compare_samples

    with_samples = [r for r in runs if r.samples]
    pairs = list(combinations(with_samples, 2))
    defended = [(a, b) for a, b in pairs if a.method != "none" and b.method != "none"]
    pairs = defended or pairs  # against the bare classifier the comparison says little when defences can be paired
    out = []
    for a, b in pairs:
        try:
            cmp = compare_samples(a.samples, b.samples, ["clean", *a.results.per_attack, "worst case"])
        except FreqpureError:
            continue  # no common images: nothing to pair
        rows = [{"metric": r.metric, "a": percent(r.accuracy_a), "b": percent(r.accuracy_b), "only_a": r.only_a,
                 "only_b": r.only_b, "p": f"{r.p:.3g}", "significant": r.p < 0.05} for r in cmp.rows]
        worst = cmp.rows[-1]
        out.append({"a": a.title, "b": b.title, "n": len(cmp.common), "rows": rows, "worst": worst,
                    "both_defended": a.method != "none" and b.method != "none"})
    return out


def _reading(runs: Sequence[RunData], paired: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        r = run.results
        attacks = len(r.per_attack)
        if run.method == "none":
            lines.append(f"Without a defence, the attack{'s' if attacks > 1 else ''} leave{'' if attacks > 1 else 's'} "
                         f"{r.robust.correct} of {r.n} test images correctly classified ({percent(r.robust.accuracy)}, "
                         f"clean accuracy {percent(r.clean.accuracy)}): "
                         + ("the attack works on the bare classifier, so whatever a defence keeps is the defence's "
                            "doing." if r.robust.accuracy <= 0.1 else "the attack is weak even without a defence; "
                            "read the defended numbers with care."))
        else:
            lines.append(f"{run.title} keeps {r.robust.correct} of {r.n} test images correct under the worst case of "
                         f"{attacks} adaptive attack{'s' if attacks > 1 else ''} (robust accuracy "
                         f"{percent(r.robust.accuracy)}, 95% interval {interval(r.robust.ci95)}), against "
                         f"{percent(r.clean.accuracy)} on clean images.")
    shown = [p for p in paired if p["both_defended"]] or paired[:1]
    for p in shown:
        w = p["worst"]
        verdict = ("a difference larger than chance explains (p < 0.05)" if w.p < 0.05
                   else "not distinguishable from chance at this n (p >= 0.05)")
        lines.append(f"On the {p['n']} images both runs attacked, {p['a']} is robust where {p['b']} is not on "
                     f"{w.only_a} image(s), the reverse on {w.only_b} (exact McNemar p = {w.p:.3g}): {verdict}.")
    warned = [run.title for run in runs if run.results.warnings]
    if warned:
        lines.append(f"Warnings were raised for {', '.join(warned)}: see the section of that defence before trusting "
                     "its numbers.")
    return lines


def what_was_run(runs: Sequence[RunData]) -> dict[str, Any]:
    from freqpure.evaluation.table import attack_settings

    defences = [{"title": run.title, "text": defence_in_words(run.results)} for run in runs]
    used: dict[str, list[str]] = {}  # every run's attacks, each listed once with the runs that faced it
    for run in runs:
        for _, attack in run.results.attacks():
            used.setdefault(attack_settings(attack), [])
            if run.title not in used[attack_settings(attack)]:
                used[attack_settings(attack)].append(run.title)
    attacks = [text + ("" if len(runs) == 1 or len(titles) == len(runs) else f" (against {', '.join(titles)})")
               for text, titles in used.items()]
    first = runs[0].results
    data = f"{first.n} test images ({first.data}), seed {first.seed}, noise scheme {first.noise_scheme}"
    return {"defences": defences, "attacks": attacks, "data": data, "models": _models_note(runs)}


def _models_note(runs: Sequence[RunData]) -> str | None:
    """A sentence when the runs use freqpure's bundled models: small CPU-trained models, not the paper's."""
    from freqpure.models.registry import model_info

    names = set()
    for run in runs:
        cfg = run.results.config
        names.add(cfg["classifier"]["name"])
        if cfg["purifier"]["method"] != "none":
            names.add(cfg["purifier"]["diffusion"])
    bundled = []
    for name in sorted(names):
        try:
            if model_info(name).get("bundled"):
                bundled.append(name)
        except Exception:  # a file path or an unknown name: not a bundled model
            continue
    if not bundled:
        return None
    return (f"The models ({', '.join(bundled)}) are freqpure's bundled small models, trained on a CPU for this "
            "project (a ResNet of about 90% clean accuracy and a 2.25M-parameter UNet), not the paper's "
            "(WRN-28-10 and the published score models): these numbers show how the defences behave at small scale, "
            "not the paper's result.")


def _accuracy_table(runs: Sequence[RunData]) -> dict[str, Any]:
    from freqpure.evaluation.table import table_columns

    columns, placement = table_columns([run.results for run in runs])

    def cell(acc):
        if acc is None:
            return None
        return {"value": percent(acc.accuracy), "interval": interval(acc.ci95), "count": f"{acc.correct}/{acc.n}"}

    rows = []
    for run, mine in zip(runs, placement):
        r = run.results
        by_col = {i: r.per_attack[label] for label, i in mine.items()}
        rows.append({"title": run.title, "anchor": _anchor(run.title), "n": r.n, "clean": cell(r.clean),
                     "attacks": [cell(by_col.get(i)) for i in range(len(columns))], "robust": cell(r.robust)})
    configs = _attack_configs(runs)

    def heading(c) -> str:
        words = attack_heading(configs[c.label]) if c.label in configs else c.heading.strip("`")
        suffix = re.search(r" \(\d+\)$", c.heading)
        return words + (suffix.group(0) if suffix else "")

    return {"columns": [{"heading": heading(c), "settings": c.settings, "label": c.label} for c in columns],
            "rows": rows}


def _run_section(run: RunData, spectra_examples: int) -> dict[str, Any]:
    from freqpure.evaluation.table import attack_settings

    r = run.results
    attacks = []
    for label, attack in r.attacks():
        secs = r.timings.per_attack_seconds_per_sample.get(label)
        acc = r.per_attack[label]
        attacks.append({"label": attack_heading(attack), "slug": label, "settings": attack_settings(attack),
                        "accuracy": f"{percent(acc.accuracy)} {interval(acc.ci95)}",
                        "time": "" if secs is None else f"{secs:.2f} s per image"})
    t = r.timings
    facts = [*purifier_facts(r), ("images", f"{r.n} ({r.data})"), ("seed", str(r.seed)),
             ("time", f"{t.seconds_per_sample:.2f} s per image, {t.sample_seconds_total / 60:.1f} min of batch work on "
                      f"{r.world_size} process(es)" + ("; resumed from an interrupted run" if r.resumed else ""))]
    spectra_blocks = []
    if run.method != "none" and run.examples is not None:
        height, width = run.examples["clean"].shape[-2:]
        for i in range(min(spectra_examples, run.examples["clean"].shape[0])):
            rows, scale, amp_max = spectra_rows(run.examples, i)
            bars = [{"image": image_view(colour_bar(SEQUENTIAL), "colour bar"), "low": "0", "high": f"{amp_max:.3g}"},
                    {"image": image_view(colour_bar(CYCLIC), "colour bar"), "low": "−π", "high": "π"},
                    {"image": image_view(colour_bar(SEQUENTIAL), "colour bar"), "low": "0", "high": scale},
                    {"image": image_view(colour_bar(SEQUENTIAL), "colour bar"), "low": "0", "high": "π"}]
            spectra_blocks.append({"index": i, "rows": rows, "scale": scale, "bars": bars,
                                   "axes": image_view(axes_key(height, width), "spectrum axes"),
                                   "size": f"{height}x{width}"})
    return {"title": run.title, "anchor": _anchor(run.title), "path": str(run.path), "facts": facts,
            "attacks": attacks, "sanity": sanity_rows(r), "warnings": r.warnings, "protocol": protocol_rows(r),
            "spectra": spectra_blocks, "purifier": run.method != "none", "note": bare_note(r)}


def _analysis_view(analysis: AnalysisData) -> dict[str, Any]:
    data = analysis.data
    summary = data.get("summary", {}) if isinstance(data.get("summary"), dict) else {}
    cases = []
    for name, case in (summary.get("cases") or {}).items():
        case = case if isinstance(case, dict) else {}
        cases.append({"name": name, "n": case.get("n", ""),
                      "amplitude": _fmt((case.get("amplitude") or {}).get("spearman")),
                      "phase": _fmt((case.get("phase") or {}).get("spearman"))})
    targets = []
    for name, t in (data.get("targets") or {}).items():
        t = t if isinstance(t, dict) else {"value": t}
        targets.append({"name": name, "value": _fmt(t.get("value")), "target": str(t.get("target", "")),
                        "pass": t.get("pass")})
    plots = [{"name": name, "image": image_view(png, name)} for name, png in analysis.plots.items()]
    settings = data.get("settings")
    return {"file": analysis.path.name, "cases": cases, "targets": targets, "plots": plots,
            "settings": json.dumps(settings, indent=2, default=str) if settings is not None else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(v)


def _raw(inputs: ReportInputs) -> list[dict[str, str]]:
    raw = []
    if inputs.demo is not None:
        raw.append({"name": "demo settings (results.json)",
                    "text": yaml.safe_dump(inputs.demo.settings, sort_keys=False)})
    for run in inputs.runs:
        r = run.results
        meta = {"schema_version": r.schema_version, "noise_scheme": r.noise_scheme, "versions": r.versions}
        raw.append({"name": f"{run.title}: config.yaml", "text": _without_unused_keys(run.config_text)})
        raw.append({"name": f"{run.title}: versions and noise scheme", "text": yaml.safe_dump(meta, sort_keys=False)})
    return raw


def _without_unused_keys(config_text: str) -> str:
    """The saved config text, without ``data.image_size`` for CIFAR-10 (a key only ImageNet runs use)."""
    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return config_text
    section = data.get("data") if isinstance(data, dict) else None
    if not isinstance(section, dict) or section.get("dataset") != "cifar10" or "image_size" not in section:
        return config_text
    lines = config_text.splitlines()
    out, in_data = [], False
    for line in lines:
        if not line.startswith((" ", "\t")):
            in_data = line.startswith("data:")
        if in_data and line.strip().startswith("image_size:"):
            continue
        out.append(line)
    out.append("# data.image_size left out: it applies to ImageNet only (CIFAR-10 images are used at 32x32)")
    return "\n".join(out) + "\n"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parents[1] / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render_html(inputs: ReportInputs, *, max_examples: int = 8, max_spectra: int = 1) -> str:
    """The report page for ``inputs`` (see :func:`write_report`)."""
    from freqpure import __version__

    runs = inputs.runs
    names = ", ".join(p.resolve().name for p in inputs.paths)
    page: dict[str, Any] = {"title": f"freqpure report: {names}", "kind": inputs.kind, "version": __version__,
                            "paths": [str(p) for p in inputs.paths], "csp": CSP, "runs": [], "grid": None,
                            "analysis": None, "paired": [], "reading": [], "what": None, "accuracy": None,
                            "accuracy_plot": None, "raw": _raw(inputs)}
    if runs:
        paired = _paired(runs)
        page.update(what=what_was_run(runs), accuracy=_accuracy_table(runs), paired=paired,
                    reading=_reading(runs, paired), accuracy_plot=image_view(accuracy_png(runs), "accuracy plot"),
                    runs=[_run_section(run, max_spectra) for run in runs])
        if max_examples > 0 and any(run.examples is not None for run in runs):
            use_saved = inputs.grid_png is not None and max_examples >= 8
            png = inputs.grid_png if use_saved else grid_png(runs, max_examples)
            alt = "examples: clean, adversarial and purified images with predictions"
            page["grid"] = {"image": image_view(png, alt),
                            "defences": [run.title for run in runs]}
    if inputs.analysis is not None:
        page["analysis"] = _analysis_view(inputs.analysis)
    return _environment().get_template("report.html.j2").render(page=page)


def write_report(
    run_dir: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_examples: int = 8,
    max_spectra: int = 1,
) -> Path:
    """Write a self-contained HTML report and return its path.

    Args:
        run_dir: an evaluation run dir, a demo dir, an analysis dir, or a list of run dirs (a comparison).
        out: output file (default ``run_dir/report.html``; required for several run dirs).
        max_examples: rows of the example grid (0: no grid).
        max_spectra: examples whose amplitude/phase spectra are shown per defended run.

    The page is kept under :data:`MAX_BYTES` by showing fewer spectra, then fewer grid rows.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
        ValueError: a file is unreadable or malformed (the message names it).
    """
    if max_examples < 0 or max_spectra < 0:
        raise UsageError("max_examples and max_spectra must be >= 0")
    many = not isinstance(run_dir, str | Path)
    if many and len(run_dir) == 1:
        run_dir, many = run_dir[0], False
    if many and out is None:
        raise UsageError("several run dirs: give the output file (--out FILE)")
    inputs = ReportInputs.read(run_dir)
    page = render_html(inputs, max_examples=max_examples, max_spectra=max_spectra)
    while len(page.encode()) > MAX_BYTES and (max_spectra > 0 or max_examples > 2):
        max_spectra, max_examples = (max_spectra - 1, max_examples) if max_spectra > 0 else (0, max_examples // 2)
        page = render_html(inputs, max_examples=max_examples, max_spectra=max_spectra)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    return write_text_atomic(path, page)  # a unique temporary name: never another file, never half a page


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a page written by :func:`write_report` (which a new report may replace)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return "<title>freqpure report:" in head and CSP in head
