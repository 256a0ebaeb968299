"""Run folders of ``freqpure evaluate``: locked for the run's lifetime, never mixed with another run,
never overwriting another run's results; every config key validated before the first sample (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from freqpure.cli.main import main
from freqpure.config import dump_yaml, to_dict
from freqpure.errors import RunFolderError, UsageError
from freqpure.evaluation import load_eval_config
from freqpure.evaluation.lock import LOCK_NAME, RunLock
from freqpure.evaluation.runner import prepare_run_dir
from freqpure.evaluation.store import FINGERPRINT_KEY, SampleStore, config_fingerprint

SMALL = ["name=test", "data.n=2", "batch_size=2", "purifier.rounds=20:1", "attacks.0.steps=1",
         "sanity.enabled=false"]
SRC = Path(__file__).resolve().parents[1] / "src"


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the run lock and keeps it until killed."""
    code = ("import sys, time; from freqpure.evaluation.lock import RunLock; held = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_is_refused_by_pid_and_a_dead_one_does_not_block(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        cfg = load_eval_config(None, SMALL)
        with pytest.raises(RunFolderError, match=f"in use by another freqpure run \\(PID {proc.pid} on "):
            prepare_run_dir(run, cfg, resume=False, write=True)
        assert not (run / "config.yaml").exists()
        args = ["evaluate", *sum((["--set", s] for s in SMALL), []), "--out", str(run), "--no-progress"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"PID {proc.pid}" in err and "Traceback" not in err and err.count("\n") == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel dropped the dead holder's lock: a new run takes it (the stale lock file stays harmless)
    assert (run / LOCK_NAME).exists()
    lock = prepare_run_dir(run, cfg, resume=False, write=True)
    assert lock is not None and lock.held and f"PID {os.getpid()}" in (run / LOCK_NAME).read_text()
    with pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):  # a second run in this very process too
        RunLock(run).acquire()
    lock.release()
    with RunLock(run):
        pass


def test_results_of_another_run_are_never_overwritten(tmp_path: Path, capsys) -> None:
    args = [*sum((["--set", s] for s in SMALL), []), "--no-progress"]
    for name in ("results.json", "results.md", "examples.npz", "samples.jsonl"):
        run = tmp_path / name.replace(".", "_")
        run.mkdir()
        (run / name).write_text("someone else's results\n")
        assert main(["evaluate", *args, "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"holds {name} but no config.yaml" in err and "Traceback" not in err
        assert (run / name).read_text() == "someone else's results\n"
        assert not (run / "config.yaml").exists()
    # with --resume as well: samples.jsonl without config.yaml is never reused
    assert main(["evaluate", *args, "--out", str(tmp_path / "samples_jsonl"), "--resume"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_records_of_another_config_are_refused(tmp_path: Path) -> None:
    cfg = load_eval_config(None, SMALL)
    other = load_eval_config(None, [*SMALL, "seed=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    SampleStore(run / "samples.jsonl", config_fingerprint(to_dict(other))).append([{"index": 3, "robust": True}])
    with pytest.raises(RunFolderError, match="1 record\\(s\\) of another configuration"):
        prepare_run_dir(run, cfg, resume=True, write=True)
    assert not (run / LOCK_NAME).exists() or RunLock(run).acquire()  # the refused run released its lock
    # the same config's records load, stamped with its fingerprint
    mine = SampleStore(tmp_path / "mine.jsonl", config_fingerprint(to_dict(cfg)))
    mine.append([{"index": 1}])
    assert mine.load()[1][FINGERPRINT_KEY] == config_fingerprint(to_dict(cfg))
    assert json.loads((tmp_path / "mine.jsonl").read_text())[FINGERPRINT_KEY] == mine.fingerprint
    assert config_fingerprint(to_dict(cfg)) != config_fingerprint(to_dict(other))


@pytest.mark.parametrize("override, message", [
    ("sanity.eps_sweep=[0]", "sanity.eps_sweep multipliers must be finite and > 0"),
    ("sanity.eps_sweep=[-1]", "sanity.eps_sweep multipliers must be finite and > 0"),
    ("sanity.sweep_samples=0", "sanity.sweep_samples must be >= 1"),
    ("sanity.sweep_samples=-1", "sanity.sweep_samples must be >= 1"),
    ("sanity.undefended_max_accuracy=-1", "sanity.undefended_max_accuracy must be in \\[0, 1\\]"),
    ("sanity.undefended_steps=0", "sanity.undefended_steps must be >= 1"),
    ("defence.max_batch=0", "defence.max_batch must be >= 1 or null"),
    ("defence.max_batch=-1", "defence.max_batch must be >= 1 or null"),
    ("defence.purify_size=0", "defence.purify_size must be >= 1"),
    ("data.split=val", "data.split must be 'train' or 'test'"),
    ("purifier.rounds=20:5*", "cannot parse round '20:5\\*'"),
    ("purifier.rounds=20:5,20:5*-1", "cannot parse round '20:5\\*-1'"),
    ("purifier.rounds=20:5*0", "REPEAT must be >= 1"),
    ("purifier.sampler=euler", "purifier.sampler must be one of ddpm, ddim, sde"),
    ("purifier.delta=-1", "purifier.delta must be a finite number >= 0"),
    ("purifier.amp_radius=.nan", "purifier.amp_radius must be a finite number >= 0 or null"),
    ("purifier.reference_t=1000", "purifier.reference_t must be a step index"),
])
def test_every_key_is_validated_before_the_first_sample(override: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_eval_config(None, [override])


def test_yaml_is_read_strictly(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nbatch_size: 2\nseed: 2\n")
    with pytest.raises(UsageError, match="duplicate key 'seed' \\(first on line 1, again on line 3\\)"):
        load_eval_config(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("sanity:\n  sweep_samples: 2\n  sweep_samples: 3\n")
    with pytest.raises(UsageError, match="duplicate key 'sweep_samples'"):
        load_eval_config(nested)
    numbers = tmp_path / "numbers.yaml"
    numbers.write_text("attacks:\n  - eps: 1e-2\n    step_size: 2E-3\npurifier:\n  rounds: 100:20\n")
    cfg = load_eval_config(numbers)
    assert cfg.attacks[0].eps == 0.01 and cfg.attacks[0].step_size == 0.002
    assert cfg.purifier.rounds == "100:20"
    assert load_eval_config(None, ["data.n=1e2"]).data.n == 100
    with pytest.raises(UsageError, match="base-60"):
        load_eval_config(None, ["purifier.rounds=6020"])


def test_lock_is_released_when_the_run_finishes(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "r").acquire()
    t0 = time.perf_counter()
    lock.release()
    RunLock(tmp_path / "r").acquire().release()
    assert time.perf_counter() - t0 < 5


COMMITTED_RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "study-cifar10" / \
    "stage4-honest-protocol" / "freqpure-paper-v2"


@pytest.mark.data
def test_a_run_folder_written_with_mode_reference_still_resumes(tmp_path: Path) -> None:
    """``mode: reference`` is the old spelling of ``mode: official``. A committed run folder, rewritten as if its
    config had said ``mode: reference`` when it ran (config.yaml and the records' fingerprints computed the old
    way, from the config as written then), still resumes and all its records load; another config is refused."""
    import copy
    import shutil

    from freqpure.config import parse_yaml
    from freqpure.evaluation.rundir import run_store, saved_config
    from freqpure.evaluation.store import NUMBERS_KEY, numbers_fingerprint

    run = tmp_path / "run"
    shutil.copytree(COMMITTED_RUN, run)
    raw = parse_yaml((run / "config.yaml").read_text())
    assert raw["purifier"]["method"] == "freqpure" and raw["purifier"]["mode"] is None
    raw["purifier"]["mode"] = "reference"  # the paper variant with the official code's arithmetic (an ablation)
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    now = saved_config(run)
    assert now["purifier"]["mode"] == "official"  # read in today's spelling
    then = copy.deepcopy(now)
    then["purifier"]["mode"] = "reference"  # the canonical dict the code before the rename saved and fingerprinted
    old_config, old_numbers = config_fingerprint(then), numbers_fingerprint(then)
    assert old_config != config_fingerprint(now) and old_numbers != numbers_fingerprint(now)
    lines = (run / "samples.jsonl").read_text().splitlines()
    records = []
    for i, line in enumerate(lines):  # half as records before the numbers mark, half as records with it
        rec = {**json.loads(line), FINGERPRINT_KEY: old_config}
        if i % 2:
            rec.update({NUMBERS_KEY: old_numbers, "device": "cuda", "precision": "fp32"})
        records.append(rec)
    (run / "samples.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    for spelling in ("reference", "official"):  # the config asked for either way
        cfg = load_eval_config(run / "config.yaml", [f"purifier.mode={spelling}"])
        lock = prepare_run_dir(run, cfg, resume=True, write=True)
        lock.release()
        assert len(run_store(run, cfg).load()) == len(lines) == 96
    other = load_eval_config(run / "config.yaml", ["purifier.mode=paper"])
    with pytest.raises(RunFolderError, match="different config"):
        prepare_run_dir(run, other, resume=True, write=False)
    # a record of really other numbers is still refused
    foreign = {**records[1], "index": 99_999, NUMBERS_KEY: numbers_fingerprint(to_dict(other))}
    with open(run / "samples.jsonl", "a") as f:
        f.write(json.dumps(foreign) + "\n")
    with pytest.raises(RunFolderError, match="another configuration"):
        run_store(run, cfg).load()
