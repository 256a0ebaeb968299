"""``freqpure evaluate``: config errors, results layout, resume after a kill, two-process sharding, sanity checks."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import freqpure
from freqpure.cli.main import main
from freqpure.config import dump_yaml
from freqpure.errors import RunFolderError
from freqpure.evaluation import AttackConfig, evaluate, load_eval_config, wilson_interval
from freqpure.evaluation.store import SampleStore
from freqpure.samplers import NOISE_SCHEME
from helpers import model_name, one_thread

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library itself

REPO = Path(__file__).resolve().parents[1]


SMALL = [
    "name=test", "data.n=6", "batch_size=2", "purifier.rounds=30:2", "defence.ensemble=2",
    "attacks.0.steps=2", "attacks.0.eot=2", "sanity.undefended_steps=5", "sanity.sweep_samples=2",
    f"classifier.name={model_name('cifar10-resnet-small')}", f"purifier.diffusion={model_name('cifar10-ddpm-small')}",
]


@pytest.fixture(scope="module")
def small_cfg():
    return load_eval_config(None, SMALL)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One torch thread: on a busy 2-core machine a second thread mostly spin-waits."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(small_cfg):
    clf = freqpure.load_classifier(small_cfg.classifier.name).eval().requires_grad_(False)
    eps = freqpure.load_diffusion(small_cfg.purifier.diffusion).eval().requires_grad_(False)
    return clf, eps


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_cfg, models) -> Path:
    """One uninterrupted single-process run, the yardstick for resume and sharding."""
    out = tmp_path_factory.mktemp("ref") / "run"
    evaluate(small_cfg, out, models=models, progress=False)
    return out


def deterministic(records: dict[int, dict]) -> dict[int, dict]:
    """Records without timings and with floats rounded (thread counts may change the last bits)."""

    def clean(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k != "seconds"}
        return v

    return {i: clean(r) for i, r in records.items()}


def write_config(path: Path, cfg) -> Path:
    path.write_text(dump_yaml(cfg))
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "freqpure", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


# --------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("override,message", [
    ("data.nn=3", r"unknown config key 'data.nn'.*valid keys of data: dataset, split, n,"),
    ("attacks.0.norm=l1", "unknown norm .*'l1'; valid: linf, l2"),
    ("attacks.0.eps=0.9", "eps=0.9 is out of range for linf"),
    ("attacks.0.eps=-1", "out of range"),
    ("attacks.0.gradient=magic", "unknown gradient mode .*valid: full, surrogate, adjoint, bpda"),
    ("attacks.0.gradient=surrogate", "needs surrogate_rounds"),
    ("attacks.0.gradient=adjoint", "needs purifier.sampler=sde"),
    ("attacks.0.version=plus", "attack 'pgd' takes no 'version': version applies to autoattack only"),
])
def test_config_errors_are_clear(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_eval_config(None, [override])


def test_unknown_yaml_key_is_named_with_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"attacks": [{"name": "pgd", "epz": 0.03}]}))
    with pytest.raises(ValueError, match=r"config.attacks\[0\]: attack 'pgd' has no setting 'epz' \(did "
                                         r"you mean 'eps'\?\); its settings"):
        load_eval_config(path)


@pytest.mark.slow
def test_cli_refuses_unwritable_dir_and_changed_config(tmp_path: Path, capsys, small_cfg, reference) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    assert main(["evaluate", *sum((["--set", s] for s in SMALL), []), "--out", str(blocker / "run")]) == 2
    assert "not writable" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    cfg_path = write_config(tmp_path / "c.yaml", small_cfg)
    assert main(["evaluate", "--config", str(cfg_path), "--set", "attacks.0.eps=4/255", "--out", str(run),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "attacks" in err and "0.0313" in err and "0.0156" in err
    assert main(["evaluate", "--config", str(cfg_path), "--out", str(run)]) == 2
    assert "pass --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- results
@pytest.mark.slow
def test_results_layout(reference: Path, small_cfg) -> None:
    for name in ("config.yaml", "results.json", "results.md", "samples.jsonl", "examples.npz"):
        assert (reference / name).is_file(), name
    res = json.loads((reference / "results.json").read_text())
    assert res["n"] == 6 and res["clean"]["n"] == 6
    k = res["robust"]["correct"]
    assert res["robust"]["ci95"] == pytest.approx(list(wilson_interval(k, 6)))
    assert res["robust"]["accuracy"] <= res["clean"]["accuracy"]
    assert {"judgement", "vote", "worst_case_across_attacks", "gradients", "eot"} <= set(res["protocol"])
    assert res["sanity"]["gradients_finite_nonzero"][next(iter(res["per_attack"]))]["ok"]
    assert res["sanity"]["undefended_falls"]["ok"], res["undefended"]
    assert len(res["sanity"]["eps_sweep"]["accuracy"]) == 2
    assert {"torch", "numpy", "freqpure"} <= set(res["versions"]) and res["seed"] == 0
    assert res["noise_scheme"] == res["protocol"]["noise_scheme"] == NOISE_SCHEME == "blake2b-philox-v2"
    label = next(iter(res["per_attack"]))
    assert res["protocol"]["attacks"][label].startswith("PGD-2 in L∞")
    assert res["protocol"]["settings"][label] == small_cfg.attacks[0].settings_key()
    assert "| clean (standard) |" in (reference / "results.md").read_text()
    ex = np.load(reference / "examples.npz")
    assert ex["clean"].shape == ex["adversarial"].shape == ex["purified"].shape == (6, 3, 32, 32)
    assert ex["clean"].dtype == np.float32 and ex["purified"].dtype == np.float32
    assert ex["labels"].dtype == ex["pred_clean"].dtype == ex["pred_adversarial"].dtype == np.int64
    assert 0 <= ex["purified"].min() and ex["purified"].max() <= 1
    assert len(ex["class_names"]) == 10 and str(ex["class_names"][0]) == "airplane"
    assert np.abs(ex["adversarial"] - ex["clean"]).max() <= 8 / 255 + 1e-6
    recs = SampleStore(reference / "samples.jsonl").load()
    assert [r["label"] for r in recs.values()] == ex["labels"].tolist()


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_after_a_killed_process(tmp_path: Path, small_cfg, reference: Path) -> None:
    run = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", small_cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "freqpure", "evaluate", "--config", str(cfg_path), "--out", str(run),
                             "--no-progress", "--threads", "1"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = run / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = SampleStore(samples).load()
    assert 0 < len(partial) < 6
    result = run_cli("evaluate", "--config", str(cfg_path), "--out", str(run), "--resume", "--no-progress",
                     "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == len({r["index"] for r in lines}) == 6  # every sample exactly once
    assert deterministic(SampleStore(samples).load()) == deterministic(SampleStore(reference / "samples.jsonl").load())
    a, b = (json.loads((d / "results.json").read_text()) for d in (run, reference))
    assert (a["clean"], a["robust"], a["per_attack"]) == (b["clean"], b["robust"], b["per_attack"])
    assert a["resumed"] is True and b["resumed"] is False, "resumed marks a real resume only"


@pytest.mark.slow
def test_resume_tolerates_a_torn_last_line(tmp_path: Path, small_cfg, models, reference: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")
    shutil.copytree(reference / "parts", run / "parts")
    text = (reference / "samples.jsonl").read_text().splitlines(keepends=True)
    (run / "samples.jsonl").write_text("".join(text[:3]) + text[3][: len(text[3]) // 2])  # killed mid-write
    evaluate(small_cfg, run, resume=True, models=models, progress=False)
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == len({r["index"] for r in lines}) == 6
    assert deterministic(SampleStore(run / "samples.jsonl").load()) == deterministic(
        SampleStore(reference / "samples.jsonl").load())
    a, b = (json.loads((d / "results.json").read_text()) for d in (run, reference))
    assert (a["clean"], a["robust"]) == (b["clean"], b["robust"])


def test_a_run_of_the_old_noise_scheme_is_not_continued(tmp_path: Path, small_cfg, models, reference: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert all(r["noise_scheme"] == NOISE_SCHEME for r in lines)
    for r in lines[:3]:
        del r["noise_scheme"]  # as the linear-v1 runs in benchmarks/results wrote them
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:3]))
    with pytest.raises(RunFolderError, match="noise scheme linear-v1.*cannot be continued"):
        evaluate(small_cfg, run, resume=True, models=models, progress=False)


# --------------------------------------------------------------------------------------------- sharding
@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process(tmp_path: Path, small_cfg, reference: Path) -> None:
    run = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", small_cfg)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "freqpure", "evaluate",
                             "--config", str(cfg_path), "--out", str(run), "--no-progress", "--threads", "1"],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    ref = json.loads((reference / "results.json").read_text())
    assert res["world_size"] == 2
    assert (res["clean"], res["robust"], res["per_attack"]) == (ref["clean"], ref["robust"], ref["per_attack"])
    assert deterministic(SampleStore(run / "samples.jsonl").load()) == deterministic(
        SampleStore(reference / "samples.jsonl").load())
    assert {r["batch"] % 2 for r in SampleStore(run / "samples.jsonl").load().values()} == {0, 1}


# --------------------------------------------------------------------------------------------- sanity checks
class Quantize(nn.Module):
    """Rounds to 8 bits: a zero gradient almost everywhere (the textbook gradient mask)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255


def test_sanity_checks_flag_a_masked_gradient(tmp_path: Path, models) -> None:
    clf = nn.Sequential(Quantize(), models[0])
    cfg = load_eval_config(None, [*SMALL, "data.n=4", "purifier.method=none", "sanity.sweep_samples=4",
                                  "sanity.eps_sweep=[2.0, 4.0]"])
    res = evaluate(cfg, tmp_path / "run", models=(clf, None), progress=False)
    assert not res.sanity["undefended_falls"]["ok"]
    assert not res.sanity["eps_sweep"]["falls"]
    assert any("does not fall as eps grows" in w for w in res.warnings)
    assert any("undefended classifier keeps" in w for w in res.warnings)


def test_eps_sweep_is_not_informative_when_the_base_accuracy_is_zero(tmp_path: Path, models) -> None:
    """Accuracy 0 at the base eps cannot fall: the check says so instead of passing."""
    cfg = load_eval_config(None, [*SMALL, "data.n=4", "batch_size=4", "purifier.method=none", "attacks.0.steps=10",
                                  "sanity.sweep_samples=4", "sanity.undefended=false"])
    res = evaluate(cfg, tmp_path / "run", models=models, progress=False)
    sweep = res.sanity["eps_sweep"]
    assert sweep["accuracy"][0] == 0, sweep
    assert sweep["falls"] is None and sweep["verdict"].startswith("not informative")
    assert not any("does not fall" in w for w in res.warnings)


def test_cli_shows_the_traceback_of_an_internal_bug(tmp_path: Path, small_cfg, monkeypatch, capsys) -> None:
    """A user error is one line (exit 2); a bug inside an attack is not turned into one: it leaves ``main``
    as the exception itself, so the interpreter prints its traceback and exits 1."""
    from freqpure.attacks.pgd import PGDAttack
    from freqpure.cli.main import main

    cfg_path = write_config(tmp_path / "c.yaml", small_cfg)
    user = run_cli("evaluate", "--config", str(cfg_path), "--set", "attacks.0.name=fgsm", "--out",
                   str(tmp_path / "a"))
    assert user.returncode == 2 and "Traceback" not in user.stderr
    assert "freqpure evaluate: error: unknown attack 'fgsm'; valid: autoattack, band-pgd, bpda, pgd" in user.stderr

    def broken(self, model, cfg, ctx):
        raise RuntimeError("internal bug in an attack")

    monkeypatch.setattr(PGDAttack, "run", broken)
    with pytest.raises(RuntimeError, match="internal bug in an attack"):
        main(["evaluate", "--config", str(cfg_path), "--out", str(tmp_path / "b"), "--no-progress", "--threads", "1"])
    assert "freqpure evaluate: error" not in capsys.readouterr().err


@pytest.mark.slow
def test_autoattack_rand_is_rejudged_by_the_defence(tmp_path: Path, models) -> None:
    no_steps = [s for s in SMALL if s != "attacks.0.steps=2"]  # AutoAttack has no steps setting
    cfg = load_eval_config(None, [*no_steps, "data.n=2", "purifier.rounds=20:1", "defence.ensemble=1",
                                  "attacks.0.name=autoattack", "attacks.0.version=rand", "attacks.0.eot=1",
                                  "sanity.eps_sweep=[]"])
    res = evaluate(cfg, tmp_path / "run", models=models, progress=False)
    label = cfg.attacks[0].display()
    assert label.startswith("autoattack-rand-linf-8/255")
    assert res.per_attack[label].n == 2
    assert "re-judged" in res.protocol["attacks"][label]
    assert "best-loss" in res.protocol["attacks"][label] and "mean softmax" in res.protocol["attacks"][label]
    rec = next(iter(SampleStore(tmp_path / "run" / "samples.jsonl").load().values()))
    assert rec["attacks"][label]["linf"] <= 8 / 255 + 1e-6
    assert res.sanity["gradients_finite_nonzero"][label]["ok"]


def test_store_cuts_only_the_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"index": 1}\nnot json\n{"index": 2}\n{"index": 1, "dup": true}\n{"index": 3, "a')
    store = SampleStore(path)
    assert store.repair() == len('{"index": 3, "a')
    store.append([{"index": 4}])
    records = store.load()
    assert sorted(records) == [1, 2, 4] and "dup" not in records[1]  # first record of an index wins
    assert path.read_text().endswith('{"index": 2}\n{"index": 1, "dup": true}\n{"index": 4}\n')


# --------------------------------------------------------------------------------------------- table of runs
@pytest.mark.slow
def test_table_collects_runs_into_one_markdown_table(tmp_path: Path, capsys, reference: Path, models) -> None:
    none_cfg = load_eval_config(None, SMALL + ["name=none", "purifier.method=none", "sanity.enabled=false",
                                               "attacks.0.label=PGD Linf"])
    bpda = AttackConfig(name="bpda", steps=2, eot=2, label="BPDA")
    none_cfg = dataclasses.replace(none_cfg, attacks=[none_cfg.attacks[0], bpda])
    none_run = tmp_path / "none"
    evaluate(none_cfg, none_run, models=models, progress=False)
    out = tmp_path / "table.md"
    assert main(["table", str(reference), str(none_run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    header, _, row_ref, row_none = text.splitlines()[:4]
    ref = json.loads((reference / "results.json").read_text())
    ref_label = next(iter(ref["per_attack"]))
    # columns: union of attack labels in first-seen order; a run without that attack leaves the cell empty
    assert header.split(" | ")[3:6] == [f"`{ref_label}`", "`PGD Linf`", "`BPDA`"]
    ref_cells = [c.strip() for c in row_ref.strip("|").split("|")]
    assert ref_cells[0].startswith("FreqPure 30:2 ddpm") and ref_cells[1] == "6"
    acc = ref["per_attack"][ref_label]
    assert ref_cells[3] == f"{100 * acc['accuracy']:.1f} [{100 * acc['ci95'][0]:.1f}, {100 * acc['ci95'][1]:.1f}]"
    assert ref_cells[4] == ref_cells[5] == ""
    none_cells = [c.strip() for c in row_none.strip("|").split("|")]
    assert none_cells[0] == "none (classifier only)" and none_cells[3] == ""
    none_res = json.loads((none_run / "results.json").read_text())
    assert none_res["timings"]["per_attack_seconds_per_sample"]["BPDA"] > 0
    assert "`BPDA`: BPDA L∞ 8/255, 2 steps" in text and "bpda gradient" in text
    assert main(["table", str(tmp_path / "missing")]) == 2
    assert "missing/results.json does not exist" in capsys.readouterr().err
