"""Typed results (schema 1), the schema-0 reader on the real recorded runs, the settings-keyed table and the
paired McNemar comparison."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from freqpure.errors import UsageError
from freqpure.evaluation.paired import compare_samples, mcnemar_p
from freqpure.evaluation.results import (
    LEGACY_NOISE_SCHEME,
    SCHEMA_VERSION,
    Accuracy,
    Results,
    SampleRecord,
    read_results,
    read_samples,
)
from freqpure.evaluation.table import render_table, table_columns

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TABLE_RUNS = [RECORDED / f"cifar10-{d}-table-bundled" for d in ("none", "diffpure", "freqpure")]


def test_schema0_results_files_are_read_and_upgraded() -> None:
    for run in TABLE_RUNS:
        raw = json.loads((run / "results.json").read_text())
        assert "schema_version" not in raw, "these are the schema-0 files written before the schema"
        res = read_results(run)
        assert res.schema_version == SCHEMA_VERSION and res.noise_scheme == LEGACY_NOISE_SCHEME
        assert res.resumed is False and res.n == 512 and res.seed == 0
        assert res.clean == Accuracy.from_dict(raw["clean"]) and res.robust.correct == raw["robust"]["correct"]
        assert list(res.per_attack) == list(raw["per_attack"]) and res.versions["torch"] == raw["versions"]["torch"]
        assert res.eval_config().attacks[0].steps == 20
        again = Results.from_dict(json.loads(json.dumps(res.to_dict())))
        assert again == res, "schema 1 round-trips through JSON"


def test_schema0_samples_are_read(tmp_path) -> None:
    counts = {"cifar10-diffpure-table-bundled": 512, "cifar10-freqpure-table-bundled": 512,
              "cifar10-diffpure-table-bundled-pa-partial": 120, "cifar10-freqpure-table-bundled-pa-partial": 88}
    for name, n in counts.items():
        samples = read_samples(RECORDED / name)
        assert len(samples) == n
        rec = next(iter(samples.values()))
        assert isinstance(rec, SampleRecord) and rec.schema_version == SCHEMA_VERSION
        assert rec.robust == (rec.clean_correct and all(a.correct for a in rec.attacks.values()))
    # the recorded per-sample outcomes add up to the recorded accuracies
    res = read_results(TABLE_RUNS[1])
    samples = read_samples(TABLE_RUNS[1])
    assert sum(r.robust for r in samples.values()) == res.robust.correct
    assert sum(r.clean_correct for r in samples.values()) == res.clean.correct
    with pytest.raises(UsageError, match="newer than this freqpure"):
        SampleRecord.from_dict({**rec.to_dict(), "schema_version": SCHEMA_VERSION + 1})
    (tmp_path / "results.json").write_text('{"n": 3}')
    with pytest.raises(UsageError, match="not a freqpure evaluate results file"):
        read_results(tmp_path)


def test_paired_comparison_reproduces_the_recorded_table() -> None:
    """RESULTS.md: DiffPure vs FreqPure at n = 512 (counts 10/6, 38/0, 36/0, 30/3, 23/0)."""
    cmp = compare_samples(read_samples(TABLE_RUNS[1]), read_samples(TABLE_RUNS[2]))
    rows = {r.metric: r for r in cmp.rows}
    assert len(cmp.common) == 512
    assert (rows["clean"].only_a, rows["clean"].only_b) == (10, 6) and round(rows["clean"].p, 2) == 0.45
    assert (rows["PGD-EOT Linf (surrogate)"].only_a, rows["PGD-EOT Linf (surrogate)"].only_b) == (38, 0)
    assert (rows["worst case"].only_a, rows["worst case"].only_b) == (23, 0) and rows["worst case"].p < 1e-3
    assert rows["worst case"].accuracy_a == pytest.approx(0.1953125)


def test_mcnemar_matches_the_binomial_test() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in ((0, 0), (10, 6), (1, 8), (23, 0), (7, 5), (40, 41)):
        expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
        assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9)


def test_table_of_the_recorded_runs_matches_the_recorded_table() -> None:
    text = render_table([read_results(r) for r in TABLE_RUNS])
    recorded = (RECORDED / "robustness-table.md").read_text().splitlines()
    assert text.splitlines()[:5] == recorded[:5], "same columns and cells as the table recorded with schema 0"
    assert "noise scheme linear-v1" in text


def _with_attack(res: Results, **changes) -> Results:
    data = copy.deepcopy(res.to_dict())
    for attack in data["config"]["attacks"]:
        attack.update(changes)
    data["name"] = res.name + "-changed"
    return Results.from_dict(data)


def test_table_never_merges_attacks_of_different_strength() -> None:
    diffpure = read_results(TABLE_RUNS[1])
    weaker = _with_attack(diffpure, steps=5, eps=4 / 255)
    columns, placement = table_columns([diffpure, weaker])
    assert len(columns) == 6, "same labels, different settings: separate columns"
    assert [c.heading for c in columns[3:]] == ["`PGD-EOT Linf (surrogate)` (2)", "`PGD-EOT Linf (full)` (2)",
                                               "`BPDA-EOT` (2)"]
    assert set(placement[1].values()) == {3, 4, 5}
    for change in ({"eot": 8}, {"step_size": 2 / 255}, {"surrogate_rounds": "100:2"}, {"gradient": "full"},
                   {"norm": "l2", "eps": 0.5}):
        cols, _ = table_columns([diffpure, _with_attack(diffpure, **change)])
        assert len(cols) > 3, f"{change} must not share a column"
    same, _ = table_columns([diffpure, _with_attack(diffpure, eot_batch=2)])
    assert len(same) == 3, "eot_batch changes no result: the column is shared"
    # against the bare classifier gradient mode and EOT are moot: the undefended run shares the columns
    cols, _ = table_columns([read_results(r) for r in TABLE_RUNS])
    assert len(cols) == 3
    text = render_table([diffpure, weaker])
    assert "PGD L∞ 4/255, 5 steps of" in text and "PGD L∞ 8/255, 20 steps of 1/255" in text
