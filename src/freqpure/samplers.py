"""Reverse-diffusion samplers as plain functions over an ε-model callable.

An ε-model is any callable ``eps_model(x_t, t) -> out`` with ``x_t`` ``[B, C, H, W]`` in diffusion
space ([-1, 1] data plus noise), ``t`` a float tensor ``[B]`` of step indices (0..999), and ``out``
either ``[B, C, H, W]`` (ε) or ``[B, 2C, H, W]`` (ε, then guided-diffusion's learned-variance values).

Every sampler takes

* ``x0_hook(x0, t) -> x0'``: applied to the clean-image estimate at every step (FreqPure's frequency
  exchange; ``None`` for plain DiffPure), after which ε is re-derived from the edited x0 so the
  step continues from it;
* ``noise``: a :class:`StepNoise` (or any ``noise(key, like) -> Tensor``) giving the Gaussian draws.
  Noise is an *input*: the same noise source replays the same draws, which is what EOT, gradient
  checkpointing and tests rely on;
* ``checkpoint``: recompute each step in the backward pass instead of storing its activations, so
  memory stays flat in the number of steps (exact same gradient); ``"auto"`` does so only when the
  graph would not fit (:mod:`freqpure.checkpointing`).

No sampler disables gradients: wrap calls in ``torch.no_grad()`` when you do not need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from freqpure.checkpointing import AutoCheckpoint, CheckpointSetting, checkpoint_policy, run_step
from freqpure.errors import UsageError

# the noise streams live in freqpure.noise; re-exported here for existing imports
from freqpure.noise import NOISE_SCHEME, DrawNoise, StepNoise, derive_key, path_rng
from freqpure.schedules import VPSDE, LinearBetaSchedule, validate_timesteps

__all__ = [
    "EpsFn",
    "X0Hook",
    "NoiseFn",
    "StepNoise",
    "DrawNoise",
    "NOISE_SCHEME",
    "derive_key",
    "path_rng",
    "split_model_output",
    "predict_x0",
    "eps_from_x0",
    "add_noise",
    "reverse_step",
    "official_step",
    "STEP_RULES",
    "VARIANCES",
    "sample_ddpm",
    "sample_ddim",
    "sample_vpsde_euler",
    "vpsde_noise",
    "vpsde_reverse_drift",
]

EpsFn = Callable[[Tensor, Tensor], Tensor]
X0Hook = Callable[[Tensor, int], Tensor]
NoiseFn = Callable[[int, Tensor], Tensor]

def _broadcast(values: Tensor, x: Tensor) -> Tensor:
    """float64 scalar(s) → x's dtype/device, shaped to broadcast over ``[B, C, H, W]``."""
    return values.to(device=x.device, dtype=x.dtype, non_blocking=True).reshape(-1, *([1] * (x.ndim - 1)))


def split_model_output(out: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
    """Split a model output into ε ``[B, C, H, W]`` and learned-variance values (or ``None``)."""
    if out.shape[1] == channels:
        return out, None
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    raise UsageError(
        f"eps_model returned {out.shape[1]} channels for a {channels}-channel input; expected {channels} "
        f"(eps) or {2 * channels} (eps + learned variance)"
    )


def predict_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = (x_t − sqrt(1 − ᾱ) ε) / sqrt(ᾱ)."""
    a = _broadcast(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = (x_t − sqrt(ᾱ) x0) / sqrt(1 − ᾱ)."""
    a = _broadcast(alpha_bar, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def add_noise(x0: Tensor, alpha_bar: Tensor | float, noise: Tensor) -> Tensor:
    """Forward process q(x_t | x0): sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε."""
    a = _broadcast(torch.as_tensor(alpha_bar, dtype=torch.float64), x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def reverse_step(
    x_t: Tensor,
    x0: Tensor,
    eps: Tensor,
    alpha_bar_t: float,
    alpha_bar_s: float,
    eta: float,
    noise: Tensor | None,
    var_values: Tensor | None = None,
) -> Tensor:
    """One generalised DDIM step from level t to an earlier level s (ᾱ_s > ᾱ_t).

    ``eta = 1`` is the DDPM ancestral step (posterior variance β̃); ``eta = 0`` deterministic DDIM.
    With ``var_values`` (learned variance, in [-1, 1]) and ``eta = 1`` the variance is guided-diffusion's
    interpolation ``exp(v' log β + (1 − v') log β̃)``, ``v' = (v + 1) / 2``, for the respaced step.
    ``alpha_bar_s = 1`` (the final step) returns x0.
    """
    if alpha_bar_s >= 1.0:
        return x0
    beta = 1.0 - alpha_bar_t / alpha_bar_s  # β of the respaced step t → s
    posterior_var = (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * beta  # β̃
    sqrt_ab_s = alpha_bar_s**0.5
    if var_values is not None and eta == 1.0:
        frac = (var_values + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * math.log(posterior_var)
        coef_x0 = sqrt_ab_s * beta / (1.0 - alpha_bar_t)
        coef_xt = (1.0 - beta) ** 0.5 * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
        mean = coef_x0 * x0 + coef_xt * x_t
        if noise is None:
            raise UsageError("a stochastic step needs noise")
        return mean + torch.exp(0.5 * log_var) * noise
    sigma = eta * posterior_var**0.5
    direction = max(1.0 - alpha_bar_s - sigma**2, 0.0) ** 0.5
    x_s = sqrt_ab_s * x0 + direction * eps
    if sigma > 0:
        if noise is None:
            raise UsageError("a stochastic step (eta > 0) needs noise")
        x_s = x_s + sigma * noise
    return x_s


def official_step(
    x0: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_s: float, eta: float, noise: Tensor | None
) -> Tensor:
    """The official FreqPure step from level t to s: ``sqrt(ᾱ_s)·x0 + c1·z + c2·ε`` with the model's own ε.

    ``c1 = η·sqrt((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t))``, ``c2 = sqrt(1 − ᾱ_s − c1²)`` (η = 1 DDPM, 0 DDIM),
    fixed posterior variance. Unlike the posterior step (:func:`sample_ddpm`'s default), ε is *not*
    re-derived from an edited ``x0``: the edit moves only the ``sqrt(ᾱ_s)·x0`` term. ``alpha_bar_s = 1``
    (the final step) returns ``x0``. Shapes ``[B, C, H, W]``, diffusion space.
    """
    if alpha_bar_s >= 1.0:
        return x0
    c1 = eta * math.sqrt((1 - alpha_bar_t / alpha_bar_s) * (1 - alpha_bar_s) / (1 - alpha_bar_t))
    c2 = math.sqrt(max((1 - alpha_bar_s) - c1 * c1, 0.0))
    x_s = math.sqrt(alpha_bar_s) * x0
    if c1 > 0:
        if noise is None:
            raise UsageError("a stochastic step (eta > 0) needs noise")
        x_s = x_s + c1 * noise
    return x_s + c2 * eps


STEP_RULES = ("posterior", "official")
VARIANCES = ("learned", "fixed")


def _time_tensor(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def sample_ddpm(
    eps_model: EpsFn,
    x: Tensor,
    timesteps: Sequence[int],
    schedule: LinearBetaSchedule | None = None,
    *,
    eta: float = 1.0,
    noise: NoiseFn | None = None,
    x0_hook: X0Hook | None = None,
    clip_x0: bool = False,
    checkpoint: CheckpointSetting | AutoCheckpoint = False,
    step_rule: str = "posterior",
    variance: str = "learned",
) -> Tensor:
    """Run the reverse chain from ``x`` (at step index ``timesteps[0]``) down to a clean sample.

    Args:
        eps_model: ε-model callable (see module docstring).
        x: ``[B, C, H, W]`` noisy images at level ``timesteps[0]``, diffusion space.
        timesteps: strictly decreasing step indices in ``0..N−1`` (any subset: respaced sampling).
        schedule: discrete schedule (default: linear β 1e-4..2e-2, 1000 steps).
        eta: 1.0 = DDPM (ancestral), 0.0 = DDIM.
        noise: noise source ``noise(key, like)``; key ``i`` is used at the i-th step. Needed if eta > 0.
        x0_hook: edit of the x0 estimate at every step, ``hook(x0, t)``.
        clip_x0: clamp the x0 estimate to [-1, 1] before the hook (guided-diffusion's
            ``clip_denoised``); off by default, as a clamp zeroes gradients outside the range.
        checkpoint: gradient checkpointing per step (flat memory in the number of steps): ``True``,
            ``False``, ``"auto"`` (only when the graph would not fit), or a caller's
            :class:`~freqpure.checkpointing.AutoCheckpoint` shared across the rounds of one call.
        step_rule: ``"posterior"`` — after the hook, ε is re-derived from the edited x0 and the step is
            the generalised DDIM/DDPM step (:func:`reverse_step`); ``"official"`` — the official FreqPure
            step (:func:`official_step`): the model's original ε is kept, fixed variance (learned-variance
            channels are ignored whatever ``variance`` says).
        variance: ``"learned"`` — use a model's learned-variance channels when it has them (DDPM,
            posterior rule); ``"fixed"`` — ignore them (the posterior variance β̃, as the official code).

    Returns:
        ``[B, C, H, W]`` sample at level 0 (the final x0 estimate), diffusion space.
    """
    schedule = schedule or LinearBetaSchedule()
    ts = validate_timesteps(timesteps, schedule.num_steps)
    if step_rule not in STEP_RULES:
        raise UsageError(f"step_rule must be one of {', '.join(STEP_RULES)}, got {step_rule!r}")
    if variance not in VARIANCES:
        raise UsageError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
    if eta > 0 and noise is None:
        raise UsageError("sample_ddpm with eta > 0 needs a noise source (e.g. StepNoise(seed))")
    alpha_bars = schedule.alpha_bar(ts + [-1]).tolist()
    channels = x.shape[1]

    def step(x_t: Tensor, i: int) -> Tensor:
        t = ts[i]
        out = eps_model(x_t, _time_tensor(t, x_t))
        eps, var_values = split_model_output(out, channels)
        if variance == "fixed":
            var_values = None
        alpha_bar_t = torch.tensor(alpha_bars[i], dtype=torch.float64)  # float64: exact in float64 runs
        x0 = predict_x0(x_t, eps, alpha_bar_t)
        if step_rule == "official":
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            if x0_hook is not None:
                x0 = x0_hook(x0, t)
            last = alpha_bars[i + 1] >= 1.0
            z = noise(i, x_t) if (noise is not None and eta > 0 and not last) else None
            return official_step(x0, eps, alpha_bars[i], alpha_bars[i + 1], eta, z)
        if clip_x0 or x0_hook is not None:
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            if x0_hook is not None:
                x0 = x0_hook(x0, t)
            eps = eps_from_x0(x_t, x0, alpha_bar_t)  # continue the step from the edited x0
        last = alpha_bars[i + 1] >= 1.0
        z = noise(i, x_t) if (noise is not None and eta > 0 and not last) else None
        return reverse_step(x_t, x0, eps, alpha_bars[i], alpha_bars[i + 1], eta, z, var_values)

    policy = checkpoint_policy(checkpoint, len(ts), x.device)
    for i in range(len(ts)):
        x = run_step(step, x, i, policy)
    return x


def sample_ddim(eps_model: EpsFn, x: Tensor, timesteps: Sequence[int], schedule: LinearBetaSchedule | None = None,
                **kwargs) -> Tensor:
    """Deterministic DDIM (``eta = 0``); see :func:`sample_ddpm`."""
    return sample_ddpm(eps_model, x, timesteps, schedule, eta=0.0, **kwargs)


# ---------------------------------------------------------------------------------------------
# Continuous VP-SDE (DiffPure)
# ---------------------------------------------------------------------------------------------
def vpsde_noise(x0: Tensor, t: float, sde: VPSDE, noise: Tensor) -> Tensor:
    """Diffuse clean ``x0`` to continuous time ``t``: sqrt(ᾱ(t)) x0 + std(t) ε."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return add_noise(x0, sde.alpha_bar(tt), noise)


def vpsde_reverse_drift(eps_model: EpsFn, sde: VPSDE, x: Tensor, t: float, x0_hook: X0Hook | None = None) -> Tensor:
    """Reverse-time drift ``−½β(t) x − β(t) ∇log p_t(x)`` as a time derivative (forward-time sign).

    The score is ``−ε / std(t)`` with ε from the model at label ``t · (N − 1)``. With ``x0_hook`` the
    score is re-derived from the edited x0 estimate.
    """
    tt = torch.tensor(float(t), dtype=torch.float64)
    alpha_bar = sde.alpha_bar(tt)
    std = float(sde.marginal_std(tt))
    out = eps_model(x, _time_tensor(float(sde.to_step(t)), x))
    eps, _ = split_model_output(out, x.shape[1])
    if x0_hook is not None:
        x0 = x0_hook(predict_x0(x, eps, alpha_bar), int(round(float(sde.to_step(t)))))
        eps = eps_from_x0(x, x0, alpha_bar)
    beta = float(sde.beta(tt))
    score = -eps / std
    return -0.5 * beta * x - beta * score


def sample_vpsde_euler(
    eps_model: EpsFn,
    x: Tensor,
    t_start: float,
    steps: int,
    sde: VPSDE | None = None,
    *,
    noise: NoiseFn | None = None,
    x0_hook: X0Hook | None = None,
    t_end: float = 0.0,
    checkpoint: CheckpointSetting | AutoCheckpoint = False,
) -> Tensor:
    """Euler–Maruyama integration of the reverse VP-SDE from ``t_start`` to ``t_end`` (DiffPure's sampler).

    ``x`` is ``[B, C, H, W]`` at continuous time ``t_start``; DiffPure uses ``t_start = 0.1`` and
    ``dt = 1e-3`` (``steps = 100``). The reverse step is
    ``x ← x − f_rev(x, t) h + sqrt(β(t) h) z`` with ``f_rev`` from :func:`vpsde_reverse_drift`.
    """
    sde = sde or VPSDE()
    if not 0 < t_start <= 1 or not 0 <= t_end < t_start:
        raise UsageError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if noise is None:
        raise UsageError("sample_vpsde_euler needs a noise source (e.g. StepNoise(seed))")
    times = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()

    def step(x_t: Tensor, i: int) -> Tensor:
        t, h = times[i], times[i] - times[i + 1]
        drift = vpsde_reverse_drift(eps_model, sde, x_t, t, x0_hook)
        beta = float(sde.beta(torch.tensor(t, dtype=torch.float64)))
        return x_t - drift * h + (beta * h) ** 0.5 * noise(i, x_t)

    policy = checkpoint_policy(checkpoint, steps, x.device)
    for i in range(steps):
        x = run_step(step, x, i, policy)
    return x
