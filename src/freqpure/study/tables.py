"""The study's tables: each stage's markdown (paired rows, intervals) and the clean-vs-robust plot."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from freqpure.config.io import from_dict
from freqpure.evaluation.clean import clean_outcomes, read_clean_summary, read_mapping_file
from freqpure.evaluation.paired import PairedRow, compare_samples, pair_outcomes
from freqpure.evaluation.results import Accuracy
from freqpure.evaluation.rundir import saved_config
from freqpure.formatting import percent_cell
from freqpure.passthrough import band_labels
from freqpure.study.config import StageConfig, StudyConfig


def _accuracy_cell(entry: Accuracy | dict[str, Any] | None) -> str:
    """``85.0 [81.2, 88.1]`` from an :class:`~freqpure.evaluation.results.Accuracy` (or its dict form)."""
    if isinstance(entry, dict):
        entry = Accuracy.from_dict(entry) if entry.get("n") else None
    if entry is None or not entry.n:
        return "—"
    return percent_cell(entry.accuracy, entry.ci95)


def _ptext(row: PairedRow | None) -> str:
    """``b/c, p …, difference [Newcombe interval]`` of a paired row (``—`` when there is none)."""
    if row is None:
        return "—"
    lo, hi = row.diff_ci95
    diff = f"{100 * row.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{row.only_a}/{row.only_b}, p {_pvalue(row.p)}, {diff}"


def _clean_table(stage: StageConfig, folder: Path) -> str:
    labels = band_labels(list(stage.bands))
    head = ["setting", "purifier", "n", "clean, 1 purification", "vs paired DiffPure (b/c, McNemar)",
            f"vote of {stage.vote_k} (n = {stage.vote_n})", "vote vs DiffPure"]
    head += [f"passthrough {k}" for k in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stage.settings:
        part = folder / s.name
        summary_path = part / "summary.json"
        if not summary_path.is_file():
            lines.append("| " + " | ".join([s.name, "not yet run"] + [""] * (len(head) - 2)) + " |")
            continue
        summ = read_clean_summary(part)
        pur = summ.purifier
        desc = pur["method"] if pur["method"] != "freqpure" else \
            f"freqpure r={pur['amp_radius']:g} δ={pur['delta']:g} {pur['variant']}"
        desc += f" {pur['rounds']}"
        pair = vote_pair = None
        if s.compare_to and s.compare_to != s.name and (folder / s.compare_to / "summary.json").is_file():
            pair = pair_outcomes("clean", clean_outcomes(part, "samples.jsonl", stage.n),
                                 clean_outcomes(folder / s.compare_to, "samples.jsonl", stage.n))
            if summ.vote is not None and (folder / s.compare_to / "vote.jsonl").is_file():
                vote_pair = pair_outcomes("vote", clean_outcomes(part, "vote.jsonl", stage.vote_n),
                                          clean_outcomes(folder / s.compare_to, "vote.jsonl", stage.vote_n))
        cells = [s.name, desc, str(summ.n), _accuracy_cell(summ.clean), _ptext(pair), _accuracy_cell(summ.vote),
                 _ptext(vote_pair)]
        for k in labels:
            pt = summ.passthrough.get(k) or {}
            cells.append("—" if not pt.get("n") else f"{pt['mean']:.2f} [{pt['lo']:.2f}, {pt['hi']:.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % [95% Wilson interval]. b/c = images this setting gets right and its DiffPure "
              "row wrong / the reverse (same images, same noise); p = two-sided exact McNemar. Passthrough = "
              f"fraction of a band-limited L-inf {stage.passthrough_eps:.4g} input perturbation that survives "
              "purification in its band (projection; 1 = passes unchanged, 0 = removed), mean [95% normal "
              f"interval] over the first {stage.passthrough_n} images."]
    return "\n".join(lines)


def _environment_text(envs: dict[str, int]) -> str:
    """``{"cuda/bf16": 96, "cpu/fp32": 32}`` → ``'96 cuda/bf16, 32 cpu/fp32'``."""
    return ", ".join(f"{n} {k}" for k, n in envs.items()) or "—"


def _diff_text(row: PairedRow, planned: int) -> tuple[str, str]:
    """The difference with its Newcombe interval, and the smallest difference detectable at this n / planned n."""
    lo, hi = row.diff_ci95
    diff = f"{100 * row.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    detect = []
    for n in dict.fromkeys((row.n, planned)):
        mdd = row.min_detectable(n)
        detect.append(f"n = {n}: " + ("none" if mdd is None else f"{100 * mdd:.1f}"))
    return diff, "; ".join(detect)


def _eval_table(stage: StageConfig, folder: Path) -> str:
    """Every part with records, finished or not (n, classes, device/precision), and its pairings."""
    from freqpure.evaluation.table import attack_settings, defence_settings
    from freqpure.study.parts import class_span, part_summary

    parts = {r.name: part_summary(folder / r.name, name=r.name) if (folder / r.name).is_dir() else None
             for r in stage.runs}
    columns: list[str] = []
    for s in parts.values():
        if s is not None:
            columns += [c for c in s.metrics() if c not in columns and c not in ("clean", "worst case")]
    head = (["run", "defence", "images", "classes", "computed on", "clean"] + [f"`{c}`" for c in columns]
            + ["worst case", "vs paired DiffPure, worst case: b/c, McNemar, difference [95% CI] (points)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired_lines = []
    for r in stage.runs:
        s = parts[r.name]
        if s is None:
            lines.append("| " + " | ".join([r.name, "not yet run"] + [""] * (len(head) - 2)) + " |")
            continue
        defence = defence_settings(SimpleNamespace(config=saved_config(folder / r.name)))  # type: ignore[arg-type]
        status = f"{s.n} of {s.planned}" + ("" if s.complete else " (interim)")
        pair_cell = "—"
        base = parts.get(r.compare_to) if r.compare_to and r.compare_to != r.name else None
        if base is not None:
            comparison = compare_samples(s.records, base.records, order=s.metrics())
            labels = [s.records[i].label for i in comparison.common]
            for row in comparison.rows:
                diff, detect = _diff_text(row, s.planned)
                paired_lines.append(f"| {r.name} vs {r.compare_to} | {row.metric} | {row.n} (classes "
                                    f"{class_span(labels)}) | {100 * row.accuracy_a:.1f} vs {100 * row.accuracy_b:.1f} "
                                    f"| {row.only_a}/{row.only_b}, p {_pvalue(row.p)} | {diff} | {detect} |")
                if row.metric == "worst case":
                    pair_cell = f"{row.only_a}/{row.only_b}, p {_pvalue(row.p)}, {diff} (n = {row.n})"
        cells = [r.name, defence, status, class_span(s.labels), _environment_text(s.environments),
                 _accuracy_cell(s.accuracy("clean"))]
        cells += [_accuracy_cell(s.accuracy(c)) for c in columns]
        cells += [_accuracy_cell(s.accuracy("worst case")), pair_cell]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % [95% Wilson interval] on the images recorded so far; a part marked interim "
              "covers only the classes listed (the subset is ordered by class). Worst case = correct on the clean "
              "image and on the final image of every attack of the run. b/c = images this run gets right and its "
              "DiffPure run wrong / the reverse, on the images both have (same images, same seeds); p = two-sided "
              "exact McNemar; difference = this run minus DiffPure in points with Newcombe's paired 95% interval."]
    if paired_lines:
        lines += ["", "| pair | metric | common images | accuracy (%) | b/c, McNemar | difference [95% CI] "
                  "(points) | smallest difference detectable (points; power 0.8, observed discordance) |",
                  "|---|---|---|---|---|---|---|", *paired_lines]
    for r in stage.runs:
        if parts[r.name] is not None:
            from freqpure.evaluation.config import AttackConfig

            attacks = (saved_config(folder / r.name) or {}).get("attacks", [])
            lines.append(f"- **{r.name}**: " + "; ".join(
                f"`{from_dict(AttackConfig, a).display()}`: {attack_settings(a)}" for a in attacks))
    return "\n".join(lines)


def _pvalue(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def stage_markdown(stage: StageConfig, folder: Path) -> str:
    """The stage's table (rows not yet run are marked), with planned and spent CPU hours."""
    timing_path = folder / "timing.json"
    timing = read_mapping_file(timing_path) if timing_path.is_file() else None
    planned = "not stated" if stage.planned_cpu_hours is None else f"{stage.planned_cpu_hours:g} CPU hours"
    spent = "nothing run yet" if timing is None else \
        f"{timing['cpu_hours_total']:.2f} CPU hours, {timing['wall_hours_total']:.2f} h wall " \
        f"({len(timing['invocations'])} invocation(s))"
    body = _clean_table(stage, folder) if stage.kind == "clean" else _eval_table(stage, folder)
    return f"## {stage.name}: {stage.title or stage.kind}\n\nPlanned: {planned}. Spent: {spent}.\n\n{body}\n"


def clean_vs_robust_points(study: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """One point per evaluate part with records: ``{"stage", "run", "method", "variant", "clean", "robust",
    "n", "planned", "classes"}`` (worst-case robust accuracy).

    Parts of one stage that share a subset (the same planned n) are all measured on the images every one of
    them has, so that an unfinished part is never set beside another on other images (other classes)."""
    from freqpure.study.parts import class_span, part_summary

    points = []
    for stage in study.stages:
        if stage.kind != "evaluate":
            continue
        found = {}
        for r in stage.runs:
            part = out / stage.name / r.name
            summary = part_summary(part, name=r.name) if part.is_dir() else None
            if summary is not None:
                found[r.name] = summary
        for planned in sorted({s.planned for s in found.values()}):
            group = {name: s for name, s in found.items() if s.planned == planned}
            common = sorted(set.intersection(*(set(s.records) for s in group.values())))
            if not common:
                continue
            for name, s in group.items():
                recs = [s.records[i] for i in common]
                pur = (saved_config(out / stage.name / name) or {}).get("purifier") or {}
                points.append({"stage": stage.name, "run": name, "method": pur.get("method"),
                               "variant": pur.get("variant") or "paper",
                               "clean": sum(r.clean_correct for r in recs) / len(recs),
                               "robust": sum(r.robust for r in recs) / len(recs), "n": len(recs),
                               "planned": planned, "classes": class_span([r.label for r in recs])})
    return points


def clean_vs_robust_plot(points: list[dict[str, Any]], path: str | Path) -> Path | None:
    """PNG scatter of clean vs worst-case robust accuracy, one point per defence/setting (marker = stage,
    colour = DiffPure / FreqPure paper / FreqPure official). ``None`` when there is no point yet."""
    if not points:
        return None
    from freqpure.plots import new_figure

    fig, ax = new_figure(8.5, 5.5)
    colours = {"diffpure": "#1f77b4", "freqpure/paper": "#2ca02c", "freqpure/official": "#d62728"}
    markers = "osD^v<>"
    stages = list(dict.fromkeys(p["stage"] for p in points))
    seen = set()
    placed: list[tuple[float, float]] = []
    for p in points:
        key = "diffpure" if p["method"] == "diffpure" else f"{p['method']}/{p['variant']}"
        label = key if key not in seen else None
        seen.add(key)
        ax.scatter(100 * p["clean"], 100 * p["robust"], color=colours.get(key, "#7f7f7f"),
                   marker=markers[stages.index(p["stage"]) % len(markers)], label=label, s=40)
        interim = (f" (n = {p['n']} of {p['planned']}, classes {p.get('classes')})"
                   if p.get("n", 0) < p.get("planned", 0) else "")
        xy = (100 * p["clean"], 100 * p["robust"])
        stacked = sum(abs(x - xy[0]) < 0.5 and abs(y - xy[1]) < 0.5 for x, y in placed)  # coincident points
        placed.append(xy)
        ax.annotate(f"{p['stage'].split('-')[0]}/{p['run']}{interim}", xy, fontsize=6,
                    xytext=(4, 3 - 8 * stacked), textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("clean vs worst-case robust accuracy\n(marker = stage; the runs of a stage on their common images)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
