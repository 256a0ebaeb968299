"""Clean runs (:mod:`freqpure.evaluation.clean`): evaluation runs without an attack, with the records, lock,
fingerprints and resume of an attack evaluation; the study's clean stages are made of them."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from freqpure.config import from_dict
from freqpure.errors import RunFolderError, UsageError
from freqpure.evaluation.clean import (
    CleanRunConfig,
    SettingConfig,
    check_clean_dir,
    read_clean_records,
    read_clean_summary,
    run_clean,
)
from freqpure.noise import clean_batch_stream, vote_batch_stream
from freqpure.study import StudyConfig, load_study_config, run_study, stage_markdown
from helpers import model_name, one_thread, same_machine

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library (FREQPURE_DATA or ../shared)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "clean_runs_6f0b32d"
PILOT = REPO / "benchmarks" / "results" / "study-pilot-n64"
MARKS = {"config_sha256", "numbers_sha256", "device", "precision"}  # what today's records add


def _fixture_stages() -> list[dict]:
    spec = importlib.util.spec_from_file_location("make_clean_fixture", FIXTURE / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STAGES


def test_clean_runs_write_the_records_the_code_before_the_redesign_wrote(tmp_path):
    """The same tiny stages (per-image and the pilot's batch-shared passthrough draw, votes) as 6f0b32d's
    clean stages recorded them: the same predictions, passthrough values and summaries."""
    recorded = json.loads((FIXTURE / "records.json").read_text())
    exact = same_machine(recorded["machine"])
    study = from_dict(StudyConfig, {"name": "fixture", "device": "cpu", "stages": _fixture_stages(),
                                    "classifier": model_name("cifar10-resnet-small"),
                                    "diffusion": model_name("cifar10-ddpm-small")})
    with one_thread():
        run_study(study, tmp_path, progress=False)
    assert sorted(recorded["parts"]) == sorted(f"{p.parent.parent.name}/{p.parent.name}"
                                               for p in tmp_path.glob("*/*/samples.jsonl"))
    for name, files in recorded["parts"].items():
        for file in ("samples.jsonl", "vote.jsonl"):
            if file not in files:
                assert not (tmp_path / name / file).exists()
                continue
            new = [json.loads(x) for x in (tmp_path / name / file).read_text().splitlines()]
            assert all(MARKS <= set(r) and r["device"] == "cpu" and r["precision"] == "fp32" for r in new)
            new = [{k: v for k, v in r.items() if k not in MARKS} for r in new]
            old = files[file]
            assert [(r["index"], r["batch"], r["pred"], r["correct"]) for r in new] == \
                   [(r["index"], r["batch"], r["pred"], r["correct"]) for r in old], (name, file)
            for a, b in zip(new, old):
                for band, v in b.get("passthrough", {}).items():
                    got = a["passthrough"][band]
                    assert (got == v) if exact or v is None else got == pytest.approx(v, abs=1e-6), (name, band)
        summary, before = json.loads((tmp_path / name / "summary.json").read_text()), files["summary.json"]
        assert summary.pop("schema_version") == 1
        # the purifier is now summarised as it ran (precision resolved, as in config.yaml), not as asked
        assert (summary["purifier"].pop("precision"), before["purifier"].pop("precision")) == ("fp32", "auto")
        if (before.get("effective") or {}).get("mode") == "reference":  # the official arithmetic's old name
            before["effective"]["mode"] = "official"
        if exact:
            assert summary == before, name
        else:
            assert summary.keys() == before.keys()
            assert (summary["clean"], summary["vote"]) == (before["clean"], before["vote"])


def _row_cells(markdown: str) -> dict[str, list[str]]:
    """``{setting: cells}`` of a clean stage table, the difference intervals added since left out."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| setting") and "not yet run" not in line:
            cells = [re.sub(r", [+-]\d+\.\d \[[^]]*\]$", "", c.strip()) for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_the_pilots_committed_table_reproduces_from_its_records():
    """The n = 64 pilot's records (written before records were marked or typed) read as clean runs and give
    the table committed with them, number for number (its study.md predates the difference intervals)."""
    cfg = load_study_config(PILOT / "pilot-study-cifar10.yaml")
    stage = cfg.stages[0]
    now = _row_cells(stage_markdown(stage, PILOT / stage.name))
    then = _row_cells((PILOT / "study.md").read_text())
    assert now == then and len(now) == 11
    for setting in stage.settings:
        part = PILOT / stage.name / setting.name
        if (part / "summary.json").is_file():
            assert read_clean_summary(part).n == len(read_clean_records(part, "samples.jsonl", stage.n)) == 64


def _tiny(precision: str = "fp32", **changes) -> CleanRunConfig:
    setting = SettingConfig("diffpure", from_dict_purifier({"method": "diffpure", "rounds": "100:2",
                                                            "precision": precision}), vote=False)
    cfg = CleanRunConfig(setting=setting, classifier=model_name("cifar10-resnet-small"),
                         diffusion=model_name("cifar10-ddpm-small"), n=4, vote_n=2, vote_k=2, passthrough_n=2,
                         batch_size=2)
    return replace(cfg, **changes)


def from_dict_purifier(d: dict):
    from freqpure.config import PurifierConfig

    return from_dict(PurifierConfig, d)


def test_a_clean_run_resumes_on_another_precision_and_refuses_another_setting(tmp_path):
    import freqpure

    classifier = freqpure.load_classifier(model_name("cifar10-resnet-small")).eval()
    eps_model = freqpure.load_diffusion(model_name("cifar10-ddpm-small")).eval()
    folder = tmp_path / "run"
    with one_thread():
        first = run_clean(_tiny(), folder, classifier=classifier, eps_model=eps_model, device=torch.device("cpu"))
        lines = (folder / "samples.jsonl").read_text().splitlines(keepends=True)
        (folder / "samples.jsonl").write_text("".join(lines[:2]))  # the second batch lost
        resumed = run_clean(_tiny("bf16"), folder, classifier=classifier, eps_model=eps_model,
                            device=torch.device("cpu"))
    records = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in records] == ["fp32", "fp32", "bf16", "bf16"]  # each names its own
    assert len({r["numbers_sha256"] for r in records}) == 1 and len({r["config_sha256"] for r in records}) == 2
    assert resumed.n == first.n == 4
    with pytest.raises(UsageError, match="different setting"):
        check_clean_dir(folder, _tiny(n=8))
    foreign = {**records[0], "index": 99_999, "numbers_sha256": "0" * 16}
    with open(folder / "samples.jsonl", "a") as f:
        f.write(json.dumps(foreign) + "\n")
    with pytest.raises(RunFolderError, match="another configuration"):
        with one_thread():
            run_clean(_tiny(), folder, classifier=classifier, eps_model=eps_model, device=torch.device("cpu"))


def test_clean_and_vote_streams_have_fixed_distinct_addresses():
    assert clean_batch_stream(0, 3).path == (3,) and vote_batch_stream(0, 3).path == (10_003,)  # as recorded
    assert len({clean_batch_stream(0, b).path for b in range(50)} | {vote_batch_stream(0, b).path
                                                                    for b in range(50)}) == 100
    with pytest.raises(UsageError, match="collide"):
        vote_batch_stream(0, 10_000)


def test_a_clean_run_written_with_mode_reference_still_resumes(tmp_path):
    """A pilot clean run rewritten as if its setting had said ``mode: reference`` (the old spelling of
    ``official``), its records stamped with fingerprints of the config as written then: the folder is accepted
    for the same setting spelled either way and all its records load; another setting is refused."""
    import copy
    import shutil

    import yaml

    from freqpure.evaluation import clean
    from freqpure.evaluation.store import numbers_fingerprint

    folder = tmp_path / "run"
    shutil.copytree(PILOT / "stage1-clean" / "freqpure-paper-100-5", folder)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["setting"]["purifier"]["mode"] = "reference"
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = from_dict(CleanRunConfig, {**raw, "passthrough_noise": "batch-shared-v1"})
    assert cfg.purifier.mode == "official"
    then = copy.deepcopy(cfg.as_dict())
    then["setting"]["purifier"]["mode"] = "reference"  # what the code before the rename saved and fingerprinted
    marks = {"config_sha256": clean.config_fingerprint({**then, "device": "cpu"}), "device": "cpu",
             "numbers_sha256": numbers_fingerprint(then, clean.CLEAN_ENVIRONMENT_KEYS), "precision": "fp32"}
    assert marks["numbers_sha256"] != numbers_fingerprint(cfg.as_dict(), clean.CLEAN_ENVIRONMENT_KEYS)
    for file in ("samples.jsonl", "vote.jsonl"):
        lines = (folder / file).read_text().splitlines()
        (folder / file).write_text("".join(json.dumps({**json.loads(x), **marks}) + "\n" for x in lines))
    for spelling in ("reference", "official"):
        asked = from_dict(CleanRunConfig, {**raw, "passthrough_noise": "batch-shared-v1",
                                           "setting": {**raw["setting"], "purifier": {
                                               **raw["setting"]["purifier"], "mode": spelling}}})
        check_clean_dir(folder, asked, write=False)
        assert len(clean._store(folder, "samples.jsonl", asked, device="cpu").load()) == 64
        assert len(clean._store(folder, "vote.jsonl", asked, device="cpu").load()) == 32
    # a summary written before the rename (effective mode "reference") reads in today's spelling
    official = PILOT / "stage1-clean" / "freqpure-official-100-5"
    assert json.loads((official / "summary.json").read_text())["effective"]["mode"] == "reference"
    assert read_clean_summary(official).effective["mode"] == "official"
    other = from_dict(CleanRunConfig, {**raw, "passthrough_noise": "batch-shared-v1", "setting": {
        **raw["setting"], "purifier": {**raw["setting"]["purifier"], "mode": "paper"}}})
    with pytest.raises(UsageError, match="different setting"):
        check_clean_dir(folder, other, write=False)
    with pytest.raises(RunFolderError, match="another configuration"):
        clean._store(folder, "samples.jsonl", other, device="cpu").load()
