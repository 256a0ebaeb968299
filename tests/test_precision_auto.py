"""``precision: auto`` measures fp32 against bf16 on first use (#25 item 5): the decision rule on injected
timings, the per-machine-and-model cache in the user's cache folder, and the record of what was chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import freqpure.precision as prec
from freqpure.runtime import Autocast, resolve_precision, run_in_precision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _measured(monkeypatch, tmp_path):
    """``auto`` unforced (the suite pins FREQPURE_PRECISION=fp32), a private cache folder, a clean memo."""
    monkeypatch.delenv("FREQPURE_PRECISION", raising=False)
    monkeypatch.setenv("FREQPURE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "_PROCESS", {})
    monkeypatch.setattr(prec, "_MEMO", prec.weakref.WeakKeyDictionary())


def _timer(fp32: float, bf16: float, calls: list[int]):
    def timer(fn, args):
        calls.append(1)
        return {"fp32": fp32, "bf16": bf16}

    return timer


def test_the_faster_precision_is_chosen_with_a_margin() -> None:
    assert prec.decide_precision(0.015, 0.0107)[0] == "bf16"  # the EPYC with avx512_bf16: 1.4x
    assert prec.decide_precision(0.010, 0.0125)[0] == "fp32"  # this project's Xeons: bf16 0.8x as fast
    assert prec.decide_precision(0.010, 0.0097)[0] == "fp32"  # 3% is within timing noise: stay exact
    choice, why = prec.decide_precision(0.010, 0.005)
    assert choice == "bf16" and "2.00x" in why and "fp32 10 ms" in why


def test_a_measurement_is_cached_per_machine_and_model(tmp_path, monkeypatch) -> None:
    model = nn.Conv2d(3, 3, 3, padding=1)
    args = (torch.rand(4, 3, 8, 8),)
    calls: list[int] = []
    d = prec.measured_precision(model, args, "cpu", timer=_timer(0.02, 0.01, calls))
    assert (d.choice, d.source, d.fp32_seconds, d.bf16_seconds) == ("bf16", "measured", 0.02, 0.01) and calls == [1]
    assert prec.measured_precision(model, args, "cpu", timer=_timer(0.01, 0.02, calls)).choice == "bf16"  # memo
    cache = tmp_path / "cache" / "precision.json"
    saved = json.loads(cache.read_text())
    (key, entry), = saved.items()
    assert entry["choice"] == "bf16" and "threads" in key and "Conv2d" in key and "4x3x8x8" in key
    # a new process (fresh memo) with the same model and shapes reads the cache instead of timing
    monkeypatch.setattr(prec, "_MEMO", prec.weakref.WeakKeyDictionary())
    again = prec.measured_precision(nn.Conv2d(3, 3, 3, padding=1), args, "cpu", timer=_timer(0.01, 0.02, calls))
    assert again.choice == "bf16" and again.source == "cache" and calls == [1]
    # another model (other parameter shapes) is measured anew
    other = prec.measured_precision(nn.Conv2d(3, 3, 5, padding=2), args, "cpu", timer=_timer(0.01, 0.02, calls))
    assert other.choice == "fp32" and calls == [1, 1]
    assert len(json.loads(cache.read_text())) == 2


def test_the_cache_lives_in_the_user_cache_folder_not_the_repository(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("FREQPURE_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert prec.cache_dir() == tmp_path / "home" / ".cache" / "freqpure"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert prec.cache_dir() == tmp_path / "xdg" / "freqpure"
    assert REPO not in prec.cache_dir().parents


def test_a_clearly_slower_bf16_is_recorded_as_decided_on_the_warm_up(monkeypatch) -> None:
    model = nn.Linear(3, 3)
    d = prec.measured_precision(model, (torch.rand(2, 3),), "cpu",
                                timer=lambda fn, args: {"fp32": 0.8, "bf16": 40.0, "timed_calls": 0.0})
    assert d.choice == "fp32" and "one warm-up call each" in d.reason and "0.02x" in d.reason


def test_auto_in_a_model_call_measures_once_and_records_why(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(prec, "time_precisions", _timer(0.03, 0.01, calls))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.rand(2, 3, 2, 2)
    out = run_in_precision(model, "auto", x)
    assert out.dtype == torch.float32 and calls == [1]
    torch.testing.assert_close(out, run_in_precision(model, "bf16", x))  # ran under bf16 autocast
    run_in_precision(model, "auto", torch.rand(5, 3, 2, 2))  # another batch: the process's decision holds
    assert calls == [1]
    wrapped = Autocast(model, "auto")
    assert torch.equal(wrapped(x), out)  # the same model object: the same decision, no new timing
    (record,) = prec.decisions()
    assert record["choice"] == "bf16" and record["source"] == "measured" and "3.00x" in record["reason"]
    monkeypatch.setenv("FREQPURE_PRECISION", "fp32")  # the override still wins, without measuring
    assert resolve_precision("auto", "cpu", model=nn.Linear(2, 2), args=(torch.rand(1, 2),)) == "fp32"
    assert calls == [1]


def test_a_config_resolves_auto_by_timing_its_diffusion_model(monkeypatch) -> None:
    from freqpure.config import PurifierConfig, with_resolved_precision
    from helpers import model_name

    calls: list[int] = []
    monkeypatch.setattr(prec, "time_precisions", _timer(0.01, 0.02, calls))
    cfg = with_resolved_precision(PurifierConfig(diffusion=model_name("cifar10-ddpm-small"), precision="auto"))
    assert cfg.precision == "fp32" and calls == [1]
    (record,) = prec.decisions()
    assert "4x3x32x32" in record["model"] and record["source"] == "measured"
    assert with_resolved_precision(PurifierConfig(method="none", precision="auto")).precision in ("fp32", "bf16")


def test_real_timings_are_positive_and_interleaved() -> None:
    model = nn.Conv2d(3, 8, 3)
    ticks = iter(range(100))
    times = prec.time_precisions(model, (torch.rand(1, 3, 8, 8),), repeats=2, clock=lambda: float(next(ticks)))
    assert times == {"fp32": 1.0, "bf16": 1.0, "timed_calls": 2.0}  # every call takes one tick of the clock
    # a bf16 warm-up call more than 3x slower than fp32's decides at once: no timed calls follow
    clock = iter([0.0, 1.0, 1.0, 5.0])  # fp32 warm-up 1 s, bf16 warm-up 4 s
    slow = prec.time_precisions(model, (torch.rand(1, 3, 8, 8),), repeats=2, clock=lambda: next(clock))
    assert slow == {"fp32": 1.0, "bf16": 4.0, "timed_calls": 0.0}
    real = prec.time_precisions(model, (torch.rand(1, 3, 8, 8),), repeats=1)
    assert real["fp32"] > 0 and real["bf16"] > 0
