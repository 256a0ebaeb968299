"""The study runner: a clean stage (accuracy, vote, passthrough) and a tiny evaluate stage, resumable and paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from freqpure.cli.main import main
from freqpure.config import from_dict
from freqpure.errors import UsageError
from freqpure.passthrough import band_masks
from freqpure.study import (
    StudyConfig,
    band_limited_noise,
    band_passthrough,
    load_study_config,
    run_study,
)
from helpers import model_name

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library (FREQPURE_DATA or ../shared)

REPO = Path(__file__).resolve().parents[1]


def test_the_study_uses_the_one_mcnemar_test():
    from freqpure.evaluation.paired import mcnemar_p, pair_outcomes
    from freqpure.study import tables

    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # 2 * 0.5**6
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    pair = pair_outcomes("clean", {1: True, 2: True, 3: False}, {1: False, 2: True, 3: True, 4: True})
    assert (pair.n, pair.only_a, pair.only_b, pair.p) == (3, 1, 1, 1.0)
    lo, hi = pair.diff_ci95
    assert lo < 0 < hi and pair.difference == 0
    assert pair_outcomes("clean", {1: True}, {2: True}) is None  # nothing in common: no row
    assert tables.pair_outcomes is pair_outcomes  # the study's tables pair through the one function


def test_band_noise_lies_in_its_band_and_passthrough_reads_it():
    masks = band_masks(32, 32, [3, 8], torch.device("cpu"))
    assert masks.sum(0).eq(1).all()  # the three bands partition the spectrum
    gen = torch.Generator().manual_seed(0)
    delta = band_limited_noise((4, 3, 32, 32), masks[0], 8 / 255, gen)
    assert torch.allclose(delta.flatten(1).abs().amax(1), torch.full((4,), 8 / 255))
    spec = torch.fft.fftshift(torch.fft.fft2(delta.double()), dim=(-2, -1)).abs()
    assert spec[..., ~masks[0]].max() < 1e-6 * spec[..., masks[0]].max()
    assert torch.allclose(band_passthrough(delta, delta, masks[0]), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(band_passthrough(delta, 0.5 * delta, masks[0]), torch.full((4,), 0.5, dtype=torch.float64))
    zero = band_passthrough(delta, torch.zeros_like(delta), masks[0])
    assert torch.allclose(zero, torch.zeros(4, dtype=torch.float64))


def _study(tmp_path: Path, stages: list[dict]) -> StudyConfig:
    return from_dict(StudyConfig, {"name": "tiny", "classifier": model_name("cifar10-resnet-small"),
                                   "diffusion": model_name("cifar10-ddpm-small"), "device": "cpu",
                                   "data_dir": None, "stages": stages})  # the library finds the data itself


CLEAN_STAGE = {
    "name": "stage1", "kind": "clean", "n": 8, "vote_n": 4, "vote_k": 2, "passthrough_n": 6, "batch_size": 4,
    "planned_cpu_hours": 0.01,
    "settings": [
        {"name": "diffpure", "vote": True, "purifier": {"method": "diffpure", "rounds": "100:2"}},
        {"name": "freqpure-paper", "compare_to": "diffpure", "vote": True,
         "purifier": {"rounds": "100:2", "amp_radius": 3, "phase_radius": 3}},
        {"name": "freqpure-official", "compare_to": "diffpure",
         "purifier": {"rounds": "100:2", "amp_radius": 3, "phase_radius": 3, "variant": "official"}},
    ],
}


def test_clean_stage_measures_pairs_times_and_resumes(tmp_path):
    study = _study(tmp_path, [CLEAN_STAGE])
    out = tmp_path / "study"
    torch.set_num_threads(1)
    text = run_study(study, out, progress=False).read_text()
    stage = out / "stage1"
    summaries = {s: json.loads((stage / s / "summary.json").read_text()) for s in
                 ("diffpure", "freqpure-paper", "freqpure-official")}
    for s in summaries.values():
        assert s["n"] == 8 and 0 <= s["clean"]["accuracy"] <= 1
        assert s["passthrough"]["r<=3"]["n"] == 6
    assert summaries["freqpure-paper"]["vote"]["n"] == 4 and summaries["freqpure-official"]["vote"] is None
    assert summaries["freqpure-official"]["effective"]["step_rule"] == "official"
    # FreqPure copies the r <= 3 band from its input, perturbation included; DiffPure re-synthesises it
    low = {k: v["passthrough"]["r<=3"]["mean"] for k, v in summaries.items()}
    assert low["freqpure-paper"] > 0.6 and low["freqpure-paper"] > low["diffpure"] + 0.15
    high = summaries["freqpure-paper"]["passthrough"]["r>8"]["mean"]
    assert high < low["freqpure-paper"]
    assert "| freqpure-paper |" in text and "p " in text and "passthrough r<=3" in text
    timing = json.loads((stage / "timing.json").read_text())
    assert len(timing["invocations"]) == 1 and timing["cpu_hours_total"] > 0
    assert "Planned: 0.01 CPU hours" in (stage / "stage.md").read_text()

    # a second run skips every finished part
    before = {p: p.stat().st_mtime_ns for p in stage.rglob("*.jsonl")}
    run_study(study, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stage.rglob("*.jsonl")} == before
    assert len(json.loads((stage / "timing.json").read_text())["invocations"]) == 1

    # a part cut short resumes to the same numbers
    part = stage / "freqpure-paper"
    lines = (part / "samples.jsonl").read_text().splitlines(keepends=True)
    (part / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][:10])  # one batch + a torn line
    (part / "summary.json").unlink()
    run_study(study, out, progress=False)
    assert json.loads((part / "summary.json").read_text()) == summaries["freqpure-paper"]

    # the saved setting records the precision resolved (auto -> fp32 on CPU); a part saved before the
    # purifier had a precision setting (the n = 64 pilot) ran in fp32 and resumes as such
    saved = yaml.safe_load((part / "config.yaml").read_text())
    assert saved["setting"]["purifier"]["precision"] == "fp32"
    del saved["setting"]["purifier"]["precision"]
    (part / "config.yaml").write_text(yaml.safe_dump(saved))
    run_study(study, out, progress=False)

    # a changed setting is refused rather than mixed into old records
    changed = _study(tmp_path, [{**CLEAN_STAGE, "passthrough_eps": "4/255"}])
    with pytest.raises(UsageError, match="different setting"):
        run_study(changed, out, progress=False)


def test_tiny_evaluate_stage_pairs_runs_with_diffpure(tmp_path):
    fast = ["data.n=2", "batch_size=2", "defence.ensemble=1", "sanity.enabled=false", "purifier.rounds=100:2"]
    fast += [f"attacks.{i}.{k}" for i in range(3) for k in ("steps=1", "eot=1")]
    fast += ["attacks.0.surrogate_rounds=100:1"]
    stage = {"name": "stage2", "kind": "evaluate", "runs": [
        {"name": "diffpure", "config": "cifar10-diffpure-table-bundled.yaml", "set": fast},
        {"name": "freqpure-official", "config": "cifar10-freqpure-table-bundled.yaml", "compare_to": "diffpure",
         "set": [*fast, "purifier.variant=official"]},
    ]}
    study = _study(tmp_path, [stage])
    out = tmp_path / "study"
    run_study(study, out, base_dir=REPO / "configs", progress=False, execute=False)
    assert "not yet run" in (out / "study.md").read_text()
    torch.set_num_threads(1)
    text = run_study(study, out, base_dir=REPO / "configs", progress=False).read_text()
    results = json.loads((out / "stage2" / "freqpure-official" / "results.json").read_text())
    assert results["n"] == 2 and results["config"]["purifier"]["variant"] == "official"
    assert results["config"]["classifier"]["name"] == study.classifier
    assert "| freqpure-official vs diffpure | worst case | 2 (classes " in text
    assert "(official)" in text  # the table names the variant
    assert (out / "clean-vs-robust.png").read_bytes()[:4] == b"\x89PNG"
    mtime = (out / "stage2" / "diffpure" / "samples.jsonl").stat().st_mtime_ns
    run_study(study, out, base_dir=REPO / "configs", progress=False)
    assert (out / "stage2" / "diffpure" / "samples.jsonl").stat().st_mtime_ns == mtime


def test_the_shipped_study_config_loads_and_states_its_plan():
    cfg = load_study_config(REPO / "configs" / "study-cifar10.yaml")
    assert [s.name for s in cfg.stages] == ["stage1-clean", "stage2-single-round", "stage3-paper-protocol",
                                            "stage4-honest-protocol", "stage5-band-limited"]
    assert all(s.planned_cpu_hours for s in cfg.stages)
    for stage in cfg.stages:
        for run in stage.runs:
            assert (REPO / "configs" / run.config).is_file(), run.config
    text = (REPO / "configs" / "study-cifar10.yaml").read_text()
    assert "DECISION RULE" in text and "p < 0.05" in text
    for run_cfg in (REPO / "configs" / "study").glob("*.yaml"):
        assert yaml.safe_load(run_cfg.read_text())["name"] == run_cfg.stem


def test_bad_study_configs_are_refused(tmp_path):
    with pytest.raises(UsageError, match="compare_to"):
        _study(tmp_path, [{**CLEAN_STAGE, "settings": [{"name": "a", "compare_to": "b"}]}])
    with pytest.raises(UsageError, match="kind must be"):
        _study(tmp_path, [{**CLEAN_STAGE, "kind": "attack"}])
    with pytest.raises(UsageError, match="lists no runs"):
        _study(tmp_path, [{"name": "s", "kind": "evaluate"}])
    with pytest.raises(UsageError, match="unknown stage"):
        run_study(_study(tmp_path, [CLEAN_STAGE]), tmp_path / "o", stages=["nope"])


def test_cli_study_tables_only(tmp_path, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({"name": "cli", "stages": [CLEAN_STAGE]}))
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "o"), "--tables-only", "--no-progress",
                 "--set", "classifier=" + model_name("cifar10-resnet-small")]) == 0
    assert "not yet run" in capsys.readouterr().out
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "o"), "--set", "stages.0.kind=x"]) == 2


def test_passthrough_perturbations_are_drawn_per_image():
    from freqpure.study import passthrough_noise

    like = torch.zeros(1, 3, 32, 32)
    a = passthrough_noise([5, 17, 5], like, band=0, seed=0)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float64
    assert torch.equal(a[0], a[2]) and not torch.allclose(a[0], a[1])  # image 5 draws the same wherever it sits
    assert torch.equal(passthrough_noise([17], like, band=0, seed=0)[0], a[1])  # ... in whatever batch
    assert not torch.allclose(passthrough_noise([5], like, band=1, seed=0)[0], a[0])  # each band its own draw
    assert not torch.allclose(passthrough_noise([5], like, band=0, seed=1)[0], a[0])


def test_the_pilot_resumes_with_its_own_passthrough_draw(tmp_path):
    pilot = REPO / "benchmarks" / "results" / "study-pilot-n64"
    cfg = load_study_config(pilot / "pilot-study-cifar10.yaml")
    assert cfg.stages[0].passthrough_noise == "batch-shared-v1"
    from freqpure.evaluation.clean import check_clean_dir
    from freqpure.study.clean import clean_run_config

    stage = cfg.stages[0]
    for setting in stage.settings:  # every recorded part's saved state matches the pilot config as it is
        part = pilot / stage.name / setting.name
        if (part / "config.yaml").is_file():
            copy = tmp_path / setting.name
            copy.mkdir()
            (copy / "config.yaml").write_text((part / "config.yaml").read_text())
            check_clean_dir(copy, clean_run_config(stage, setting, cfg))
    import dataclasses

    fresh = dataclasses.replace(stage, passthrough_noise="per-image-v2")
    with pytest.raises(UsageError, match="different setting"):
        check_clean_dir(copy, clean_run_config(fresh, setting, cfg))
