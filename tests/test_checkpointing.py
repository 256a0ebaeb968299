"""The checkpoint policy: plain backprop, checkpointing and "auto" give the same gradient to the bit, and
"auto" checkpoints exactly when the measured graph would not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import freqpure.checkpointing as ckpt
from freqpure.attacks.gradients import attack_purifier
from freqpure.errors import UsageError
from freqpure.purifiers import DiffPure, FreqPure
from freqpure.samplers import StepNoise, sample_ddpm
from helpers import one_thread


class CountingEps(nn.Module):
    """The bundled ε-model, counting its calls (a checkpointed step calls it again in the backward pass)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return self.inner(x, t)


def _grad(classifier, purifier, x, y) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(classifier(purifier(xr, StepNoise(7))), y)
    return torch.autograd.grad(loss, xr)[0]


@pytest.mark.parametrize("make,calls_per_step", [
    (lambda eps, c: DiffPure(eps, rounds="40:3", checkpoint=c), 1),
    # the official reference is re-denoised at every step: two model calls per step
    (lambda eps, c: FreqPure(eps, 3, 3, 0.3, rounds="20:2*2", variant="official", checkpoint=c), 2),
], ids=["diffpure", "freqpure-official-two-rounds"])
def test_every_setting_gives_the_same_gradient_to_the_bit(make, calls_per_step, classifier, eps_model, real_images,
                                                          monkeypatch) -> None:
    x, y = real_images[:2], torch.tensor([0, 1])
    counting = CountingEps(eps_model)
    grads, calls = {}, {}
    with one_thread():
        for setting in (False, True, "auto"):
            counting.calls = 0
            grads[setting] = _grad(classifier, make(counting, setting), x, y)
            calls[setting] = counting.calls
        monkeypatch.setattr(ckpt, "available_memory", lambda device: 1)  # nothing fits: auto must checkpoint
        counting.calls = 0
        grads["auto-tight"] = _grad(classifier, make(counting, "auto"), x, y)
        calls["auto-tight"] = counting.calls
    assert grads[False].abs().sum() > 0
    for setting, g in grads.items():
        assert torch.equal(g, grads[False]), setting
    # checkpointing replays every step once in the backward pass; "auto" with room is plain backprop, and
    # without room it replays every step but the measured first one (one decision across both rounds)
    assert calls["auto"] == calls[False]
    assert calls[True] == 2 * calls[False]
    assert calls["auto-tight"] == calls[True] - calls_per_step


def test_auto_decides_from_the_measured_graph(eps_model, real_images, monkeypatch) -> None:
    x = (real_images[:2] * 2 - 1).requires_grad_(True)
    with one_thread():
        policy = ckpt.AutoCheckpoint(total_steps=3, device=x.device)
        sample_ddpm(eps_model, x, [30, 20, 10], noise=StepNoise(0), checkpoint=policy)
        assert policy.checkpoint is False and policy.step_bytes > x.numel() * 4  # the UNet saves far more than x
        monkeypatch.setattr(ckpt, "available_memory", lambda device: policy.step_bytes * 3 * 4 - 1)
        tight = ckpt.AutoCheckpoint(total_steps=3, device=x.device)  # 3 steps need just over a quarter
        sample_ddpm(eps_model, x, [30, 20, 10], noise=StepNoise(0), checkpoint=tight)
        assert tight.checkpoint is True and tight.step_bytes == policy.step_bytes
        with torch.no_grad():  # no graph, nothing to decide
            idle = ckpt.AutoCheckpoint(total_steps=3, device=x.device)
            sample_ddpm(eps_model, x, [30, 20, 10], noise=StepNoise(0), checkpoint=idle)
        assert idle.checkpoint is None


def test_attacks_use_auto_and_bad_settings_are_refused(eps_model) -> None:
    purifier = DiffPure(eps_model, rounds="40:3")
    assert attack_purifier(purifier, "full").checkpoint == "auto" and purifier.checkpoint is False
    assert attack_purifier(purifier, "surrogate", "40:1").checkpoint == "auto"
    for bad in ("yes", 1, None):
        with pytest.raises(UsageError, match="checkpoint must be True, False or 'auto'"):
            DiffPure(eps_model, rounds="40:3", checkpoint=bad)


def test_available_memory_is_positive_on_this_machine() -> None:
    assert ckpt.available_memory(torch.device("cpu")) > 0


def test_a_container_limit_caps_the_available_memory(monkeypatch) -> None:
    files = {"/sys/fs/cgroup/memory.max": str(3 * 2**30), "/sys/fs/cgroup/memory.current": str(2**30)}
    monkeypatch.setattr(ckpt, "_read_int", lambda path: int(files[path]) if path in files else None)
    assert ckpt.available_memory(torch.device("cpu")) == min(2 * 2**30, ckpt._ram_available())
    files["/sys/fs/cgroup/memory.max"] = "max"  # no limit: the RAM decides
    monkeypatch.setattr(ckpt, "_read_int", lambda path: int(files[path]) if files.get(path, "").isdigit() else None)
    assert ckpt.available_memory(torch.device("cpu")) == ckpt._ram_available()
