"""A battery of bad inputs through the command line and the API (issue 11).

Every CLI row must exit with status 2 and print exactly one line ``freqpure CMD: error: ...`` that
names the problem, with no traceback; every API row must raise a :class:`~freqpure.errors.FreqpureError`
whose message names the argument. Add a row whenever a new hole is found, so the battery stays green.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import freqpure
from freqpure.cli.main import main
from freqpure.errors import CheckpointError, FreqpureError, UsageError
from freqpure.models.checkpoint import read_safetensors, write_safetensors
from freqpure.purifiers import DiffPure, FreqPure, PurifiedClassifier
from freqpure.schedules import parse_rounds
from freqpure.spectral import freq_exchange

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "freqpure" / "weights"
FAST = ["--t-start", "20", "--steps", "1", "--device", "cpu", "--no-progress"]
EVAL = ["--set", "data.n=2", "--set", "batch_size=2", "--set", "attacks.0.steps=1", "--no-progress"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Files a hostile user might hand to freqpure."""
    d = tmp_path_factory.mktemp("hostile")
    paths: dict[str, Path] = {}
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(d / "ok.png")
    paths["ok"] = d / "ok.png"
    paths["file"] = d / "file.txt"
    paths["file"].write_text("keep me\n")
    (d / "zero.png").symlink_to("/dev/zero")
    paths["zero"] = d / "zero.png"
    (d / "passwd.pt").symlink_to("/etc/passwd")
    paths["passwd"] = d / "passwd.pt"
    paths["folder"] = d / "folder"
    paths["folder"].mkdir()
    # safetensors files with damaged metadata or weights (from the bundled diffusion model)
    sd, meta = read_safetensors(WEIGHTS / "cifar10-ddpm-small.safetensors")
    extra = json.loads(meta["freqpure_config"]) | {"no_such_option": 1}
    paths["extra_key"] = write_safetensors(d / "extra.safetensors", sd, meta | {"freqpure_config": json.dumps(extra)})
    paths["broken_json"] = write_safetensors(d / "json.safetensors", sd, meta | {"freqpure_config": "{base: 32"})
    huge = json.loads(meta["freqpure_config"]) | {"base": 65536}
    paths["huge"] = write_safetensors(d / "huge.safetensors", sd, meta | {"freqpure_config": json.dumps(huge)})
    nan = dict(sd)
    first = next(k for k, v in sd.items() if v.is_floating_point())
    nan[first] = torch.full_like(sd[first], math.nan)
    paths["nan"] = write_safetensors(d / "nan.safetensors", nan, meta)
    csd, cmeta = read_safetensors(WEIGHTS / "cifar10-resnet-small.safetensors")
    cnan = {k: (v * math.inf if v.is_floating_point() and k.endswith("weight") else v) for k, v in csd.items()}
    paths["nan_classifier"] = write_safetensors(d / "nan_clf.safetensors", cnan, cmeta)
    paths["dup_yaml"] = d / "dup.yaml"
    paths["dup_yaml"].write_text("seed: 1\nseed: 2\n")
    paths["results"] = d / "someone-else"
    paths["results"].mkdir()
    (paths["results"] / "results.json").write_text("{}\n")
    return paths


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("freqpure "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ CLI table
# (row id, argv builder taking the fixture dict and a fresh tmp folder, words the one line must contain)
CLI_ROWS = [
    ("purify-out-file", lambda h, t: ["purify", str(h["ok"]), "--out", str(h["file"]), *FAST],
     ["--out", "not a folder"]),
    ("purify-out-devnull", lambda h, t: ["purify", str(h["ok"]), "--out", "/dev/null", *FAST], ["/dev/null"]),
    ("purify-out-readonly", lambda h, t: ["purify", str(h["ok"]), "--out", "/sys/freqpure-out", *FAST],
     ["/sys/freqpure-out"]),
    ("purify-out-is-input-folder", lambda h, t: ["purify", str(h["ok"]), "--out", str(h["ok"].parent), *FAST],
     ["folder of the input images"]),
    ("purify-device-file", lambda h, t: ["purify", str(h["zero"]), "--out", str(t / "o"), *FAST],
     ["zero.png", "character device"]),
    ("purify-batch-size", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--batch-size", "0"],
     ["--batch-size"]),
    ("purify-bad-plan", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), "--device", "cpu",
                                      "--rounds", "20:5*"], ["round", "20:5*"]),
    ("purify-plan-conflict", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--rounds", "20:1"],
     ["--rounds"]),
    ("purify-negative-radius", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                             "--amp-radius", "-1"], ["amp_radius"]),
    ("purify-empty-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--diffusion", ""],
     ["model name is empty"]),
    ("purify-folder-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                          "--diffusion", str(h["folder"])], ["is a folder"]),
    ("purify-passwd-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                          "--diffusion", str(h["passwd"])], ["/etc/passwd", "cannot read"]),
    ("purify-nan-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                       "--diffusion", str(h["nan"])], ["NaN or Inf"]),
    ("purify-extra-key-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                             "--diffusion", str(h["extra_key"])], ["no_such_option"]),
    ("purify-broken-json-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                               "--diffusion", str(h["broken_json"])],
     ["json.safetensors", "freqpure_config", "not valid JSON"]),
    ("purify-huge-model", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                        "--diffusion", str(h["huge"])], ["huge.safetensors", "GB"]),
    ("purify-seed-overflow", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                           "--seed", str(2**70)], ["seed"]),
    ("purify-dup-yaml", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST,
                                      "--config", str(h["dup_yaml"])], ["duplicate key 'seed'"]),
    ("evaluate-eps-sweep-zero", lambda h, t: ["evaluate", *EVAL, "--set", "sanity.eps_sweep=[0]", "--out",
                                              str(t / "r")], ["sanity.eps_sweep"]),
    ("evaluate-sweep-samples-zero", lambda h, t: ["evaluate", *EVAL, "--set", "sanity.sweep_samples=0", "--out",
                                                  str(t / "r")], ["sanity.sweep_samples"]),
    ("evaluate-undefended-steps", lambda h, t: ["evaluate", *EVAL, "--set", "sanity.undefended_steps=0", "--out",
                                                str(t / "r")], ["sanity.undefended_steps"]),
    ("evaluate-max-batch", lambda h, t: ["evaluate", *EVAL, "--set", "defence.max_batch=-1", "--out", str(t / "r")],
     ["defence.max_batch"]),
    ("evaluate-max-accuracy", lambda h, t: ["evaluate", *EVAL, "--set", "sanity.undefended_max_accuracy=-1",
                                            "--out", str(t / "r")], ["sanity.undefended_max_accuracy"]),
    ("evaluate-dup-yaml", lambda h, t: ["evaluate", "--config", str(h["dup_yaml"]), "--out", str(t / "r")],
     ["duplicate key 'seed'"]),
    ("evaluate-foreign-results", lambda h, t: ["evaluate", *EVAL, "--out", str(h["results"])],
     ["results.json", "no config.yaml"]),
    ("evaluate-nan-classifier", lambda h, t: ["evaluate", *EVAL, "--set", f"classifier.name={h['nan_classifier']}",
                                              "--set", "purifier.method=none", "--out", str(t / "r")],
     ["NaN or Inf"]),
    ("convert-readonly-to", lambda h, t: ["convert", str(WEIGHTS / "cifar10-ddpm-small.safetensors"), "--to",
                                          "/sys/freqpure.safetensors"], ["--to", "not writable"]),
    ("convert-passwd", lambda h, t: ["convert", str(h["passwd"]), "--to", str(t / "x.safetensors")],
     ["/etc/passwd", "cannot read"]),
    ("report-readonly-out", lambda h, t: ["report", str(h["results"]), "-o", "/sys/report.html"],
     ["-o/--out", "not writable"]),
    ("report-out-is-folder", lambda h, t: ["report", str(h["results"]), "-o", str(h["folder"])],
     ["must be a file path"]),
    ("report-negative-setting", lambda h, t: ["report", str(h["results"]), "-o", str(t / "r.html"),
                                              "--set", "max_examples=-1"], ["max_examples", ">= 0"]),
    ("report-unknown-setting", lambda h, t: ["report", str(h["results"]), "--set", "max_exampl=3"],
     ["max_exampl", "valid keys"]),
    ("evaluate-seed-twice", lambda h, t: ["evaluate", "--out", str(t / "e"), "--print-config", "--seed", "1",
                                          "--set", "seed=2"], ["seed", "--set", "--seed"]),
    ("convert-arch-config-json", lambda h, t: ["convert", str(WEIGHTS / "cifar10-ddpm-small.safetensors"), "--to",
                                               str(t / "x.safetensors"), "--arch", "ncsnpp", "--arch-config", "{"],
     ["--arch-config", "JSON"]),
]


@pytest.mark.parametrize("argv, words", [(r[1], r[2]) for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_row_gives_one_clear_line(argv, words, hostile, tmp_path, capsys) -> None:
    assert main(argv(hostile, tmp_path)) == 2
    line = _one_line(capsys)
    for word in words:
        assert word in line, (word, line)
    assert hostile["file"].read_text() == "keep me\n"  # nothing a row touches is ever overwritten
    assert (hostile["results"] / "results.json").read_text() == "{}\n"
    assert not (tmp_path / "o").exists()  # a failed purify leaves no output folder
    assert not (tmp_path / "r").exists()  # nor a failed evaluate a run folder


def test_freqpure_data_pointing_nowhere(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FREQPURE_DATA", str(tmp_path / "nonexistent"))
    assert main(["evaluate", *EVAL, "--out", str(tmp_path / "r")]) == 2
    assert "FREQPURE_DATA" in _one_line(capsys)
    assert not (tmp_path / "r").exists()  # checked before a run folder is made


# ------------------------------------------------------------------------------------------ API table
@pytest.fixture(scope="module")
def eps_model():
    return freqpure.load_diffusion("cifar10-ddpm-small")


def _x(*shape, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


API_ROWS = [
    ("purifier-checkpoint-word", lambda m: DiffPure(m, rounds="40:3", checkpoint="yes"),
     "checkpoint must be True, False or 'auto', got 'yes'"),
    ("purifier-checkpoint-int", lambda m: DiffPure(m, rounds="40:3", checkpoint=1),
     "checkpoint must be True, False or 'auto', got 1"),
    ("fx-empty-batch", lambda m: freq_exchange(_x(0, 3, 8, 8), _x(0, 3, 8, 8), 2, 2, 0.3), "est is empty"),
    ("fx-zero-size", lambda m: freq_exchange(_x(1, 3, 0, 0), _x(1, 3, 0, 0), 2, 2, 0.3), "est is empty"),
    ("fx-nan", lambda m: freq_exchange(_x(1, 3, 8, 8) * math.nan, _x(1, 3, 8, 8), 2, 2, 0.3), "est contains NaN"),
    ("fx-ref-negative-delta", lambda m: freq_exchange(_x(1, 3, 8, 8), _x(1, 3, 8, 8), 2, 2, -0.1, mode="reference"),
     "delta must be >= 0"),
    ("fx-ref-negative-radius", lambda m: freq_exchange(_x(1, 3, 8, 8), _x(1, 3, 8, 8), -2, 2, 0.3, mode="reference"),
     "amp_radius must be a finite non-negative"),
    ("fx-string-radius", lambda m: freq_exchange(_x(1, 3, 8, 8), _x(1, 3, 8, 8), "3", 2, 0.3), "amp_radius must be a"),
    ("fx-int-input", lambda m: freq_exchange(torch.zeros(1, 3, 8, 8, dtype=torch.long), _x(1, 3, 8, 8), 2, 2, 0.3),
     "floating point"),
    ("fx-numpy", lambda m: freq_exchange(np.zeros((1, 3, 8, 8)), _x(1, 3, 8, 8), 2, 2, 0.3), "est must be a torch"),
    ("fp-string-radius", lambda m: FreqPure(m, amp_radius="3"), "amp_radius must be a number"),
    ("fp-float-steps", lambda m: FreqPure(m, steps=2.9), "steps must be an integer"),
    ("fp-float-t-start", lambda m: FreqPure(m, t_start=10.7), "t_start must be an integer"),
    ("fp-huge-seed", lambda m: FreqPure(m, seed=2**70), "seed must be in 0.."),
    ("fp-negative-seed", lambda m: DiffPure(m, seed=-1), "seed must be in 0.."),
    ("fp-bool-delta", lambda m: FreqPure(m, delta=True), "delta must be a number"),
    ("dp-float-t-star", lambda m: DiffPure(m, t_star=20.5), "t_star must be an integer"),
    ("pc-ensemble", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m), ensemble=1.5),
     "ensemble must be an integer"),
    ("pc-max-batch", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m), max_batch=0), "max_batch must be"),
    ("pc-rank3", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m, 2, 1))(_x(3, 32, 32)),
     "add a batch dimension"),
    ("pc-rank5", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m, 2, 1))(_x(1, 1, 3, 32, 32)), "4-D"),
    ("pc-empty", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m, 2, 1))(_x(0, 3, 32, 32)),
     "empty batch"),
    ("pc-numpy", lambda m: PurifiedClassifier(torch.nn.Identity(), DiffPure(m, 2, 1))(np.zeros((1, 3, 32, 32))),
     "torch.from_numpy"),
    ("rounds-trailing-star", lambda m: parse_rounds("20:5*"), "cannot parse round '20:5*'"),
    ("rounds-negative-repeat", lambda m: parse_rounds("20:5,20:5*-1"), "cannot parse round '20:5*-1'"),
    ("rounds-float-pair", lambda m: parse_rounds([(20.9, 5)]), "t_star must be an integer"),
    ("load-empty-name", lambda m: freqpure.load_diffusion(""), "model name is empty"),
    ("load-folder", lambda m: freqpure.load_diffusion("/tmp"), "is a folder, not a checkpoint"),
]


@pytest.mark.parametrize("call, message", [(r[1], r[2]) for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_api_row_raises_a_clear_error(call, message, eps_model) -> None:
    with pytest.raises(FreqpureError) as info:
        call(eps_model)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value).strip() or isinstance(info.value, CheckpointError)


@pytest.mark.parametrize("key", ["passwd", "nan", "extra_key", "broken_json", "huge"])
def test_hostile_checkpoints_are_refused_without_allocation(key, hostile) -> None:
    with pytest.raises(CheckpointError) as info:
        freqpure.load_diffusion(hostile[key])
    assert hostile[key].name in str(info.value) or "/etc/passwd" in str(info.value)
    assert not isinstance(info.value, UsageError) or key == "extra_key"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_computed_in_float32(dtype, eps_model) -> None:
    x = _x(2, 3, 32, 32)
    clf = freqpure.load_classifier("cifar10-resnet-small")
    fp = FreqPure(eps_model, t_start=10, steps=1, seed=1)
    out = fp(x.to(dtype))
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()
    scores = PurifiedClassifier(clf, DiffPure(eps_model, 10, 1), ensemble=2)(x.to(dtype))
    assert scores.shape == (2, 10) and torch.isfinite(scores).all()
    ex = freq_exchange(x.to(dtype) * 2 - 1, x.to(dtype) * 2 - 1, 3, 3, 0.3)
    assert ex.dtype == dtype and torch.isfinite(ex.float()).all()


def test_purifier_repr_is_one_line_of_settings(eps_model) -> None:
    clf = freqpure.load_classifier("cifar10-resnet-small")
    fp = FreqPure(eps_model, t_start=20, steps=2)
    text = repr(PurifiedClassifier(clf, fp, ensemble=3))
    assert "\n" not in text and len(text) < 400
    assert "FreqPure(rounds=20:2" in text and "eps_model=cifar10-ddpm-small" in text and "ensemble=3" in text
    assert "\n" not in repr(DiffPure(eps_model)) and "Conv2d" not in repr(fp)


# ------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_prints_one_line_and_no_traceback(tmp_path) -> None:
    """SIGINT in the middle of an evaluation: "interrupted; resume with --resume", exit 130, lock released."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "freqpure", "evaluate", "--set", "data.n=20", "--set", "batch_size=2",
         "--set", "attacks.0.steps=3", "--set", "purifier.rounds=30:3", "--no-progress", "--threads", "1",
         "--out", str(out)], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / "config.yaml").exists():
        time.sleep(0.05)
    time.sleep(2.0)  # into the first batches
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; resume with --resume" in err and "Traceback" not in err, err[-2000:]
    from freqpure.evaluation.lock import RunLock

    RunLock(out).acquire().release()  # nobody holds the folder any more


def test_table_escapes_labels_and_names() -> None:
    """Attack labels and run names with pipes, newlines or backticks cannot break the markdown table."""
    import re

    from freqpure.evaluation.results import Results
    from freqpure.evaluation.table import render_table

    acc = {"accuracy": 0.5, "ci95": [0.1, 0.9], "n": 2, "correct": 1}
    label = "pgd | evil\n`x`"
    attack = {"name": "pgd", "norm": "linf", "eps": 8 / 255, "steps": 1, "step_size": None, "eot": 1,
              "random_start": True, "gradient": "full"}
    res = {"name": "run|*one*", "n": 2, "seed": 0, "clean": acc, "robust": acc, "per_attack": {label: acc},
           "config": {"purifier": {"method": "none"}, "defence": {}, "attacks": [attack]},
           "timings": {"sample_seconds_total": 1.0, "seconds_per_sample": 0.5}}
    text = render_table([Results.from_dict(res)])
    header, rule, row = text.splitlines()[:3]
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in (header, row)]
    assert cells == [8, 8] and rule.count("---") == 6, text
    assert "pgd \\| evil `x`" in header and "**run\\|\\*one\\***" in text
