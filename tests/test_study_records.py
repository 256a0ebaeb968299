"""The study's records: a run continued on another device or precision, parts read before they finish,
results written from records alone, records merged from another machine (issue #21)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from freqpure.config import from_dict, to_dict
from freqpure.errors import RunFolderError, UsageError
from freqpure.evaluation import evaluate, load_eval_config
from freqpure.evaluation.config import EvalConfig
from freqpure.evaluation.results import read_results
from freqpure.evaluation.store import FINGERPRINT_KEY, NUMBERS_KEY, config_fingerprint
from freqpure.study import load_study_config, run_study
from freqpure.study.parts import class_span, import_records, part_summary
from helpers import model_name, one_thread

pytestmark = pytest.mark.data

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "study-cifar10"
S4 = RECORDS / "stage4-honest-protocol"

TINY = ["name=tiny", "data.n=4", "batch_size=2", "purifier.rounds=30:1", "defence.ensemble=1",
        "attacks.0.steps=1", "attacks.0.eot=1", "sanity.enabled=false",
        f"classifier.name={model_name('cifar10-resnet-small')}",
        f"purifier.diffusion={model_name('cifar10-ddpm-small')}"]


def _gpu_only(part: Path, dst: Path) -> Path:
    """A copy of a committed part holding only the records the GPU run made (they name no device)."""
    dst.mkdir(parents=True)
    shutil.copy(part / "config.yaml", dst / "config.yaml")
    lines = [ln for ln in (part / "samples.jsonl").read_text().splitlines(keepends=True) if '"device"' not in ln]
    (dst / "samples.jsonl").write_text("".join(lines))
    return dst


def test_a_run_continues_on_another_precision_and_says_so(tmp_path):
    cfg = load_eval_config(None, TINY)
    out = tmp_path / "run"
    with one_thread():
        evaluate(cfg, out, progress=False)
    first = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert {(r["device"], r["precision"]) for r in first} == {("cpu", "fp32")}
    # make it look like a run begun on a GPU at bf16 before records named their environment (the GPU
    # records): config.yaml says bf16, records carry only that config's fingerprint; drop the last batch
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["purifier"]["precision"], saved["device"] = "bf16", "cuda"
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    legacy = config_fingerprint(to_dict(from_dict(EvalConfig, saved)))
    old = [{k: v for k, v in r.items() if k not in (NUMBERS_KEY, "device", "precision")} | {FINGERPRINT_KEY: legacy}
           for r in first[:2]]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (out / "results.json").unlink()
    with one_thread():
        res = evaluate(cfg, out, resume=True, progress=False)  # fp32 continues the "bf16" records
    assert res is not None and res.n == 4
    assert res.environments == {"cuda/bf16": 2, "cpu/fp32": 2}
    assert read_results(out).environments == {"cuda/bf16": 2, "cpu/fp32": 2}
    new = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()][2:]
    assert [r["index"] for r in new] == [r["index"] for r in first[2:]] and all(r["precision"] == "fp32" for r in new)
    assert [r["clean_pred"] for r in new] == [r["clean_pred"] for r in first[2:]]  # the same numbers
    # anything else that changes the numbers is still refused
    changed = load_eval_config(None, [*TINY, "attacks.0.steps=2"])
    with pytest.raises(RunFolderError, match="different config"):
        evaluate(changed, out, resume=True, progress=False)


def test_unfinished_parts_are_tabulated_with_their_classes_and_machines(tmp_path):
    official = part_summary(_gpu_only(S4 / "freqpure-official-v2", tmp_path / "official"))
    diffpure = part_summary(_gpu_only(S4 / "diffpure-v2", tmp_path / "diffpure"))
    assert (official.n, official.planned, official.complete) == (96, 256, False)
    assert class_span(official.labels) == "0–3" and class_span(diffpure.labels) == "0–6"
    assert official.environments == {"cuda/bf16": 96} and diffpure.n == 160
    from freqpure.evaluation.paired import compare_samples

    worst = {r.metric: r for r in compare_samples(official.records, diffpure.records).rows}["worst case"]
    # the reading, checked from the records: 30/96 each, 1/1 discordant
    assert (worst.n, worst.correct_a, worst.correct_b, worst.only_a, worst.only_b) == (96, 30, 30, 1, 1)
    paper = part_summary(_gpu_only(S4 / "freqpure-paper-v2", tmp_path / "paper"))
    row = {r.metric: r for r in compare_samples(paper.records, diffpure.records).rows}["worst case"]
    assert (row.correct_a, row.only_a, row.only_b) == (17, 0, 13) and row.p < 0.001
    lo, hi = row.diff_ci95
    assert lo < -0.06 and hi < 0  # a significant loss has an interval below zero


def test_study_tables_read_the_committed_records_and_finish_complete_parts(tmp_path):
    out = tmp_path / "study"
    for name in ("diffpure-v2", "freqpure-official-v2", "freqpure-official-v2-full", "diffpure-v2-full"):
        _gpu_only(S4 / name, out / "stage4-honest-protocol" / name)
    study = load_study_config(REPO / "configs" / "study-cifar10.yaml")
    text = run_study(study, out, base_dir=REPO / "configs", progress=False, execute=False).read_text()
    assert "96 of 256 (interim)" in text and "160 of 256 (interim)" in text and "96 cuda/bf16" in text
    assert "| freqpure-official-v2 vs diffpure-v2 | worst case | 96 (classes 0–3) | 31.2 vs 31.2 | 1/1, p 1.000" in text
    # the complete part without results.json got one from its records, computing nothing
    res = read_results(out / "stage4-honest-protocol" / "freqpure-official-v2-full")
    assert res.n == 64 and res.robust.correct == 13 and res.environments == {"cuda/bf16": 64}
    assert res.sanity["eps_sweep"]["verdict"].startswith("not run")
    assert "not yet run" in text  # parts without records say so


def test_import_merges_records_once_and_refuses_another_configuration(tmp_path):
    src = tmp_path / "gpu"
    _gpu_only(S4 / "freqpure-official-v2", src / "stage4-honest-protocol" / "freqpure-official-v2")
    dst = tmp_path / "repo"
    part = dst / "stage4-honest-protocol" / "freqpure-official-v2"
    _gpu_only(S4 / "freqpure-official-v2", part)
    lines = (part / "samples.jsonl").read_text().splitlines(keepends=True)
    (part / "samples.jsonl").write_text("".join(lines[:32]))  # this copy has only batch 0
    archive = tmp_path / "records.tar.gz"
    shutil.make_archive(str(archive).removesuffix(".tar.gz"), "gztar", tmp_path, "gpu")
    log = import_records(archive, dst)
    assert log == [{"part": "stage4-honest-protocol/freqpure-official-v2", "added": 64, "had": 32}]
    assert import_records(src, dst)[0]["added"] == 0  # nothing twice
    summary = part_summary(part)
    assert summary.n == 96 and summary.environments == {"cuda/bf16": 96}
    merged = [json.loads(ln) for ln in (part / "samples.jsonl").read_text().splitlines()]
    assert all(NUMBERS_KEY in r and r["device"] == "cuda" for r in merged[32:])  # imported records name theirs
    assert len((dst / "imports.jsonl").read_text().splitlines()) == 2
    cfg = yaml.safe_load((src / "stage4-honest-protocol" / "freqpure-official-v2" / "config.yaml").read_text())
    cfg["attacks"][0]["steps"] = 5
    (src / "stage4-honest-protocol" / "freqpure-official-v2" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunFolderError, match="different configurations"):
        import_records(src, dst)
    with pytest.raises(UsageError, match="no study part"):
        import_records(tmp_path / "repo" / "stage4-honest-protocol", tmp_path / "x")


def test_parts_are_chosen_by_stage_and_name(tmp_path):
    study = load_study_config(REPO / "configs" / "study-cifar10.yaml")
    with pytest.raises(UsageError, match="unknown part"):
        run_study(study, tmp_path / "o", parts=["stage4-honest-protocol/nope"], progress=False)


def test_a_refused_run_folder_keeps_no_lock_file(tmp_path):
    from freqpure.evaluation.lock import LOCK_NAME

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")  # another run's results, without its config.yaml
    with pytest.raises(RunFolderError, match="no config.yaml"):
        evaluate(load_eval_config(None, TINY), foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["results.json"]  # no lock file, no parts/
    assert LOCK_NAME not in {p.name for p in foreign.iterdir()}
