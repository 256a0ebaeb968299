"""Every committed table reproduces from its committed records by today's code (issue #22's bar: "the full
test tier and every recorded table reproduce unchanged").

1. Each evaluation run folder under ``benchmarks/results/`` with ``samples.jsonl`` and ``results.json`` is
   copied (records and config only) and summarised again by :func:`freqpure.study.parts.finalize_from_records`,
   which computes nothing; every count, n, accuracy, interval, per-attack and undefended number must equal the
   committed ``results.json`` bit for bit, and the table lines of ``results.md`` must be the same text.
2. ``robustness-table.md`` is made again by ``freqpure table`` from the run folders it names.
3. The study ``study-cifar10``: ``study.md`` and each ``stage.md`` are rewritten from the records by
   ``run_study(..., execute=False)`` on a copy; their table lines and the verdict section must be the same.

The pilot (``study-pilot-n64``) is proven by ``tests/test_clean_runs.py`` and left out here.

No test needs the CIFAR-10 images: ``finalize_from_records`` only asks the data for the subset's indices (in
subset order) and the class names, which the records themselves hold (``index``, ``position``); the one
``data``-marked test checks those indices against the configured subset where the data is present.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from freqpure.config import from_dict
from freqpure.evaluation.config import EvalConfig
from freqpure.evaluation.records import Results, SampleRecord
from freqpure.evaluation.results import read_results, read_samples
from freqpure.evaluation.rundir import saved_config
from freqpure.evaluation.store import without_environment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PILOT = RESULTS / "study-pilot-n64"  # tests/test_clean_runs.py
STUDY = RESULTS / "study-cifar10"

RUNS = sorted(p.parent for p in RESULTS.rglob("results.json")
              if (p.parent / "samples.jsonl").is_file() and PILOT not in p.parents)


def _name(folder: Path) -> str:
    return str(folder.relative_to(RESULTS))


def _table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def _fingerprinted(folder: Path) -> bool:
    """Whether the folder's records name the config they were made with (schema 1, ``config_sha256``)."""
    lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    marked = {"config_sha256" in r for r in lines}
    assert len(marked) == 1, f"{folder}: some records are fingerprinted and some not"
    return marked.pop()


class _RecordsData:
    """The part of :class:`~freqpure.evaluation.components.EvalData` that summarising records reads: the
    subset's indices in subset order (from the records' ``position``), class names and a source text."""

    def __init__(self, records: dict[int, SampleRecord]) -> None:
        from freqpure.data import CIFAR10_CLASSES

        order = sorted(records.values(), key=lambda r: r.position)
        assert [r.position for r in order] == list(range(len(order))), "the records do not cover positions 0..n-1"
        self.indices = np.array([r.index for r in order], dtype=np.int64)
        self.labels = torch.tensor([r.label for r in order], dtype=torch.int64)
        self.class_names = list(CIFAR10_CLASSES)
        self.source = "the committed records"

    def images(self, positions):  # pragma: no cover - summarising never looks at an image
        raise AssertionError("finalize_from_records must not compute anything")


def _rebuild(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Results, Path]:
    """Today's ``results.json``/``results.md`` of a copy of ``folder`` holding only its records, config and
    example parts, written by :func:`finalize_from_records`; returns the results and the copy."""
    import freqpure.evaluation.components as components
    from freqpure.study.parts import finalize_from_records

    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("results.json", "results.md", "examples.npz",
                                                                 ".freqpure.lock"))
    if (copy / "config.yaml").is_file():
        cfg = from_dict(EvalConfig, saved_config(copy))
    else:  # the first runs (before config.yaml was saved beside the records): their config is in results.json
        cfg = read_results(folder).eval_config()
    records = read_samples(copy)
    monkeypatch.setattr(components, "load_eval_data", lambda data_cfg: _RecordsData(records))
    # records of schema 0 (before records named their config, 2026-12-02) are summarised without a fingerprint
    return finalize_from_records(copy, cfg), copy


# what a rebuild from records legitimately writes differently, and why
_NOT_FROM_RECORDS = {
    "versions": "the packages and platform of the machine that writes the file",
    "data": "the path of the data folder on the machine that wrote the file",
    "resumed": "whether the invocation that wrote the file continued an earlier one",
    "world_size": "the processes of the invocation that wrote the file (finalize_from_records is one process)",
    "schema_version": "results.json of schema 0 are read through upgrade_results_v0; today's writer writes 1",
    "timings": "compared below to the last bits of a float sum (records summed in another order), the wall "
               "seconds of the writing invocation left out",
    "config": "compared below as a full config without device and precision (environment: they may change "
              "between invocations; each record names its own)",
    "protocol": "compared below without the writing invocation's runtime decisions",
    "sanity": "compared below without the eps sweep, which attacks anew (marked not run from records)",
    "environments": "compared below where the committed file has the field (written since 2026-12-04)",
    "examples": "compared below where the example parts were committed (examples.npz is assembled from them)",
    "noise_scheme": "compared below where the records name their scheme (schema 1); schema-0 records predate "
                    "the field and their results.json carry it from upgrade_results_v0",
}
_RUNTIME_DECISIONS = ("gradient_memory", "precision_choice")  # finalize.runtime_decisions: the invocation's own


def test_the_recorded_run_folders_are_found():
    names = {_name(f) for f in RUNS}
    assert {"cifar10-diffpure-table-bundled", "cifar10-freqpure-table-bundled", "precision-equivalence-512/fp32",
            "precision-equivalence-512/bf16", "study-cifar10/stage3-paper-protocol/diffpure-v2",
            "study-cifar10/stage4-honest-protocol/diffpure-v2-full",
            "study-cifar10/stage4-honest-protocol/freqpure-official-v2-full"} <= names, names
    for folder in RUNS:
        assert (folder / "results.md").is_file(), folder


@pytest.mark.parametrize("folder", RUNS, ids=_name)
def test_a_run_folder_reproduces_from_its_records(folder, tmp_path, monkeypatch):
    """results.json: every number equal (see ``_NOT_FROM_RECORDS`` for what is not a number of the records);
    results.md: the same table lines. Folders of the older formats (schema 0: ``cifar10-*-table-bundled``,
    ``precision-equivalence-partial``) render their table lines unchanged too; their results.md differ
    only outside the table (the noise-scheme line, the protocol's wording since 867cae2)."""
    rebuilt, copy = _rebuild(folder, tmp_path, monkeypatch)
    raw = json.loads((folder / "results.json").read_text())
    now = rebuilt.to_dict()
    committed = read_results(folder)  # schema 0 upgraded, config completed with today's defaults
    where = _name(folder)

    for key in ("name", "defence", "seed", "n", "clean", "robust", "per_attack", "warnings"):
        assert now[key] == raw[key], f"{where}: {key}: committed {raw[key]!r}, rebuilt {now[key]!r}"
    assert now["undefended"] == raw.get("undefended", {}), where
    assert set(raw) <= set(now), f"{where}: today's writer drops {sorted(set(raw) - set(now))}"
    assert set(now) - set(raw) <= set(_NOT_FROM_RECORDS) | {"undefended"}, where

    assert without_environment(rebuilt.config) == without_environment(committed.config), where

    then_t, now_t = asdict(committed.timings), asdict(rebuilt.timings)
    then_t.pop("this_invocation_wall_seconds"), now_t.pop("this_invocation_wall_seconds")
    per_then, per_now = then_t.pop("per_attack_seconds_per_sample"), now_t.pop("per_attack_seconds_per_sample")
    assert now_t == pytest.approx(then_t, rel=1e-12, abs=1e-12), where
    assert per_now == pytest.approx(per_then, rel=1e-12, abs=1e-12), where

    fingerprinted = _fingerprinted(folder)
    if fingerprinted:
        assert rebuilt.noise_scheme == committed.noise_scheme, where
        protocol = {k: v for k, v in committed.protocol.items() if k not in _RUNTIME_DECISIONS}
        assert {k: v for k, v in rebuilt.protocol.items() if k not in _RUNTIME_DECISIONS} == protocol, where
    sanity = {k: v for k, v in raw.get("sanity", {}).items() if k != "eps_sweep"}
    assert {k: v for k, v in now["sanity"].items() if k != "eps_sweep"} == sanity, where
    if raw.get("environments"):
        assert rebuilt.environments == raw["environments"], where
    if (folder / "parts").is_dir():
        assert rebuilt.examples == raw["examples"], where

    then_md, now_md = (folder / "results.md").read_text(), (copy / "results.md").read_text()
    assert now_md.splitlines()[0] == then_md.splitlines()[0], where
    assert _table_lines(now_md) == _table_lines(then_md), where
    assert len(_table_lines(now_md)) >= 5, where


@pytest.mark.data
def test_the_records_hold_the_configured_subset():
    """The indices the rebuild takes from the records (by position) are the config's class-balanced subset."""
    from freqpure.data import eval_subset_indices, load_cifar10

    labels = {}
    for folder in RUNS:
        cfg = read_results(folder).eval_config()
        if cfg.data.split not in labels:
            labels[cfg.data.split] = load_cifar10(cfg.data.split, cfg.data.data_dir)[1]
        want = eval_subset_indices(labels[cfg.data.split], cfg.data.n, cfg.data.subset_seed)
        records = read_samples(folder)
        got = [r.index for r in sorted(records.values(), key=lambda r: r.position)]
        assert got == [int(i) for i in want], _name(folder)
        assert [r.label for r in sorted(records.values(), key=lambda r: r.position)] == \
            [int(labels[cfg.data.split][i]) for i in want], _name(folder)


# ---------------------------------------------------------------------------------------------
# robustness-table.md
# ---------------------------------------------------------------------------------------------
def test_the_robustness_table_reproduces_from_the_runs_it_names(tmp_path, capsys):
    """``freqpure table`` over the runs named in the file: the table lines and every attack's settings line
    equal. Two sentences were added to the text since the file was made (867cae2, 2026-12-02, the table keyed
    by full attack settings): the legend's "A column holds one attack setting; ..." and "noise scheme X;" in
    each run's line; the comparison leaves those additions out and nothing else."""
    from freqpure.cli.main import main

    committed = (RESULTS / "robustness-table.md").read_text()
    names = re.findall(r"^- \*\*(.+?)\*\* \(", committed, flags=re.M)
    assert names == ["cifar10-none-table-bundled", "cifar10-diffpure-table-bundled", "cifar10-freqpure-table-bundled"]
    out = tmp_path / "table.md"
    assert main(["table", *[str(RESULTS / n) for n in names], "--out", str(out)]) == 0
    capsys.readouterr()
    now = out.read_text()
    assert _table_lines(now) == _table_lines(committed)
    assert len(_table_lines(now)) == 2 + len(names)
    now = re.sub(r"; noise scheme [\w.-]+;", ";", now)
    now = now.replace(" A column holds one attack setting; a label used with different settings gets a numbered "
                      "column of its own.", "")
    assert now == committed


def test_the_robustness_table_runs_reproduce_from_their_records(tmp_path, monkeypatch):
    """The table's rows again, from the results rebuilt from the records (the classifier-only run has no
    records: its committed results.json is used)."""
    from freqpure.evaluation.table import render_table

    results = [read_results(RESULTS / "cifar10-none-table-bundled")]
    for name in ("cifar10-diffpure-table-bundled", "cifar10-freqpure-table-bundled"):
        results.append(_rebuild(RESULTS / name, tmp_path / name, monkeypatch)[0])
    committed = (RESULTS / "robustness-table.md").read_text()
    assert _table_lines(render_table(results)) == _table_lines(committed)


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def _verdict(markdown: str) -> str:
    head = "## Verdict by the pre-registered rule"
    assert head in markdown
    return markdown.split(head, 1)[1].split("![", 1)[0].strip()


def test_the_studys_tables_and_verdict_reproduce_from_its_records(tmp_path):
    """``run_study(..., execute=False)`` on a copy of ``study-cifar10`` (records, configs, timing; no images)
    rewrites study.md and every stage.md: the same table lines, the same verdict."""
    from freqpure.study import load_study_config, run_study

    copy = tmp_path / "study-cifar10"
    shutil.copytree(STUDY, copy, ignore=shutil.ignore_patterns("*.npz", "*.png", ".freqpure.lock", "provenance",
                                                               "stage.md", "study.md"))
    before = {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    run_study(load_study_config(copy / "study.yaml"), copy, base_dir=copy, progress=False, execute=False)
    stages = sorted(p.relative_to(STUDY) for p in STUDY.rglob("stage.md") if "provenance" not in p.parts)
    assert [s.parts[0] for s in stages] == ["stage3-paper-protocol", "stage4-honest-protocol"]
    for rel in [Path("study.md"), *stages]:
        then, now = (STUDY / rel).read_text(), (copy / rel).read_text()
        assert _table_lines(now) == _table_lines(then), rel
        assert _table_lines(now), rel
    then, now = (STUDY / "study.md").read_text(), (copy / "study.md").read_text()
    assert _verdict(now) == _verdict(then)
    # tabulating computed and finalised nothing: no part gained a results.json (the interim parts stay interim)
    after = {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    assert {p for p in after - before if p.name not in ("stage.md", "study.md", "clean-vs-robust.png")} == set()
