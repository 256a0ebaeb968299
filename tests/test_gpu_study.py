"""scripts/gpu_study.sh: its part list, its refusals, and the collective backend of ranks sharing one GPU."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from freqpure.evaluation.distributed import collective_backend
from freqpure.study import load_study_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_study.sh"


def test_every_listed_part_is_a_part_of_the_study_and_the_primary_endpoint_comes_first():
    block = SCRIPT.read_text().split("PARTS=(", 1)[1].split(")", 1)[0]
    parts = re.findall(r"\S+/\S+", block)
    study = load_study_config(REPO / "configs" / "study-cifar10.yaml")
    known = {f"{s.name}/{p.name}" for s in study.stages for p in (s.settings if s.kind == "clean" else s.runs)}
    assert parts and set(parts) <= known and len(parts) == len(set(parts))
    assert parts[:2] == ["stage4-honest-protocol/freqpure-official-v2", "stage4-honest-protocol/diffpure-v2"]
    assert set(parts[2:4]) == {"stage3-paper-protocol/freqpure-official-v2", "stage3-paper-protocol/freqpure-paper-v2"}


def test_the_script_refuses_what_it_cannot_run(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)

    res = run("--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "--data must name a folder holding test.tar" in res.stderr
    res = run("--bogus")
    assert res.returncode == 2 and "unknown argument --bogus" in res.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.tar").write_bytes(b"")
    res = run("--data", str(tmp_path / "data"))
    assert res.returncode == 2 and "--out DIR is required" in res.stderr
    if not torch.cuda.is_available():
        res = run("--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"))
        assert res.returncode == 2 and "no CUDA device" in res.stderr


def test_ranks_sharing_one_gpu_meet_over_gloo(monkeypatch):
    assert collective_backend(torch.device("cpu"), 4) == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert collective_backend(torch.device("cuda"), 1) == "nccl"
    assert collective_backend(torch.device("cuda"), 3) == "gloo"  # NCCL refuses two ranks on one device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert collective_backend(torch.device("cuda:1"), 4) == "nccl"
