"""``freqpure demo`` at a tiny size: the printed table, the run-dir layout, resuming and the time estimate."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from freqpure.cli.main import main
from freqpure.evaluation.demo import DemoSettings, demo_configs, format_table, read_demo
from freqpure.evaluation.results import read_results

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library itself


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()  # the demo sets its --threads for the whole process
    yield
    torch.set_num_threads(before)


def test_demo_prints_estimate_settings_intervals_and_reading(tiny_demo) -> None:
    out, _, printed = tiny_demo
    lines = printed.splitlines()
    assert lines[0].startswith("estimated time: about ") and "1-batch timing" in lines[0]
    assert "attack: PGD L∞ 8/255, 2 steps of 10/255, EOT 2" in printed
    assert "majority vote of 1 purification(s), plan 20:2 (noise to t*=20, 2 DDPM denoising steps)" in printed
    summary, results = read_demo(out)
    for method, title in (("none", "no defence"), ("diffpure", "DiffPure"), ("freqpure", "FreqPure")):
        res = results[method]
        row = next(line for line in lines if line.startswith(title + " "))
        lo, hi = res.robust.ci95
        assert f"{100 * res.robust.accuracy:5.1f}% [{100 * lo:4.1f}, {100 * hi:5.1f}]" in row
    reading = next(line for line in lines if line.startswith("reading: "))
    assert f"DiffPure keeps {results['diffpure'].robust.correct} of 3 images" in reading
    assert "sanity: a separate 20-step PGD straight at the bare classifier" in printed
    assert "differs from the no-defence robust row" in printed
    assert summary.estimate_seconds > 0 and summary.wall_seconds > 0
    assert format_table(None, results) in printed


def test_demo_run_dirs_results_and_grid(tiny_demo) -> None:
    out, _, _ = tiny_demo
    summary = json.loads((out / "results.json").read_text())
    assert summary["kind"] == "freqpure-demo" and summary["schema_version"] == 1
    assert summary["settings"]["n"] == 3 and summary["runs"] == {m: m for m in ("none", "diffpure", "freqpure")}
    for method in ("none", "diffpure", "freqpure"):
        run = out / method
        for name in ("config.yaml", "results.json", "results.md", "samples.jsonl", "examples.npz"):
            assert (run / name).is_file(), f"{method}/{name}"
        res = read_results(run)
        assert res.n == 3 and 0 <= res.robust.accuracy <= res.clean.accuracy <= 1
        assert res.resumed is False, "a fresh run is not a resume"
        ex = np.load(run / "examples.npz")
        assert set(ex.files) >= {"clean", "adversarial", "purified", "labels", "pred_clean", "pred_adversarial",
                                 "pred_purified", "class_names"}
        assert ex["clean"].shape == (3, 3, 32, 32) and ex["clean"].dtype == np.float32
        if method == "none":
            assert np.array_equal(ex["purified"], ex["adversarial"])
            assert np.array_equal(ex["pred_purified"], ex["pred_adversarial"])
        else:
            assert not np.array_equal(ex["purified"], ex["adversarial"])
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] > 8 * 90 and grid.size[1] > 3 * 90
    assert (out / "report.html").is_file()


def test_demo_rerun_reuses_work_and_refuses_other_settings(tiny_demo, tmp_path, capsys) -> None:
    out, args, _ = tiny_demo
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    args = [a if a != str(out) else str(copy) for a in args] + ["--no-estimate"]
    before = read_results(copy / "freqpure")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "estimated time" not in printed
    again = read_results(copy / "freqpure")
    assert again.robust == before.robust and again.resumed is True, "continuing finished work is a resume"
    assert main([*args, "--attack-steps", "3"]) == 2
    assert "attacks" in capsys.readouterr().err


def test_demo_settings_come_from_config_file_set_and_flags(tmp_path, capsys) -> None:
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("n: 5\nattack_steps: 4\n")
    from freqpure.cli.common import load_command_config
    from freqpure.cli.main import build_parser

    parser = build_parser()
    ns = parser.parse_args(["demo", "--config", str(cfg), "--set", "eot=3", "--ensemble", "2"])
    settings = load_command_config(DemoSettings, ns, {"ensemble": ns.ensemble, "eot": ns.eot})
    assert (settings.n, settings.attack_steps, settings.eot, settings.ensemble) == (5, 4, 3, 2)
    cfgs = demo_configs(settings)
    assert cfgs["none"].defence.ensemble == 1 and cfgs["freqpure"].defence.ensemble == 2
    assert main(["demo", "--config", str(cfg), "--set", "nn=3"]) == 2
    assert re.search(r"unknown config key.*nn", capsys.readouterr().err)
    assert main(["demo", "--set", "attack_steps=3", "--attack-steps", "4"]) == 2
    assert "given both by --set and by its own flag" in capsys.readouterr().err


def test_demo_default_size_estimate_method(monkeypatch) -> None:
    """The estimate scales a 1-batch timing by the number of gradients and predictions: check the arithmetic
    with a model whose cost is known (a sleep per call)."""
    import time

    from freqpure.evaluation import demo as demo_mod

    settings = DemoSettings(n=16, attack_steps=3, eot=1, batch_size=8, ensemble=1)
    cfgs = demo_configs(settings)
    calls = {"n": 0}

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            calls["n"] += 1
            time.sleep(0.01)
            return self.lin(x.flatten(1))

    for cfg in cfgs.values():
        cfg.sanity.enabled = False
    only_none = {"none": cfgs["none"]}
    seconds = demo_mod.estimate_seconds(only_none, Slow().eval(), None)
    # 2 batches x ((3 + 1) gradients + 3 predictions) x ~10 ms, plus the timing itself (3 calls)
    assert 0.14 <= seconds <= 0.5, seconds
    resumed = demo_mod.estimate_seconds(only_none, Slow().eval(), None, done={"none": 16})
    assert resumed < 0.1, "finished samples cost nothing"
