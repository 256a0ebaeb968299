"""Schedules and samplers, checked against an analytic ε-model for Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from freqpure.samplers import (
    StepNoise,
    add_noise,
    sample_ddim,
    sample_ddpm,
    sample_vpsde_euler,
    split_model_output,
)
from freqpure.schedules import (
    VPSDE,
    LinearBetaSchedule,
    PurificationRound,
    parse_rounds,
    respaced_timesteps,
    validate_timesteps,
)

SCHEDULE = LinearBetaSchedule()
MU, S = 0.3, 0.5  # data: x0 ~ N(MU, S²) per pixel


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact ε = E[ε | x_t] for Gaussian data, at (fractional) step index t."""
    a = SCHEDULE.alpha_bar(t.round().long()).to(x.dtype).view(-1, 1, 1, 1)
    var = a * S**2 + 1 - a
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / var


def analytic_moments(timesteps: list[int], eta: float) -> tuple[float, float]:
    """Mean and variance of the sampler's output, propagated exactly through the linear-Gaussian chain."""
    a_t = float(SCHEDULE.alpha_bar(timesteps[0]))
    var = a_t * S**2 + 1 - a_t  # x_T drawn from the true marginal
    for i, t in enumerate(timesteps):
        a_t = float(SCHEDULE.alpha_bar(t))
        a_s = float(SCHEDULE.alpha_bar(timesteps[i + 1])) if i + 1 < len(timesteps) else 1.0
        v_t = a_t * S**2 + 1 - a_t
        c0 = math.sqrt(a_t) * S**2 / v_t  # x0_hat = MU + c0 d
        if a_s >= 1.0:
            return MU, c0**2 * var
        beta = 1 - a_t / a_s
        sigma2 = eta**2 * (1 - a_s) / (1 - a_t) * beta
        direction = math.sqrt(1 - a_s - sigma2)
        k = math.sqrt(a_s) * c0 + direction * math.sqrt(1 - a_t) / v_t
        var = k**2 * var + sigma2
    raise AssertionError("unreachable")


def initial_state(n: int, t: int) -> torch.Tensor:
    a = SCHEDULE.alpha_bar(t)
    gen = torch.Generator().manual_seed(123)
    return torch.randn(n, 1, 4, 4, dtype=torch.float64, generator=gen) * (a * S**2 + 1 - a).sqrt() + a.sqrt() * MU


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
def test_ddpm_ddim_match_the_exact_linear_gaussian_moments(eta):
    ts = respaced_timesteps(1000, 50)
    out = sample_ddpm(gaussian_eps, initial_state(4000, ts[0]), ts, eta=eta, noise=StepNoise(0))
    mean, var = analytic_moments(ts, eta)
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 4 * math.sqrt(var / n)
    assert abs(float(out.var()) / var - 1) < 4 * math.sqrt(2 / n)


def test_full_ddpm_chain_recovers_the_data_distribution():
    ts = list(range(999, -1, -1))
    mean, var = analytic_moments(ts, 1.0)
    assert abs(mean - MU) < 1e-12 and abs(math.sqrt(var) / S - 1) < 0.01  # the chain itself is near exact
    out = sample_ddpm(gaussian_eps, initial_state(2000, 999), ts, eta=1.0, noise=StepNoise(1))
    assert abs(float(out.mean()) - MU) < 0.01
    assert abs(float(out.std()) / S - 1) < 0.02


def test_vpsde_euler_recovers_the_data_distribution():
    sde = VPSDE()
    out = sample_vpsde_euler(gaussian_eps, initial_state(2000, 999), 1.0, 1000, sde, noise=StepNoise(2))
    assert abs(float(out.mean()) - MU) < 0.01
    assert abs(float(out.std()) / S - 1) < 0.03


def test_partial_noise_purification_keeps_the_distribution():
    """DiffPure-style: noise real samples to t* = 100 and denoise; the exact moments, converging to N(MU, S²)."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(4000, 1, 4, 4, dtype=torch.float64, generator=gen) * S + MU
    stds = []
    for steps in (10, 100):
        ts = respaced_timesteps(100, steps)
        x_t = add_noise(x0, SCHEDULE.alpha_bar(ts[0]), StepNoise(9)(-1, x0))
        out = sample_ddpm(gaussian_eps, x_t, ts, eta=1.0, noise=StepNoise(3))
        mean, var = analytic_moments(ts, 1.0)
        assert abs(float(out.mean()) - mean) < 0.005
        assert abs(float(out.var()) / var - 1) < 0.03
        stds.append(math.sqrt(var))
    assert stds[0] < stds[1] < S and abs(stds[1] / S - 1) < 0.01  # fewer, larger steps shrink the variance


def test_x0_hook_is_applied_at_every_step_and_the_chain_continues_from_it():
    ts = respaced_timesteps(200, 10)
    seen = []

    def hook(x0, t):
        seen.append(t)
        return torch.full_like(x0, 0.25)

    out = sample_ddpm(gaussian_eps, initial_state(8, ts[0]), ts, eta=1.0, noise=StepNoise(0), x0_hook=hook)
    assert seen == ts
    torch.testing.assert_close(out, torch.full_like(out, 0.25))


def test_learned_variance_channels_are_split_and_used():
    ts = respaced_timesteps(300, 10)

    def with_variance(value: float):
        return lambda x, t: torch.cat([gaussian_eps(x, t), torch.full_like(x, value)], dim=1)

    x = initial_state(64, ts[0])
    plain = sample_ddpm(gaussian_eps, x, ts, eta=1.0, noise=StepNoise(4))
    # v = −1 selects β̃, the fixed posterior variance: identical to the ε-only model
    torch.testing.assert_close(sample_ddpm(with_variance(-1.0), x, ts, eta=1.0, noise=StepNoise(4)), plain)
    # v = +1 selects β (larger): a different chain
    upper = sample_ddpm(with_variance(1.0), x, ts, eta=1.0, noise=StepNoise(4))
    assert float((upper - plain).abs().max()) > 1e-3
    # DDIM ignores the variance channels
    torch.testing.assert_close(sample_ddim(with_variance(1.0), x, ts), sample_ddim(gaussian_eps, x, ts))


def test_split_model_output_rejects_wrong_channel_counts():
    eps, var = split_model_output(torch.zeros(2, 6, 4, 4), 3)
    assert eps.shape[1] == 3 and var.shape[1] == 3
    with pytest.raises(ValueError, match="returned 4 channels for a 3-channel input"):
        split_model_output(torch.zeros(2, 4, 4, 4), 3)


def test_checkpointed_gradients_equal_plain_backprop():
    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()

    def eps_model(x, t):
        return net(x) * (t.view(-1, 1, 1, 1) / 1000)

    ts = respaced_timesteps(100, 8)
    grads = []
    for ckpt in (False, True):
        x = initial_state(3, ts[0]).requires_grad_(True)
        out = sample_ddpm(eps_model, x, ts, eta=1.0, noise=StepNoise(7), checkpoint=ckpt)
        (out**2).sum().backward()
        grads.append((x.grad.clone(), net.weight.grad.clone()))
        net.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_noise_is_replayable_and_independent():
    like = torch.zeros(3, 2, 4, 4)
    noise = StepNoise(42)
    torch.testing.assert_close(noise(5, like), StepNoise(42)(5, like))
    assert not torch.equal(noise(5, like), noise(6, like))
    assert not torch.equal(noise(5, like), StepNoise(43)(5, like))
    assert not torch.equal(noise(5, like)[0], noise(5, like)[1])
    assert not torch.equal(noise.child(0)(5, like), noise.child(1)(5, like))


def test_stochastic_sampling_needs_noise():
    with pytest.raises(ValueError, match="needs a noise source"):
        sample_ddpm(gaussian_eps, initial_state(2, 99), [99, 50, 0], eta=1.0)


@pytest.mark.parametrize(
    "timesteps, match",
    [([99, 120, 0], "strictly decreasing"), ([1000, 10], r"0\.\.999"), ([], "empty"), ([5, -1], "out of range")],
)
def test_bad_timesteps_are_refused(timesteps, match):
    with pytest.raises(ValueError, match=match):
        validate_timesteps(timesteps)


def test_linear_schedule_values_and_time_conversions():
    assert math.isclose(float(SCHEDULE.betas[0]), 1e-4) and math.isclose(float(SCHEDULE.betas[-1]), 2e-2)
    assert float(SCHEDULE.alpha_bar(-1)) == 1.0
    assert math.isclose(float(SCHEDULE.alpha_bar(99)), float(torch.prod(1 - SCHEDULE.betas[:100])))
    sde = SCHEDULE.as_vpsde()
    assert (sde.beta_min, sde.beta_max) == pytest.approx((0.1, 20.0))
    t = SCHEDULE.to_time(torch.tensor([0.0, 99.0, 999.0]))
    torch.testing.assert_close(SCHEDULE.to_step(t), torch.tensor([0.0, 99.0, 999.0], dtype=torch.float64))
    # the continuous VP-SDE is the limit of the discrete chain: ᾱ agree to 2e-3 over 0..999
    steps = torch.arange(0, 1000, 37)
    discrete = SCHEDULE.alpha_bar(steps)
    continuous = sde.alpha_bar(sde.to_time(steps.double() + 1))
    assert float((discrete - continuous).abs().max()) < 2e-3


def test_respacing_and_round_parsing():
    assert respaced_timesteps(20, 5) == [19, 14, 10, 5, 0]
    ts = respaced_timesteps(1000, 100)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 100
    assert respaced_timesteps(50, 1) == [49]
    v2 = parse_rounds("20:5*5,50:5*5")
    assert v2 == [PurificationRound(20, 5)] * 5 + [PurificationRound(50, 5)] * 5
    assert parse_rounds("100x20") == [PurificationRound(100, 20)]
    assert parse_rounds([(100, 10)]) == [PurificationRound(100, 10)]
    with pytest.raises(ValueError, match="cannot parse round"):
        parse_rounds("20-5")
    with pytest.raises(ValueError, match="t_star must be in 1..1000"):
        PurificationRound(1001, 5)
    with pytest.raises(ValueError, match="steps must be in 1..t_star"):
        PurificationRound(10, 20)
