"""``freqpure demo`` at a tiny size: the table, the run-dir layout contract and the image grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freqpure.cli.main import main
from helpers import model_name

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library itself


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()  # the demo sets its --threads for the whole process
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_tiny(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "3", "--batch-size", "2", "--steps", "2", "--eot", "2",
            "--ensemble", "1", "--rounds", "20:2", "--no-progress", "--threads", "1",
            "--classifier", model_name("cifar10-resnet-small"), "--diffusion", model_name("cifar10-ddpm-small")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for title in ("no defence", "DiffPure", "FreqPure", "clean", "robust"):
        assert title in printed
    summary = json.loads((out / "results.json").read_text())
    assert [row["defence"] for row in summary["table"]] == ["none", "diffpure", "freqpure"]
    for row in summary["table"]:
        assert row["n"] == 3 and 0 <= row["robust"]["accuracy"] <= row["clean"]["accuracy"] <= 1
    for method in ("none", "diffpure", "freqpure"):
        run = out / method
        for name in ("config.yaml", "results.json", "results.md", "samples.jsonl", "examples.npz"):
            assert (run / name).is_file(), f"{method}/{name}"
        ex = np.load(run / "examples.npz")
        assert set(ex.files) >= {"clean", "adversarial", "purified", "labels", "pred_clean", "pred_adversarial",
                                 "class_names"}
        assert ex["clean"].shape == (3, 3, 32, 32) and ex["clean"].dtype == np.float32
        assert ex["pred_adversarial"].dtype == np.int64
        if method == "none":
            assert np.array_equal(ex["purified"], ex["adversarial"])
        else:
            assert not np.array_equal(ex["purified"], ex["adversarial"])
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] > 5 * 96 and grid.size[1] > 3 * 96
    # the same command again reuses the finished runs; other flags on the same --out are refused with the diff
    before = json.loads((out / "freqpure" / "results.json").read_text())
    assert main(args) == 0
    assert json.loads((out / "freqpure" / "results.json").read_text())["robust"] == before["robust"]
    capsys.readouterr()
    assert main([*args, "--steps", "3"]) == 2
    assert "attacks" in capsys.readouterr().err
