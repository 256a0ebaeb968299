"""The pre-registered decision rule (freqpure.verdict) on hand-made rows and on the committed study records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from freqpure.evaluation.paired import PairedRow, mcnemar_p
from freqpure.study.verdict import decide, read_verdict, verdict_markdown

REPO = Path(__file__).resolve().parents[1]
S4 = REPO / "benchmarks" / "results" / "study-cifar10" / "stage4-honest-protocol"


def _row(only_a: int, only_b: int, n: int = 256, both: int = 40) -> PairedRow:
    return PairedRow("worst case", n, both + only_a, both + only_b, only_a, only_b, mcnemar_p(only_a, only_b))


@pytest.mark.parametrize(("primary", "stage3", "outcome"), [
    (_row(20, 4), None, "holds"),                                # FreqPure higher, p < 0.05
    (_row(4, 20), _row(30, 2), "worse"),                         # DiffPure higher, p < 0.05, whatever stage 3
    (_row(6, 4), _row(30, 2), "artefact of the attack"),         # wins only under the mismatched attack
    (_row(6, 4), _row(2, 30), "no detectable difference"),       # stage 3 lost: not an artefact either
    (_row(6, 4), None, "no detectable difference"),
    (_row(12, 4), None, "no detectable difference"),             # p = 0.077: higher is not enough
])
def test_the_rule(primary, stage3, outcome):
    assert decide(primary, stage3) == outcome


def test_the_committed_gpu_records_read_as_an_interim_no_difference(tmp_path):
    out = tmp_path / "study"
    for name in ("diffpure-v2", "freqpure-official-v2"):
        dst = out / "stage4-honest-protocol" / name
        dst.mkdir(parents=True)
        shutil.copy(S4 / name / "config.yaml", dst / "config.yaml")
        lines = (S4 / name / "samples.jsonl").read_text().splitlines(keepends=True)
        (dst / "samples.jsonl").write_text("".join(ln for ln in lines if '"device"' not in ln))  # GPU records
    v = read_verdict(out)
    assert v.outcome == "no detectable difference" and v.interim
    assert (v.primary.row.n, v.primary.row.only_a, v.primary.row.only_b, v.primary.classes) == (96, 1, 1, "0–3")
    text = verdict_markdown(out)
    assert text.startswith("**Interim reading: no detectable difference**") and "96 of 256 planned" in text
    assert "cannot be read" in text  # stage 3 has no FreqPure record in this copy
