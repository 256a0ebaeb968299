"""The study's decision rule as code: what stage 4 (and stage 3) of ``configs/study-cifar10.yaml`` say.

The rule was written down before any stage ran (docs/verdict.md, the study config's header):

* **Primary endpoint**: worst-case robust accuracy in stage 4, FreqPure official vs DiffPure at the v2
  plan, paired on the same images, two-sided exact McNemar test.
* **holds** if FreqPure official is higher and p < 0.05; **worse** if DiffPure is higher and p < 0.05;
  **artefact of the attack** if FreqPure wins (higher, p < 0.05) only in stage 3 (the official
  mismatched 50:1 attack), not in stage 4; otherwise **no detectable difference**, with the interval.
* Secondary, amended 2026-12-04 before stage 4 finished: each defence's full-gradient run is compared
  with its matched-surrogate run **on the images both ran, paired** (exact McNemar, Newcombe interval of
  full − surrogate); if the full gradient is lower with p < 0.05, the surrogate understates the attack
  and stage 4 is re-read with the full-gradient numbers.

:func:`read_verdict` applies it to a study folder; a reading made before both primary parts hold every
planned image is **interim** and says so with its n and classes. :func:`verdict_markdown` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from freqpure.evaluation.paired import PairedRow, compare_samples
from freqpure.study.parts import PartSummary, class_span, part_summary

__all__ = ["PRIMARY", "STAGE3", "SECONDARY", "Pairing", "Verdict", "decide", "pair_parts", "read_verdict",
           "verdict_markdown", "ALPHA"]

ALPHA = 0.05
PRIMARY = ("stage4-honest-protocol", "freqpure-official-v2", "diffpure-v2")
STAGE3 = ("stage3-paper-protocol", "freqpure-official-v2", "diffpure-v2")
# (label, full-gradient part, matched-surrogate part), both in stage 4
SECONDARY = (("DiffPure", "diffpure-v2-full", "diffpure-v2"),
             ("FreqPure official", "freqpure-official-v2-full", "freqpure-official-v2"),
             ("FreqPure paper", "freqpure-paper-v2-full", "freqpure-paper-v2"))


@dataclass(frozen=True)
class Pairing:
    """Worst case of part A vs part B on the images both have: the paired row and what it covers."""

    a: str
    b: str
    row: PairedRow
    classes: str
    complete: bool  # both parts hold every planned image
    planned: int

    @property
    def significant(self) -> bool:
        return self.row.p < ALPHA

    def text(self) -> str:
        lo, hi = self.row.diff_ci95
        r = self.row
        mdd = r.min_detectable(r.n)
        mdd_text = (f"none: with {r.only_a + r.only_b} discordant image(s) in {r.n} no split of them reaches "
                    "p < 0.05 with power 0.8" if mdd is None else f"{100 * mdd:.1f} points")
        return (f"{self.a} {100 * r.accuracy_a:.1f} % vs {self.b} {100 * r.accuracy_b:.1f} % on {r.n} images "
                f"(classes {self.classes}); b/c = {r.only_a}/{r.only_b}, exact McNemar p = {_p(r.p)}; difference "
                f"{100 * r.difference:+.1f} points [95% Newcombe {100 * lo:+.1f}, {100 * hi:+.1f}]; smallest "
                f"difference detectable at this n (power 0.8): {mdd_text}")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _summary(out: Path, stage: str, part: str) -> PartSummary | None:
    folder = out / stage / part
    return part_summary(folder) if folder.is_dir() else None


def pair_parts(out: Path, a: tuple[str, str], b: tuple[str, str], metric: str = "worst case") -> Pairing | None:
    """``metric`` of part ``a`` = (stage, part) vs part ``b`` on their common images; None without any."""
    sa, sb = _summary(out, *a), _summary(out, *b)
    if sa is None or sb is None or not set(sa.records) & set(sb.records):
        return None
    rows = {r.metric: r for r in compare_samples(sa.records, sb.records).rows}
    common = sorted(set(sa.records) & set(sb.records))
    return Pairing(a[1], b[1], rows[metric], class_span([sa.records[i].label for i in common]),
                   sa.complete and sb.complete, sa.planned)


@dataclass(frozen=True)
class Verdict:
    """The rule's reading: ``outcome`` in holds / worse / artefact of the attack / no detectable difference."""

    outcome: str
    interim: bool
    primary: Pairing | None
    stage3: Pairing | None
    secondary: list[tuple[str, Pairing | None]]


def read_verdict(out: str | Path) -> Verdict:
    """Apply the pre-registered rule to the study folder ``out`` (see the module docstring)."""
    out = Path(out)
    primary = pair_parts(out, (PRIMARY[0], PRIMARY[1]), (PRIMARY[0], PRIMARY[2]))
    stage3 = pair_parts(out, (STAGE3[0], STAGE3[1]), (STAGE3[0], STAGE3[2]))
    secondary = [(label, pair_parts(out, (PRIMARY[0], full), (PRIMARY[0], matched)))
                 for label, full, matched in SECONDARY]
    if primary is None:
        return Verdict("not yet measured", True, None, stage3, secondary)
    outcome = decide(primary.row, None if stage3 is None else stage3.row)
    return Verdict(outcome, not primary.complete, primary, stage3, secondary)


def decide(primary: PairedRow, stage3: PairedRow | None) -> str:
    """The rule on the worst-case rows (FreqPure official = A, DiffPure = B) of stage 4 and stage 3."""
    if primary.p < ALPHA and primary.difference > 0:
        return "holds"
    if primary.p < ALPHA and primary.difference < 0:
        return "worse"
    if stage3 is not None and stage3.p < ALPHA and stage3.difference > 0:
        return "artefact of the attack"
    return "no detectable difference"


_MEANING = {
    "holds": "FreqPure's advantage holds under attacks that follow the defence",
    "worse": "FreqPure is worse than DiffPure under attacks that follow it",
    "artefact of the attack": "the published advantage is an artefact of the attack",
    "no detectable difference": "no detectable difference between FreqPure official and DiffPure at this n",
    "not yet measured": "the primary endpoint has no paired record yet",
}


def verdict_markdown(out: str | Path) -> str:
    """The rule's reading of ``out`` in words: outcome, primary and stage-3 pairings, the secondary check."""
    v = read_verdict(out)
    label = "Interim reading" if v.interim else "Verdict"
    lines = [f"**{label}: {v.outcome}** — {_MEANING[v.outcome]}."]
    if v.primary is not None:
        scope = (f"interim: {v.primary.row.n} of {v.primary.planned} planned images, classes {v.primary.classes} "
                 "only (the subset is ordered by class)" if v.interim else f"all {v.primary.row.n} images")
        lines += ["", f"* Primary endpoint (stage 4, worst case; {scope}): {v.primary.text()}."]
    if v.stage3 is not None:
        lines.append(f"* Stage 3 (the paper's mismatched attack): {v.stage3.text()}.")
    else:
        lines.append("* Stage 3 (the paper's mismatched attack): FreqPure official has no record yet, so the "
                     "'artefact of the attack' branch cannot be read.")
    for name, pairing in v.secondary:
        if pairing is None:
            lines.append(f"* Secondary, {name}: full gradient vs matched surrogate — no common images yet.")
            continue
        r = pairing.row
        reread = " The surrogate understates the attack: re-read stage 4 with the full-gradient numbers." \
            if pairing.significant and r.difference < 0 else ""
        lines.append(f"* Secondary, {name}: full gradient vs matched surrogate, {pairing.text()}.{reread}")
    return "\n".join(lines)
