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
    paths["latin1_yaml"] = d / "latin1.yaml"
    paths["latin1_yaml"].write_bytes("seed: 1  # caf\u00e9\n".encode("latin-1"))
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


# issue 23, items 6-8: accepted-but-meaningless values, tracebacks and misleading messages
PURIFY_NO_DEVICE = ["--t-start", "20", "--steps", "1", "--no-progress"]
CLI_ROWS += [
    ("purify-threads-huge", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--threads",
                                          "100000"], ["--threads must be in 1.."]),
    ("purify-threads-zero", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--threads", "0"],
     ["--threads must be in 1.."]),
    *[(f"purify-device-{d}", lambda h, t, d=d: ["purify", str(h["ok"]), "--out", str(t / "o"), *PURIFY_NO_DEVICE,
                                                "--device", d], [f"'{d}' is not supported", "cpu, cuda"])
      for d in ("bogus", "meta", "mps", "cuda:x")],
    ("evaluate-device-mps", lambda h, t: ["evaluate", *EVAL, "--set", "device=mps", "--out", str(t / "r")],
     ["device 'mps' is not supported"]),
    ("evaluate-seed-negative", lambda h, t: ["evaluate", *EVAL, "--seed", "-1", "--out", str(t / "r")],
     ["seed must be in 0.."]),
    ("evaluate-seed-huge", lambda h, t: ["evaluate", *EVAL, "--seed", str(2**70), "--out", str(t / "r")],
     ["seed must be in 0.."]),
    ("evaluate-subset-seed", lambda h, t: ["evaluate", *EVAL, "--set", "data.subset_seed=-1", "--out", str(t / "r")],
     ["data.subset_seed must be in 0.."]),
    ("evaluate-step-size-inf", lambda h, t: ["evaluate", *EVAL, "--set", "attacks.0.step_size=.inf", "--out",
                                             str(t / "r")], ["step_size must be finite"]),
    ("evaluate-config-latin1", lambda h, t: ["evaluate", "--config", str(h["latin1_yaml"]), "--out", str(t / "r")],
     ["latin1.yaml", "not UTF-8"]),
    ("purify-config-latin1", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--config",
                                           str(h["latin1_yaml"])], ["latin1.yaml", "not UTF-8"]),
    ("evaluate-config-folder", lambda h, t: ["evaluate", "--config", str(h["folder"]), "--out", str(t / "r")],
     ["is a folder"]),
    ("purify-config-folder", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), *FAST, "--config",
                                           str(h["folder"])], ["is a folder"]),
    ("evaluate-data-dir-file", lambda h, t: ["evaluate", *EVAL, "--data-dir", str(h["file"]), "--out", str(t / "r")],
     ["file.txt", "is a file, not a folder"]),
    ("evaluate-out-file", lambda h, t: ["evaluate", *EVAL, "--out", str(h["file"])], ["is a file, not a folder"]),
    ("purify-rounds-negative-attached", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"),
                                                      "--rounds=-5:1"], ["cannot parse round '-5:1'"]),
    ("purify-rounds-huge-repeat", lambda h, t: ["purify", str(h["ok"]), "--out", str(t / "o"), "--rounds",
                                                "10:1*99999999999"], ["more than 10000 rounds"]),
    ("analyze-eps-one", lambda h, t: ["analyze", "--out", str(t / "o"), "--eps", "1"], ["eps must be in (0, 0.5]"]),
    ("analyze-step-size-zero", lambda h, t: ["analyze", "--out", str(t / "o"), "--step-size", "0"],
     ["step_size must be finite and > 0"]),
    ("analyze-max-radius-zero", lambda h, t: ["analyze", "--out", str(t / "o"), "--max-radius", "0"],
     ["max_radius must be finite and > 0"]),
    ("analyze-seed-negative", lambda h, t: ["analyze", "--out", str(t / "o"), "--seed", "-1"],
     ["seed must be in 0.."]),
    ("train-diffusion-lr-inf", lambda h, t: ["train", "diffusion", "--out", str(t / "o"), "--lr", "inf"],
     ["lr must be a finite number > 0"]),
    ("train-classifier-lr-nan", lambda h, t: ["train", "classifier", "--out", str(t / "o"), "--lr", "nan"],
     ["lr must be a finite number > 0"]),
    ("train-ema-decay-two", lambda h, t: ["train", "diffusion", "--out", str(t / "o"), "--ema-decay", "2"],
     ["ema_decay must be in [0, 1)"]),
    ("train-ema-decay-nan", lambda h, t: ["train", "diffusion", "--out", str(t / "o"), "--ema-decay", "nan"],
     ["ema_decay must be in [0, 1)"]),
    ("table-schema-string", lambda h, t: ["table", str(_schema_string_run(t))],
     ["schema_version must be a whole number", "'1'"]),
    # the options of session 21: noise addressing, batch_size auto, mode: official, typed attacks, training precision
    ("evaluate-addressing-bogus", lambda h, t: ["evaluate", *EVAL, "--set", "noise_addressing=bogus", "--out",
                                                str(t / "r")], ["noise_addressing must be one of batch-v1, image-v1"]),
    ("evaluate-batch-auto-batch-v1", lambda h, t: ["evaluate", *EVAL, "--set", "batch_size=auto", "--out",
                                                   str(t / "r")],
     ["batch_size: auto needs noise_addressing: image-v1"]),
    ("evaluate-batch-size-word", lambda h, t: ["evaluate", *EVAL, "--set", "batch_size=big", "--out", str(t / "r")],
     ["batch_size must be an integer >= 1 or auto", "'big'"]),
    ("evaluate-image-v1-blake2b", lambda h, t: ["evaluate", *EVAL, "--set", "noise_addressing=image-v1", "--out",
                                                str(t / "r")], ["image-v1", "set noise_scheme: counter-v1"]),
    ("evaluate-image-v1-autoattack", lambda h, t: ["evaluate", "--set", "data.n=2", "--no-progress", "--set",
                                                   "noise_addressing=image-v1", "--set", "noise_scheme=counter-v1",
                                                   "--set", "attacks.0.name=autoattack", "--out", str(t / "r")],
     ["image-v1 needs attacks whose rows do not depend on their batch", "'autoattack' does not"]),
    ("evaluate-mode-bogus", lambda h, t: ["evaluate", *EVAL, "--set", "purifier.mode=bogus", "--out", str(t / "r")],
     ["mode must be 'paper' or 'official'", "'bogus'"]),
    ("evaluate-attack-foreign-key", lambda h, t: ["evaluate", *EVAL, "--set", "attacks.0.version=standard", "--out",
                                                  str(t / "r")], ["attack 'pgd' takes no 'version'"]),
    ("train-precision-fp8", lambda h, t: ["train", "diffusion", "--out", str(t / "o"), "--set", "precision=fp8"],
     ["precision must be fp32 or bf16", "'fp8'"]),
    ("train-amp-fp8", lambda h, t: ["train", "diffusion", "--out", str(t / "o"), "--set", "amp=fp8"],
     ["amp must be 'bf16' or 'none'", "'fp8'"]),
]


@pytest.mark.parametrize("flag, value", [("--rounds", "-5:1"), ("--phase-radius", "-inf")])
def test_a_value_starting_with_a_dash_gets_one_line_with_the_fix(flag, value, hostile, tmp_path, capsys) -> None:
    """Item 8: `--rounds -5:1` was answered by argparse's bare "expected one argument" and a usage block."""
    with pytest.raises(SystemExit) as info:
        main(["purify", str(hostile["ok"]), "--out", str(tmp_path / "o"), *FAST, flag, value])
    assert info.value.code == 2
    line = _one_line(capsys)
    assert f"argument {flag}: expected one argument" in line and f"{flag}=VALUE" in line, line


def _schema_string_run(tmp: Path) -> Path:
    """A copy of a committed run whose results.json says ``schema_version: "1"`` (a string)."""
    run = _copy_run(tmp)
    data = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**data, "schema_version": "1"}))
    return run


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
def test_ctrl_c_while_reading_the_data_is_not_swallowed(tmp_path, monkeypatch) -> None:
    """A Ctrl-C that lands while an archive member is closed stops the load. (Closing it in a finaliser, as
    ``tar.extractfile(m).read()`` did, made Python print and ignore the KeyboardInterrupt: the run went on.)"""
    import io
    import tarfile

    from PIL import Image

    from freqpure.cifar10 import CIFAR10_CLASSES, load_cifar10_tar

    archive = tmp_path / "tiny.tar"
    with tarfile.open(archive, "w") as tar:
        for k, name in enumerate(CIFAR10_CLASSES):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (25 * k, 0, 0)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{name}/0.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    assert load_cifar10_tar(archive, cache=False)[0].shape == (10, 32, 32, 3)
    original = tarfile.ExFileObject.close

    def interrupted_close(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.ExFileObject, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        load_cifar10_tar(archive, cache=False)


def test_ctrl_c_prints_one_line_and_no_traceback(tmp_path) -> None:
    """SIGINT in the middle of an evaluation: "interrupted; resume with --resume", exit 130, lock released."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "freqpure", "evaluate", "--set", "data.n=20", "--set", "batch_size=2",
         "--set", "attacks.0.steps=3", "--set", "purifier.rounds=30:3", "--no-progress", "--threads", "1",
         "--out", str(out)], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # tests started in the background (`nohup ... &`, a CI runner) have SIGINT ignored, and a child inherits that
        # across exec: give the command the default disposition a user's terminal gives it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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

    from freqpure.evaluation.results import Results, accuracy
    from freqpure.evaluation.table import render_table

    acc = accuracy([True, False])
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


# ====================================================================================================
# Issue 23: the second hostile battery. Nothing lost, nothing silently wrong, no traceback.
# ====================================================================================================
RESULTS_DIR = REPO / "benchmarks" / "results"
RUN512 = RESULTS_DIR / "precision-equivalence-512" / "fp32"  # a finished schema-1 run: results.json + 512 records


def _copy_run(tmp_path: Path, source: Path = RUN512) -> Path:
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("results.json", "samples.jsonl", "config.yaml"):
        shutil.copyfile(source / name, run / name)
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _edit_line(path: Path, number: int, edit) -> None:
    """Apply ``edit`` to the JSON record on line ``number`` (1-based) of ``path``."""
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[number - 1])
    edit(rec)
    lines[number - 1] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))


# ------------------------------------------------------------------ data loss: files this run did not create
def test_purify_data_never_replaces_a_file_it_did_not_create(hostile, tmp_path, capsys) -> None:
    """Item 1: `train purify-data notes.txt` overwrote an unrelated file; now refused, replaced only with --force."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    args = ["train", "purify-data", str(notes), "--limit", "2", "--split", "test", "--t-star", "20", "--steps", "1",
            "--amp", "none", "--no-progress", "--threads", "1"]
    assert main(args) == 2
    line = _one_line(capsys)
    assert "notes.txt" in line and "--force" in line and notes.read_text() == "my notes\n"
    assert main([*args, "--force"]) == 0
    from freqpure.purified_data import load_purified

    assert load_purified(notes)[0].shape == (2, 32, 32, 3)  # replaced, as asked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock or partial file left


def test_purify_data_into_an_output_in_use_is_refused(tmp_path, capsys) -> None:
    """Item 3: two purify-data runs into one file; the second is refused at once."""
    from freqpure.evaluation.lock import RunLock

    out = tmp_path / "p.safetensors"
    with RunLock(tmp_path, name=".p.safetensors.lock"):
        assert main(["train", "purify-data", str(out), "--limit", "2", "--split", "test", "--no-progress"]) == 2
        assert f"output {out} is in use by another freqpure run" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("command", ["diffusion", "classifier"])
def test_train_export_to_never_replaces_other_files(command, tmp_path, capsys) -> None:
    """`train ... --export-to FILE` replaced whatever FILE was at the first export."""
    from freqpure.cli.train import _is_weights_file

    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    run = tmp_path / "run"
    assert main(["train", command, "--out", str(run), "--export-to", str(notes)]) == 2
    assert "--force" in _one_line(capsys) and notes.read_text() == "mine\n" and not run.exists()
    assert main(["train", command, "--out", str(run), "--export-to", str(run / "checkpoint.pt"), "--force"]) == 2
    assert "one of the files of run" in _one_line(capsys)
    assert _is_weights_file(WEIGHTS / "cifar10-ddpm-small.safetensors") and not _is_weights_file(notes)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_purify_data_limit_must_be_positive(limit, tmp_path, capsys) -> None:
    """Item 6: --limit 0 wrote an empty data set (rc 0), --limit -1 49,999 images."""
    out = tmp_path / "x.safetensors"
    assert main(["train", "purify-data", str(out), f"--limit={limit}", "--split", "test", "--no-progress"]) == 2
    assert "--limit must be a whole number >= 1" in _one_line(capsys) and not out.exists()


def test_train_export_never_replaces_other_files(tmp_path, capsys) -> None:
    run = tmp_path / "trainrun"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    other = tmp_path / "other.safetensors"
    other.write_text("not mine\n")
    assert main(["train", "export", str(run), str(other)]) == 2
    assert "--force" in _one_line(capsys) and other.read_text() == "not mine\n"
    assert main(["train", "export", str(run), str(run / "config.json"), "--force"]) == 2
    assert "one of the files of run" in _one_line(capsys) and (run / "config.json").read_text() == "{}\n"


# ------------------------------------------------------------------ data loss: table --out / report -o
@pytest.mark.parametrize("command", ["table", "report"])
@pytest.mark.parametrize("name", ["results.json", "samples.jsonl", "config.yaml"])
def test_outputs_never_replace_the_runs_own_files(command, name, tmp_path, capsys) -> None:
    """Item 2: `table RUN --out RUN/results.json` and `report RUN -o RUN/results.json` destroyed the run."""
    run = _copy_run(tmp_path)
    before = _files(run)
    flag = "--out" if command == "table" else "-o"
    assert main([command, str(run), flag, str(run / name), "--force"]) == 2  # not even with --force
    line = _one_line(capsys)
    assert name in line and "one of the files of run" in line
    assert _files(run) == before


@pytest.mark.parametrize("command", ["table", "report"])
def test_outputs_replace_an_existing_file_only_with_force(command, tmp_path, capsys) -> None:
    run = _copy_run(tmp_path)
    mine = tmp_path / "mine.txt"
    mine.write_text("mine\n")
    flag = "--out" if command == "table" else "-o"
    assert main([command, str(run), flag, str(mine)]) == 2
    assert "--force" in _one_line(capsys) and mine.read_text() == "mine\n"
    assert main([command, str(run), flag, str(mine), "--force"]) == 0
    assert mine.read_text() != "mine\n"
    capsys.readouterr()


def test_report_replaces_its_own_earlier_page_but_not_a_stranger(tmp_path, capsys) -> None:
    run = _copy_run(tmp_path)
    assert main(["report", str(run)]) == 0
    first = (run / "report.html").read_text()
    assert main(["report", str(run)]) == 0  # an earlier freqpure report is regenerable output
    assert (run / "report.html").read_text().startswith(first[:200])
    (run / "report.html").write_text("<p>my own page</p>")
    assert main(["report", str(run)]) == 2
    assert "--force" in capsys.readouterr().err and (run / "report.html").read_text() == "<p>my own page</p>"


def test_table_out_folder_is_named_not_a_temp_file(tmp_path, capsys) -> None:
    """Item 8: `table --out DIR` named a temporary file in its error."""
    run = _copy_run(tmp_path)
    assert main(["table", str(run), "--out", str(tmp_path)]) == 2
    line = _one_line(capsys)
    assert "must be a file path" in line and ".tmp" not in line


# ------------------------------------------------------------------ data loss: one writer per folder
def test_purify_into_a_folder_in_use_is_refused(hostile, tmp_path, capsys) -> None:
    """Item 3: two concurrent purifies into one new folder both exited 0; the second is now refused."""
    from freqpure.evaluation.lock import LOCK_NAME, RunLock

    out = tmp_path / "shared"
    holder = RunLock(out).acquire()  # a live purify holds the folder (flock: per open file, also in-process)
    try:
        assert main(["purify", str(hostile["ok"]), "--out", str(out), *FAST]) == 2
        line = _one_line(capsys)
        assert "in use by another freqpure run" in line and f"PID {os.getpid()}" in line
        assert (out / LOCK_NAME).exists()  # the holder's lock file is left alone
    finally:
        holder.release()
    assert main(["purify", str(hostile["ok"]), "--out", str(out), *FAST]) == 0  # free again (stale lock file)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "ok.png"]  # no lock file left behind
    capsys.readouterr()
    assert main(["purify", str(hostile["ok"]), "--out", str(out), *FAST]) == 2  # now it holds a finished run
    assert "not empty" in _one_line(capsys)


def test_a_lock_file_removed_between_open_and_lock_is_not_trusted(tmp_path) -> None:
    """A run that removed its lock file as it finished: a process that opened the old file must not win."""
    import fcntl

    from freqpure.errors import RunFolderError
    from freqpure.evaluation.lock import RunLock

    lock = RunLock(tmp_path / "f")
    real_flock = fcntl.flock

    def flock_after_removal(fd, op):  # the other run finishes and removes the file just before our flock
        lock.path.unlink(missing_ok=True)
        return real_flock(fd, op)

    (tmp_path / "f").mkdir()
    lock.path.write_text("")
    fcntl.flock = flock_after_removal
    try:
        with pytest.raises(RunFolderError, match="has just finished"):
            lock.acquire()
    finally:
        fcntl.flock = real_flock
    assert not lock.held and RunLock(tmp_path / "f").acquire().held


@pytest.mark.parametrize("argv", [
    lambda out: ["analyze", "--out", str(out), "--n", "2"],
    lambda out: ["demo", "--out", str(out), "--n", "2", "--no-estimate"],
    lambda out: ["train", "classifier", "--out", str(out), "--epochs", "1"],
    lambda out: ["train", "diffusion", "--out", str(out), "--steps", "1"],
], ids=["analyze", "demo", "train-classifier", "train-diffusion"])
def test_every_folder_writing_command_locks_its_folder(argv, tmp_path, capsys) -> None:
    """Item 3: every command that writes a folder holds evaluate's lock on it; a second one is refused at once."""
    from freqpure.evaluation.lock import RunLock

    out = tmp_path / "busy"
    with RunLock(out):
        assert main(argv(out)) == 2
        assert "in use by another freqpure run" in _one_line(capsys)
    assert [p.name for p in out.iterdir()] == [".freqpure.lock"]  # nothing written beside the holder's lock


def test_demo_overwrite_deletes_only_its_own_run_folders(tmp_path, capsys) -> None:
    """`demo --overwrite` deleted any folder named none/diffpure/freqpure in --out."""
    mine = tmp_path / "out" / "diffpure"
    mine.mkdir(parents=True)
    (mine / "holiday.png").write_text("keep me\n")
    assert main(["demo", "--out", str(tmp_path / "out"), "--overwrite", "--n", "2", "--no-estimate"]) == 2
    assert "not a demo's run folder" in _one_line(capsys)
    assert (mine / "holiday.png").read_text() == "keep me\n"


@pytest.mark.parametrize("command, words", [("demo", "not a demo's"), ("analyze", "no analysis.json")])
def test_demo_and_analyze_refuse_another_runs_folder(command, words, tmp_path, capsys) -> None:
    other = tmp_path / "someone-else"
    other.mkdir()
    (other / "results.json").write_text("{}\n")
    assert main([command, "--out", str(other), "--n", "2"]) == 2
    assert words in _one_line(capsys)
    assert [p.name for p in other.iterdir()] == ["results.json"]  # untouched: no lock file either
    assert (other / "results.json").read_text() == "{}\n"


# ------------------------------------------------------------------ silently wrong: records (table, report)
def test_every_committed_evaluate_record_validates() -> None:
    """The one validator accepts every samples.jsonl an evaluate run has committed (schema 0 and 1)."""
    import yaml

    from freqpure.evaluation.results import read_sample_records

    def is_evaluate_run(folder: Path) -> bool:  # a study's clean parts keep other records (config: setting:)
        if (folder / "results.json").exists():
            return True
        return "attacks" in (yaml.safe_load((folder / "config.yaml").read_text()) or {})

    runs = [p.parent for p in RESULTS_DIR.rglob("samples.jsonl") if is_evaluate_run(p.parent)]
    assert len(runs) >= 8, runs
    for run in runs:
        records = read_sample_records(run / "samples.jsonl")
        assert records and all(r.robust == (r.clean_correct and all(a.correct for a in r.attacks.values()))
                               for r in records.values()), run


def test_every_committed_results_json_is_consistent_with_its_records() -> None:
    """Every committed evaluation results.json passes table/report's checks (and adds up to its records)."""
    from freqpure.evaluation.results import read_run

    runs = sorted(p.parent for p in RESULTS_DIR.rglob("results.json") if (p.parent / "config.yaml").exists()
                  or (p.parent / "samples.jsonl").exists() or p.parent.name.endswith("-table-bundled"))
    assert len(runs) >= 7, runs
    with_records = [run for run in runs if read_run(run)[1] is not None]
    assert len(with_records) >= 6, with_records


RECORD_ROWS = [
    ("robust-string", lambda r: r.update(robust="false"), ["robust must be JSON true or false", "'false'"]),
    ("robust-contradicts", lambda r: r.update(robust=True), ["robust is true but", "survives 0 of 1"]),
    ("clean-contradicts", lambda r: r.update(clean_correct=False),
     ["clean_correct is false but clean_pred 0 equals the label 0"]),
    ("attack-contradicts", lambda r: next(iter(r["attacks"].values())).update(correct=True),
     ["correct is true but its pred 8 differs from the label 0"]),
    ("no-fingerprint", lambda r: r.pop("config_sha256"), ["config_sha256 is missing"]),
    ("schema-string", lambda r: r.update(schema_version="1"), ["schema_version must be a whole number", "'1'"]),
    ("schema-newer", lambda r: r.update(schema_version=2), ["schema_version 2 is newer"]),
    ("empty-attacks", lambda r: r.update(attacks={}), ["attacks is empty"]),
    ("unknown-key", lambda r: r.update({"robust ": True}), ["unknown key(s) 'robust '"]),
    ("negative-label", lambda r: r.update(label=-1), ["label must be a whole number >= 0"]),
    ("float-pred", lambda r: r.update(clean_pred=0.0), ["clean_pred must be a whole number"]),
    ("nan-linf", lambda r: next(iter(r["attacks"].values())).update(linf=math.nan), ["linf must be a finite"]),
    ("attack-missing-pred", lambda r: next(iter(r["attacks"].values())).pop("pred"), ["lacks pred"]),
]


@pytest.mark.parametrize("command", ["table", "report"])
@pytest.mark.parametrize("edit, words", [(r[1], r[2]) for r in RECORD_ROWS], ids=[r[0] for r in RECORD_ROWS])
def test_a_bad_record_is_refused_naming_file_and_line(command, edit, words, tmp_path, capsys) -> None:
    """Item 4: a record is validated on read (types, derived fields, fingerprint) and refused with file:line."""
    run = _copy_run(tmp_path)
    _edit_line(run / "samples.jsonl", 7, edit)
    before = _files(run)
    out = ["--out", str(tmp_path / "t.md")] if command == "table" else ["-o", str(tmp_path / "r.html")]
    assert main([command, str(run), *out]) == 2
    line = _one_line(capsys)
    assert f"{run / 'samples.jsonl'}:7" in line, line
    for word in words:
        assert word in line, (word, line)
    assert _files(run) == before and not (tmp_path / "t.md").exists() and not (tmp_path / "r.html").exists()


def test_garbled_and_duplicate_lines_are_refused(tmp_path, capsys) -> None:
    run = _copy_run(tmp_path)
    samples = run / "samples.jsonl"
    text = samples.read_text()
    lines = text.splitlines(keepends=True)
    samples.write_text("".join(lines[:3]) + "{not json\n" + "".join(lines[3:]))
    assert main(["table", str(run)]) == 2
    assert f"{samples}:4: not a JSON record" in _one_line(capsys)
    twin = json.loads(lines[0])  # index 8 again, valid in itself but with another prediction
    twin.update(clean_pred=3, clean_correct=False, robust=False)
    samples.write_text(text + json.dumps(twin) + "\n")
    assert main(["table", str(run)]) == 2
    assert f"{samples}:513: index 8 was already recorded on line 1 with other predictions" in _one_line(capsys)
    samples.write_text(text + lines[0][:40])  # a torn last line (a kill mid-write) is no error
    assert main(["table", str(run)]) == 0
    capsys.readouterr()


def test_records_that_do_not_add_up_to_results_json_are_refused(tmp_path, capsys) -> None:
    """Item 5: a valid record changed consistently no longer adds up to results.json's counts."""
    run = _copy_run(tmp_path)
    _edit_line(run / "samples.jsonl", 1, lambda r: r.update(clean_pred=3, clean_correct=False))
    assert main(["table", str(run)]) == 2
    assert "says clean = 425 but its samples.jsonl records give 424" in _one_line(capsys)


def _set_accuracy(entry: dict, k: int) -> None:
    from freqpure.evaluation.results import accuracy

    entry.update(accuracy([True] * k + [False] * (entry["n"] - k)))


RESULTS_ROWS = [
    ("accuracy-beside-count", lambda d: d["clean"].update(accuracy=0.99), ["accuracy 0.99 is not correct / n"]),
    ("correct-over-n", lambda d: d["clean"].update(correct=600), ["correct = 600 of n = 512 is not a count"]),
    ("nan-accuracy", lambda d: d["robust"].update(accuracy=math.nan), ["accuracy nan is not correct / n"]),
    ("robust-over-clean", lambda d: (_set_accuracy(d["robust"], 430), _set_accuracy(d["per_attack"][
        "PGD-EOT Linf (full)"], 430)), ["worst case (430 correct) exceeds clean (425 correct)"]),
    ("string-count", lambda d: d["clean"].update(correct="425"), ["correct = '425'"]),
    ("string-n", lambda d: d.update(n="512"), ["n must be a whole number"]),
    ("wrong-ci", lambda d: d["clean"].update(ci95=[0.0, 1.0]), ["ci95 [0.0, 1.0] is not the 95% Wilson interval"]),
    ("empty-per-attack", lambda d: d.update(per_attack={}), ["per_attack is empty"]),
    ("missing-purifier-key", lambda d: d["config"]["purifier"].pop("rounds"), ["config lacks purifier.rounds"]),
    ("no-purifier", lambda d: d["config"].pop("purifier"), ["config lacks purifier.method"]),
    ("schema-string", lambda d: d.update(schema_version="1"), ["schema_version must be a whole number", "'1'"]),
    ("count-differs-from-records", lambda d: _set_accuracy(d["clean"], 424),
     ["says clean = 424 but its samples.jsonl records give 425"]),
    ("timings-string", lambda d: d["timings"].update(seconds_per_sample="fast"), ["seconds_per_sample must be"]),
]


@pytest.mark.parametrize("command", ["table", "report"])
@pytest.mark.parametrize("edit, words", [(r[1], r[2]) for r in RESULTS_ROWS], ids=[r[0] for r in RESULTS_ROWS])
def test_inconsistent_results_json_is_refused(command, edit, words, tmp_path, capsys) -> None:
    """Items 5 and 7: table/report printed whatever results.json said (0.99 beside 3/4, 9 of 4, NaN, robust >
    clean, strings) or raised a traceback (empty per_attack, missing purifier keys)."""
    run = _copy_run(tmp_path)
    data = json.loads((run / "results.json").read_text())
    edit(data)
    (run / "results.json").write_text(json.dumps(data))
    out = ["--out", str(tmp_path / "t.md")] if command == "table" else ["-o", str(tmp_path / "r.html")]
    assert main([command, str(run), *out]) == 2
    line = _one_line(capsys)
    assert "results.json" in line
    for word in words:
        assert word in line, (word, line)


def test_unedited_run_still_tables(tmp_path, capsys) -> None:
    """The control for the rows above: the same copied run, unedited, makes its table."""
    run = _copy_run(tmp_path)
    assert main(["table", str(run), "--out", str(tmp_path / "t.md")]) == 0
    assert "83.0 [79.5, 86.0]" in (tmp_path / "t.md").read_text()
    capsys.readouterr()


# ------------------------------------------------------------------ silently wrong: evaluate's finalize
def test_evaluate_finalize_validates_every_record(tmp_path, capsys) -> None:
    """Item 4: evaluate summarises only records that pass the validator; a bad one is named by file and line."""
    run = tmp_path / "ev"
    args = ["evaluate", *EVAL, "--set", "purifier.method=none", "--out", str(run), "--threads", "1"]
    assert main(args) == 0
    capsys.readouterr()
    samples = run / "samples.jsonl"
    good = samples.read_text()
    (run / "results.json").unlink()
    for edit, words in [
        (lambda r: r.update(robust="false" if r["robust"] else "true"), "robust must be JSON true or false"),
        (lambda r: r.pop("config_sha256"), "config_sha256 is missing"),
        # a line made to look like a schema-0 record among schema-1 ones still needs its fingerprint
        (lambda r: (r.pop("config_sha256"), r.pop("schema_version")), "config_sha256 is missing"),
        (lambda r: r.update(clean_correct=not r["clean_correct"]), "clean_correct is"),
    ]:
        samples.write_text(good)
        _edit_line(samples, 2, edit)
        assert main([*args, "--resume"]) == 2
        line = _one_line(capsys)
        assert f"{samples}:2" in line and words in line, line
        assert not (run / "results.json").exists()
    extra = json.loads(good.splitlines()[0]) | {"index": 99999}
    samples.write_text(good + json.dumps(extra) + "\n")
    assert main([*args, "--resume"]) == 2
    assert "outside this run's subset (index 99999)" in _one_line(capsys)
    samples.write_text(good)
    assert main([*args, "--resume"]) == 0 and (run / "results.json").exists()
    capsys.readouterr()


# ------------------------------------------------------------------ tracebacks: data files
@pytest.mark.parametrize("labels, words", [
    ([99] + [0] * 9, "label 99 is not a CIFAR-10 class"),
    ([-1] + [0] * 9, "label -1 is not a CIFAR-10 class"),
    ([0] * 9, "10 images but 9 labels"),
], ids=["label-99", "label-minus-1", "label-count"])
def test_cifar_batch_with_bad_labels_is_refused(labels, words, tmp_path, capsys) -> None:
    """Item 7: labels 99 or -1 raised an IndexError inside the attack; a label-count mismatch was called a
    data-shape error."""
    import pickle

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.zeros((10, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    assert main(["evaluate", *EVAL, "--set", "purifier.method=none", "--data-dir", str(tmp_path / "cifar"),
                 "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert "test_batch" in line and words in line, line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ silently wrong / tracebacks: weight files
def _weights_with(tmp_path: Path, bundled: str, *, config: dict | None = None, int8: bool = False) -> Path:
    sd, meta = read_safetensors(WEIGHTS / f"{bundled}.safetensors")
    if int8:
        sd = {k: (v.to(torch.int8) if v.is_floating_point() else v) for k, v in sd.items()}
    if config is not None:
        meta = meta | {"freqpure_config": json.dumps(json.loads(meta["freqpure_config"]) | config)}
    return write_safetensors(tmp_path / "hostile.safetensors", sd, meta)


@pytest.mark.parametrize("bundled, change, words", [
    ("cifar10-ddpm-small", {"config": {"base": -1}}, "cannot build architecture 'small-unet'"),
    ("cifar10-ddpm-small", {"int8": True}, "stored as integers where the model holds floats"),
    ("cifar10-resnet-small", {"config": {"std": [0, 0, 0]}}, "std must be finite numbers > 0"),
    ("cifar10-resnet-small", {"config": {"mean": "abc"}}, "mean must be finite numbers"),
    ("cifar10-resnet-small", {"config": {"widths": [-1, 256, 256]}}, "cannot build architecture 'fast-resnet'"),
], ids=["negative-base", "int8-weights", "zero-std", "string-mean", "negative-width"])
def test_hostile_weight_metadata_is_refused(bundled, change, words, tmp_path) -> None:
    """Items 6 and 7: `base: -1` raised a RuntimeError, `std: [0, 0, 0]` and int8 weights loaded silently."""
    path = _weights_with(tmp_path, bundled, **change)
    load = freqpure.load_diffusion if "ddpm" in bundled else freqpure.load_classifier
    with pytest.raises(CheckpointError) as info:
        load(str(path))
    assert words in str(info.value) and "hostile.safetensors" in str(info.value)


# ------------------------------------------------------------------ tracebacks: train export / summary
FIXTURE_RUN = REPO / "tests" / "fixtures" / "train_resume_dc7605b" / "run"


class _RunsCode:
    """Unpickling this would run a command (it never may)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damaged_run(tmp_path: Path, kind: str) -> Path:
    import pickle
    import shutil

    run = tmp_path / "trainrun"
    shutil.copytree(FIXTURE_RUN, run)
    ckpt = run / "checkpoint.pt"
    if kind == "malicious":
        ckpt.write_bytes(pickle.dumps({"step": 1, "config": {}, "model": _RunsCode(tmp_path / "PWNED")}))
    elif kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "config-less":
        snap = torch.load(ckpt, weights_only=True)
        snap.pop("config")
        torch.save(snap, ckpt)
    return run


@pytest.mark.parametrize("kind, words", [
    ("malicious", "nothing in it was run"),
    ("truncated", "not a readable training checkpoint"),
    ("empty", "not a readable training checkpoint"),
    ("config-less", "not a freqpure training checkpoint (needs step, config, model"),
])
def test_train_export_of_a_damaged_checkpoint_is_one_line(kind, words, tmp_path, capsys) -> None:
    """Item 7: `train export` on a malicious, truncated or config-less checkpoint.pt raised a traceback."""
    run = _damaged_run(tmp_path, kind)
    assert main(["train", "export", str(run), str(tmp_path / "w.safetensors")]) == 2
    line = _one_line(capsys)
    assert "checkpoint.pt" in line and words in line, line
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("text, words", [
    ('{"step": 1, "loss": 0.5, "images_per_s": 3.0}\n{not json\n', "metrics.jsonl:2: not a JSON row"),
    ('{"step": "x"}\n', "metrics.jsonl:1: a row needs a whole-number step"),
    ('["a list"]\n', "metrics.jsonl:1: a row needs a whole-number step"),
    ('{"step": 1, "loss": "low", "images_per_s": 3.0}\n', "loss must be a number"),
], ids=["garbled", "string-step", "list", "string-loss"])
def test_train_summary_of_a_garbled_log_is_one_line(text, words, tmp_path, capsys) -> None:
    """Item 7: a garbled metrics.jsonl raised a traceback in `train summary`."""
    run = _damaged_run(tmp_path, "none")
    (run / "metrics.jsonl").write_text(text)
    assert main(["train", "summary", str(run)]) == 2
    assert words in _one_line(capsys)


def test_train_summary_skips_a_torn_last_row(tmp_path, capsys) -> None:
    run = _damaged_run(tmp_path, "none")
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + '{"step": 4, "lo')  # a kill in the middle of a write
    assert main(["train", "summary", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3


# ------------------------------------------------------------------ silently wrong: purify
def _rgb16_png(path: Path) -> np.ndarray:
    """Write a 16-bit RGB PNG (PIL cannot); return its values."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    values = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 37 % 65536).astype(">u2")
    raw = b"".join(b"\x00" + values[y].tobytes() for y in range(32))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return values


def test_sixteen_bit_colour_png_needs_convert_and_is_recorded(tmp_path, capsys) -> None:
    """Item 6: a 16-bit RGB PNG was read as plain 8-bit RGB (values truncated) and recorded as RGB."""
    image = tmp_path / "in" / "deep.png"
    image.parent.mkdir()
    _rgb16_png(image)
    assert main(["purify", str(image), "--out", str(tmp_path / "o"), *FAST]) == 2
    line = _one_line(capsys)
    assert "deep.png" in line and "16-bit colour" in line and "--convert" in line
    assert not (tmp_path / "o").exists()
    assert main(["purify", str(image), "--out", str(tmp_path / "o"), *FAST, "--convert"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["files"][0]["conversions"] == ["16-bit colour (RGB) -> 8 bits per channel (the high byte of "
                                                   "each value is kept)"]
    capsys.readouterr()
