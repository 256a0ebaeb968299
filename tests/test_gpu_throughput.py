"""benchmarks/gpu_throughput.py (#25 item 6) runs end to end at a tiny size on the CPU and counts the
ε-model's image-calls of each workload exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_throughput_runs_on_the_cpu_and_counts_unet_calls(tmp_path: Path) -> None:
    out = tmp_path / "gt.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--device", "cpu", "--threads", "1",
           "--precisions", "fp32", "--schemes", "blake2b-philox-v2,counter-v1", "--repeats", "1", "--batch", "2",
           "--ensemble", "2", "--eot", "2", "--rounds", "20:2", "--surrogate", "20:1", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2  # methods x schemes x workloads
    calls = {(r["method"], r["workload"]): r["image_unet_calls"] for r in rows}
    assert calls[("diffpure-v2", "predict")] == 2 * 2 * 2  # images x ensemble x steps
    assert calls[("diffpure-v2", "attack")] == 2 * 2 * 1  # images x EOT x surrogate steps (plain backprop)
    assert calls[("freqpure-official-v2", "predict")] == 2 * 2 * 2 * 2  # + the re-denoised reference per step
    for r in rows:
        assert r["calls_per_s"] > 0 and r["ratio_to_floor"] > 0 and r["unet_batch"] == 4 and r["compile"] == "none"
    assert "| diffpure-v2 | predict | fp32 | counter-v1 | none | 4 |" in result.stdout
