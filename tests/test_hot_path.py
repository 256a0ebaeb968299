"""The per-step and per-iteration path (#25): validated once at the edge, no per-step host read-backs,
best-iterate bookkeeping without boolean indexing, cached masks, and "auto" checkpointing decided once
per attack run from free plus reclaimable memory. (On CUDA the same is checked under
``torch.cuda.set_sync_debug_mode("error")`` in tests/test_gpu.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import freqpure
import freqpure._checks as checks
import freqpure.attacks.band_projection as band
import freqpure.checkpointing as ckpt
import freqpure.spectral as spectral
from freqpure.attacks.eot import EOTGradient
from freqpure.attacks.gradients import attack_purifier
from freqpure.attacks.pgd import pgd
from freqpure.errors import UsageError
from freqpure.samplers import StepNoise


def _eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 1e-4 * t[:, None, None, None]


class _Clf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _count(monkeypatch, module, name: str) -> list[int]:
    calls = [0]
    inner = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_images_are_value_checked_once_per_attack_not_per_model_call(monkeypatch) -> None:
    calls = _count(monkeypatch, checks, "_check_values")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    defended = freqpure.PurifiedClassifier(_Clf(), freqpure.DiffPure(_eps, 30, 2), vote="softmax")
    oracle = EOTGradient(defended, eot=2, seed=StepNoise(5))
    pgd(oracle, x, torch.tensor([0, 1]), norm="linf", eps=0.03, steps=3, generator=StepNoise(1).rng())
    assert oracle.calls == 4 and calls[0] == 1  # 4 purifying model calls, one value check (pgd's edge)
    with torch.no_grad():
        defended(x, StepNoise(0))  # outside an attack every call is still checked
    assert calls[0] == 2
    with pytest.raises(UsageError, match="outside"):
        pgd(oracle, x * 2, torch.tensor([0, 1]), norm="linf", eps=0.03, steps=1)
    with checks.trusted_images():
        assert checks.check_images(x * 2, clamp=True).max() <= 1  # clamp still applies, with its gradient
        checks.check_images(x * 2)  # values not checked here
    with pytest.raises(UsageError, match="outside"):
        checks.check_images(x * 2)  # the context is left behind


def test_the_frequency_exchange_is_not_value_checked_per_step(monkeypatch) -> None:
    calls = _count(monkeypatch, spectral, "_check_finite")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        freqpure.FreqPure(_eps, 2, 2, t_start=30, steps=3)(x, StepNoise(0))
    assert calls[0] == 0
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(UsageError, match="NaN"):
        spectral.freq_exchange(bad, x, 2, 2, 0.3)  # the public function still refuses it
    assert calls[0] >= 1


def test_self_conjugate_mask_is_cached_and_right() -> None:
    a = spectral.self_conjugate_mask(6, 5)
    assert a is spectral.self_conjugate_mask(6, 5)
    rows, cols = torch.arange(6), torch.arange(5)
    want = ((-rows) % 6 == rows)[:, None] & ((-cols) % 5 == cols)[None, :]
    assert torch.equal(a, want) and int(a.sum()) == 2  # DC and the row-Nyquist bin


def test_best_iterate_bookkeeping_keeps_the_per_sample_best_including_the_final_iterate() -> None:
    """A scripted oracle: losses per call are given; the kept image is, per sample, the iterate with the
    largest loss (ties and NaN keep the earlier one), exactly as the boolean-indexing code did."""
    script = torch.tensor([[0.5, 2.0, 1.0], [0.7, math.nan, 1.0], [0.2, 3.0, 1.0], [0.9, 1.0, 1.0]])
    seen: list[torch.Tensor] = []

    def oracle(x, y):
        seen.append(x.clone())
        loss = script[len(seen) - 1]
        return loss, torch.ones_like(x) * torch.tensor([1.0, -1.0, 1.0]).view(-1, 1, 1, 1)

    x = torch.full((3, 1, 2, 2), 0.5)
    res = pgd(oracle, x, torch.zeros(3, dtype=torch.long), norm="linf", eps=0.1, steps=3, step_size=0.02,
              random_init=False)
    best = [3, 2, 0]  # sample 0: 0.9 at the final iterate; 1: 3.0 at call 2; 2: ties keep the first
    for b, call in enumerate(best):
        assert torch.equal(res.x_adv[b], seen[call][b])
        assert float(res.loss[b]) == float(script[call, b])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_band_constrain_with_batched_convergence_checks_gives_the_same_numbers(monkeypatch, norm) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    x[:, :, :4] = 1.0  # saturated pixels: the box projection needs several iterations
    delta = (torch.rand(3, 3, 16, 16, generator=g) - 0.5) * 0.2
    eps = 0.05 if norm == "linf" else 1.0
    every = band.band_constrain(delta, x, norm, eps, 3)
    monkeypatch.setattr(band, "_CPU_CHECK_EVERY", 8)  # the GPU's schedule, on the CPU
    assert torch.equal(band.band_constrain(delta, x, norm, eps, 3), every)


def test_available_cuda_memory_counts_the_reclaimable_cache(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1_000, 10_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 3_000)
    assert ckpt.available_memory(torch.device("cuda", 0)) == 3_000  # free 1,000 + cached-but-unused 2,000


def test_auto_checkpointing_is_decided_once_per_attack_run(monkeypatch) -> None:
    calls = [0]

    def eps(x, t):
        calls[0] += 1
        return _eps(x, t)

    purifier = freqpure.DiffPure(eps, 30, 3)
    attacked = attack_purifier(purifier, "full")
    assert attacked.checkpoint == "auto" and isinstance(attacked.checkpoint, ckpt.RunCheckpoint)
    assert attacked.checkpoint.summary() == {"decided": False}
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def grad_call() -> int:
        calls[0] = 0
        xr = x.clone().requires_grad_(True)
        attacked(xr, StepNoise(0)).sum().backward()
        return calls[0]

    memory = {"bytes": 10**12}
    monkeypatch.setattr(ckpt, "available_memory", lambda device: memory["bytes"])
    assert grad_call() == 3  # plenty of memory: plain backprop, one call per step
    memory["bytes"] = 1  # the cache filled up: a per-call decision would now checkpoint ...
    assert grad_call() == 3  # ... the run keeps its first decision
    summary = attacked.checkpoint.summary()
    assert summary["decided"] and summary["checkpoint"] is False and summary["available_bytes"] == 10**12
    assert "plain backprop" in attacked.checkpoint.text() and "once for the attack run" in attacked.checkpoint.text()
    assert ckpt.run_decisions({0: freqpure.PurifiedClassifier(_Clf(), attacked)}) == {0: attacked.checkpoint}
    # another attack run decides afresh
    again = attack_purifier(purifier, "full")
    calls[0] = 0
    xr = x.clone().requires_grad_(True)
    again(xr, StepNoise(0)).sum().backward()
    assert calls[0] == 5 and again.checkpoint.summary()["checkpoint"] is True  # 3 steps + 2 replayed
