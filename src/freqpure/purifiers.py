"""Purifiers (DiffPure, FreqPure): modules that noise an image and reverse-diffuse it, round by round.

Every purifier is an ``nn.Module`` taking images ``[B, C, H, W]`` in [0, 1] and returning purified
images of the same shape, also in classifier space (roughly [0, 1]; not clamped, so that gradients
are exact). Randomness comes from a :class:`~freqpure.samplers.StepNoise` passed to ``forward``; when
none is passed the purifier draws a fresh seed from its own seeded ``torch.Generator``, so a run is
reproducible from the ``seed`` given at construction.

The defended classifier (:class:`~freqpure.ensemble.PurifiedClassifier`, :func:`~freqpure.ensemble.combine_draws`)
lives in :mod:`freqpure.ensemble` and is re-exported here; the variants and the valid choices of every setting
live in :mod:`freqpure.presets`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from freqpure._checks import as_compute_dtype, check_images, check_int, compute_dtype
from freqpure.checkpointing import AutoCheckpoint, CheckpointSetting, check_checkpoint_setting, checkpoint_policy
from freqpure.ensemble import PurifiedClassifier, Vote, combine_draws
from freqpure.epsmodel import check_step_range
from freqpure.errors import UsageError
from freqpure.noise import check_noise_scheme, make_noise
from freqpure.presets import (
    DEFAULTS,
    SAMPLERS,
    VARIANTS,
    check_choice,
    check_distance,
    check_flag,
    check_rounds,
    check_step_index,
    check_variant_keys,
    resolve_variant,
)
from freqpure.runtime import PRECISIONS, ensure_thread_policy, run_in_precision
from freqpure.samplers import EpsFn, StepNoise, X0Hook, add_noise, sample_ddpm, sample_vpsde_euler
from freqpure.schedules import LinearBetaSchedule, PurificationRound, round_timesteps
from freqpure.spectral import check_radius, freq_exchange

__all__ = [
    "Purifier",
    "DiffPure",
    "FreqPure",
    "PurifiedClassifier",
    "combine_draws",
    "Sampler",
    "Reference",
    "Variant",
    "Vote",
    "VARIANTS",
    "resolve_variant",
]

Sampler = Literal["ddpm", "ddim", "sde"]
Reference = Literal["input", "denoised", "round-denoised"]
Variant = Literal["paper", "official"]

_FORWARD_KEY = 90_000  # noise keys of a round: _FORWARD_KEY for the forward noising of that round
_REFERENCE_KEY = 50_000  # ... + _REFERENCE_KEY + i for the reference draws


SEED_MAX = 2**63 - 1


def _plan(rounds: str | Sequence[PurificationRound] | None, t_star: object, steps: object
          ) -> str | Sequence[PurificationRound]:
    """``rounds`` when given, else the one round ``t_star:steps`` (the two ways DiffPure and FreqPure take a plan)."""
    if rounds is not None:
        return rounds
    return [PurificationRound(check_int(t_star, "t_star", 1), check_int(steps, "steps", 1))]


class Purifier(nn.Module):
    """Noise the input to ``t_star`` and run the reverse diffusion, for one or more rounds.

    Args:
        eps_model: ε-model callable ``eps_model(x_t, t)`` (see :mod:`freqpure.samplers`).
        rounds: purification plan: a list of :class:`PurificationRound` or a string like
            ``"20:5*5,50:5*5"`` (``t_star:steps``, repeated ``*k``).
        sampler: ``"ddpm"`` (ancestral, η = 1), ``"ddim"`` (η = 0) or ``"sde"`` (reverse VP-SDE,
            Euler–Maruyama, t* = t_star / 1000 in VP time: DiffPure's sampler).
        schedule: discrete β schedule (default linear 1e-4 … 2e-2, 1000 steps).
        clamp_input: clip inputs into [0, 1] instead of refusing values outside it.
        clip_x0: clamp every x0 estimate to [-1, 1] (guided-diffusion's ``clip_denoised``).
        checkpoint: per-step gradient checkpointing (flat memory for full-gradient attacks): ``True``,
            ``False`` or ``"auto"`` (only when the call's graph would not fit; what attacks use).
        seed: seed of the generator that draws a fresh noise seed for each call without ``noise``.
        precision: ``"fp32"`` (default: exact library behaviour), ``"bf16"`` or ``"auto"`` (bf16 where the
            hardware has fast bf16, see :func:`freqpure.runtime.resolve_precision`) for the ε-model calls
            only; images, the sampler arithmetic, the frequency exchange and input gradients stay fp32.

        variant: ``"paper"`` (default) or ``"official"``: the preset that fills ``step_rule``, ``grid``,
            ``variance`` (and, in :class:`FreqPure`, ``mode`` and ``reference``) when they are ``None``.
        noise_scheme: the scheme of the noise drawn for calls without ``noise`` (``freqpure.noise.NOISE_SCHEMES``;
            ``None``: ``freqpure.samplers.NOISE_SCHEME``). A ``noise`` passed in is used as it is.
        step_rule: ``"posterior"`` (ε re-derived from the edited x0) or ``"official"`` (the model's own ε
            kept; :func:`freqpure.samplers.official_step`). ``None``: as the variant says.
        grid: ``"respaced"`` (t* − 1 … 0) or ``"official"`` (t*/n − 1, …, t* − 1, last step to ᾱ = 1; needs
            steps to divide t*). ``None``: as the variant says.
        variance: ``"learned"`` (use a model's learned-variance channels) or ``"fixed"`` (posterior
            variance, as the official code does on ImageNet). ``None``: as the variant says.

    A purifier is stochastic (``stochastic = True``, see :class:`freqpure.attacks.StochasticModel`):
    every random draw comes from the ``noise`` passed to :meth:`forward`.

    The settings are checked here, and in :class:`FreqPure`, by the functions of :mod:`freqpure.presets`
    (``check_choice``, ``check_distance``, ``check_rounds``, ``check_variant_keys``, ...) that
    :class:`freqpure.config.PurifierConfig` calls too: a purifier can be built without a config, and both layers
    refuse the same values in the same words (the config names them ``purifier.<key>``).
    """

    stochastic = True

    def __init__(
        self,
        eps_model: EpsFn,
        rounds: str | Sequence[PurificationRound],
        *,
        sampler: Sampler = "ddpm",
        schedule: LinearBetaSchedule | None = None,
        clamp_input: bool = False,
        clip_x0: bool = False,
        checkpoint: CheckpointSetting = False,
        seed: int = 0,
        precision: str = "fp32",
        variant: Variant = "paper",
        step_rule: str | None = None,
        grid: str | None = None,
        variance: str | None = None,
        noise_scheme: str | None = None,
    ) -> None:
        super().__init__()
        check_choice(precision, "precision", PRECISIONS)
        self.noise_scheme = None if noise_scheme is None else check_noise_scheme(noise_scheme)
        check_choice(sampler, "sampler", SAMPLERS)
        if not callable(eps_model):
            raise UsageError(f"eps_model must be a callable eps_model(x_t, t), got {type(eps_model).__name__}")
        seed = check_int(seed, "seed", 0, SEED_MAX)
        check_flag(clip_x0, "clip_x0")
        settings = check_variant_keys(variant, sampler, step_rule=step_rule, grid=grid, variance=variance)
        self.variant = variant
        self.step_rule = settings["step_rule"]
        self.grid = settings["grid"]
        self.variance = settings["variance"]
        self.eps_model = eps_model
        self.rounds = self._checked_rounds(rounds)
        self.sampler = sampler
        self.schedule = schedule or LinearBetaSchedule()
        for r in self.rounds:
            if r.t_star > self.schedule.num_steps:
                raise UsageError(f"t_star={r.t_star} exceeds the schedule's {self.schedule.num_steps} steps")
        check_step_range(eps_model, [r.t_star for r in self.rounds])  # the model's trained range
        self.clamp_input = clamp_input
        self.clip_x0 = clip_x0
        self.checkpoint = check_checkpoint_setting(checkpoint)
        self.seed = seed
        self.precision = precision
        self._seeds = torch.Generator().manual_seed(seed)

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The ε-model call in this purifier's ``precision`` (fp32 in and out)."""
        return run_in_precision(self.eps_model, self.precision, x_t, t)

    def _checked_rounds(self, rounds: str | Sequence[PurificationRound]) -> list[PurificationRound]:
        """Parse a plan and check that every round fits this purifier's grid."""
        return check_rounds(rounds, "rounds", grid=self.grid)

    # -- hooks for subclasses -----------------------------------------------------------------
    def make_x0_hook(self, x_round: Tensor, x_input: Tensor, noise: StepNoise) -> X0Hook | None:
        """The edit applied to x0 at every step of a round (``None``: plain reverse diffusion)."""
        return None

    # -- public API ---------------------------------------------------------------------------
    def new_noise(self) -> StepNoise:
        """A fresh noise source drawn from this purifier's seeded generator (scheme ``noise_scheme``)."""
        return make_noise(int(torch.randint(0, 2**62, (1,), generator=self._seeds)), (), self.noise_scheme)

    def validate(self, x: Tensor) -> Tensor:
        """Check ``x`` against the model (channels, image size) and the [0, 1] range.

        float16/bfloat16/float64 inputs are converted to the model's dtype (float32 for the bundled and
        published models); the purified images come back in that dtype.
        """
        channels = getattr(self.eps_model, "channels", None)
        size = getattr(self.eps_model, "image_size", None)
        x = check_images(x, "x", channels=channels, size=size, clamp=self.clamp_input)
        return as_compute_dtype(x, compute_dtype(self.eps_model))

    def forward(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """Purify ``x`` ``[B, C, H, W]`` in [0, 1] → ``[B, C, H, W]`` (classifier space, unclamped).

        Not clamped to [0, 1] on purpose: a clamp has zero gradient wherever it is active, which would hide part
        of the defence from gradient attacks, and every recorded evaluation gave the classifier these exact
        values. A few pixels may land outside [0, 1] (by up to about 0.1 on CIFAR-10); use
        ``purifier(x).clamp(0, 1)`` to view or save images (``freqpure purify`` does). Each call draws fresh
        noise from the generator seeded with ``seed`` (the k-th call of two purifiers built alike is the same);
        pass ``noise=StepNoise(s)`` for the same output on every call.
        """
        ensure_thread_policy()  # the first call applies the thread policy, whatever the import order
        x = self.validate(x)
        noise = noise if noise is not None else self.new_noise()
        x_input = x * 2 - 1  # diffusion space
        x_diff = x_input
        # one decision for the whole call: the graph of every round's steps must fit together
        policy = checkpoint_policy(self.checkpoint, sum(r.steps for r in self.rounds), x.device)
        for r, rnd in enumerate(self.rounds):
            round_noise = self.round_noise(noise, r)
            hook = self.make_x0_hook(x_diff, x_input, round_noise)
            x_diff = self._run_round(x_diff, rnd, round_noise, hook, policy)
        return (x_diff + 1) / 2

    def timesteps(self, rnd: PurificationRound) -> list[int]:
        """The round's decreasing step indices on this purifier's grid."""
        return round_timesteps(rnd, self.grid)

    # -- one round, in public steps (what the adjoint path in freqpure.attacks.adjoint reuses) -----------
    def round_noise(self, noise: StepNoise, r: int) -> StepNoise:
        """The noise stream of round ``r`` (0-based) of a call made with ``noise``."""
        return noise.child(r)

    def vp_time(self, rnd: PurificationRound) -> float:
        """The round's noise level as a VP-SDE time in [0, 1] (``t_star / num_steps``; the ``sde`` sampler's)."""
        return rnd.t_star / self.schedule.num_steps

    def diffuse(self, x: Tensor, rnd: PurificationRound, noise: StepNoise) -> Tensor:
        """The start of round ``rnd``: ``x`` (diffusion space) forward-noised to the round's t* with the round's
        own draw from ``noise`` (the stream :meth:`round_noise` gives), as :meth:`forward` does it."""
        z = noise(_FORWARD_KEY, x)
        if self.sampler == "sde":
            alpha_bar = self.schedule.as_vpsde().alpha_bar(torch.tensor(self.vp_time(rnd), dtype=torch.float64))
        else:
            alpha_bar = self.schedule.alpha_bar(self.timesteps(rnd)[0])
        return add_noise(x, alpha_bar, z)

    def _run_round(self, x: Tensor, rnd: PurificationRound, noise: StepNoise, hook: X0Hook | None,
                   checkpoint: bool | AutoCheckpoint = False) -> Tensor:
        x_t = self.diffuse(x, rnd, noise)
        if self.sampler == "sde":
            return sample_vpsde_euler(self.eps, x_t, self.vp_time(rnd), rnd.steps, self.schedule.as_vpsde(),
                                      noise=noise, x0_hook=hook, checkpoint=checkpoint)
        ts = self.timesteps(rnd)
        return sample_ddpm(
            self.eps,
            x_t,
            ts,
            self.schedule,
            eta=1.0 if self.sampler == "ddpm" else 0.0,
            noise=noise,
            x0_hook=hook,
            clip_x0=self.clip_x0,
            checkpoint=checkpoint,
            step_rule=self.step_rule,
            variance=self.variance,
        )

    def with_rounds(self, rounds: str | Sequence[PurificationRound]) -> Purifier:
        """A shallow copy with another purification plan (same model and settings): used for surrogates."""
        clone = copy.copy(self)
        clone.rounds = self._checked_rounds(rounds)
        check_step_range(self.eps_model, [r.t_star for r in clone.rounds])
        clone._seeds = torch.Generator().manual_seed(self.seed)
        return clone

    def extra_repr(self) -> str:
        plan = ",".join(f"{r.t_star}:{r.steps}" for r in self.rounds)
        return (f"rounds={plan}, sampler={self.sampler}, seed={self.seed}, precision={self.precision}, "
                f"variant={self.variant}, step_rule={self.step_rule}, grid={self.grid}, variance={self.variance}")

    def __repr__(self) -> str:  # one line of settings, not the whole UNet
        model = getattr(self.eps_model, "name", None) or type(self.eps_model).__name__
        return f"{type(self).__name__}({self.extra_repr()}, eps_model={model})"


class DiffPure(Purifier):
    """DiffPure (Nie et al., 2022): noise to ``t_star`` and reverse-diffuse in ``steps`` steps.

    Defaults are the library's (:data:`freqpure.presets.DEFAULTS`: t* = 100, 20 DDPM steps).
    ``DiffPure(eps_model, t_star=100, steps=100, sampler="sde")`` is DiffPure's CIFAR-10 setting
    (t* = 0.1, dt = 1e-3; preset ``diffpure-paper``); ``sampler="ddpm"`` runs the discrete ancestral chain.
    """

    def __init__(
        self,
        eps_model: EpsFn,
        t_star: int = DEFAULTS["t_star"],
        steps: int = DEFAULTS["steps"],
        *,
        sampler: Sampler = DEFAULTS["sampler"],
        rounds: str | Sequence[PurificationRound] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps_model, _plan(rounds, t_star, steps), sampler=sampler, **kwargs)


class FreqPure(Purifier):
    """FreqPure (Pei et al., ICML 2025): DiffPure with the frequency exchange on x0 at every step.

    Defaults are the library's (:data:`freqpure.presets.DEFAULTS`: t* = 100, 20 DDPM steps, r_a = r_p = 10,
    δ = 0.3, paper variant); ``freqpure.build_purifier(freqpure.preset("paper"), eps_model)`` is the paper's
    CIFAR-10 setting (see :mod:`freqpure.presets`).

    Args:
        eps_model: ε-model callable.
        amp_radius: ASE radius (frequency-index units of the centred spectrum; ``None`` disables).
        phase_radius: PSP radius (``None`` disables).
        delta: PSP half-width in radians.
        t_star: noise level t* in diffusion steps (1..1000) of a single-round plan (as in :class:`DiffPure`;
            ``t_start`` is its old keyword, still accepted).
        steps: denoising steps of a single-round plan.
        reference: ``"input"`` — the image being purified (the paper); ``"denoised"`` — the round's
            input (the previous round's output in multi-round plans) noised to ``reference_t`` and
            denoised by one model call, computed once per round; ``"round-denoised"`` — the same, redrawn
            with fresh noise at every step (the official code: two model calls per step). ``None``: as
            the variant says.
        reference_t: step index of the denoised references (official code: 50).
        recompute_reference: with ``reference="denoised"``, redraw it at every step (then equal to
            ``"round-denoised"``).
        mode: ``"paper"`` or ``"official"`` arithmetic (see :func:`freqpure.spectral.freq_exchange`;
            ``"reference"`` is the old name of ``"official"``); ``None``: as the variant says.
        rounds: multi-round plan, e.g. ``"20:5*5,50:5*5"``; overrides ``t_star``/``steps``.
        **kwargs: :class:`Purifier` options (``sampler``, ``seed``, ``checkpoint``, ...).
    """

    def __init__(
        self,
        eps_model: EpsFn,
        amp_radius: float | None = DEFAULTS["amp_radius"],
        phase_radius: float | None = DEFAULTS["phase_radius"],
        delta: float = DEFAULTS["delta"],
        t_star: int = DEFAULTS["t_star"],
        steps: int = DEFAULTS["steps"],
        *,
        t_start: int | None = None,
        reference: Reference | None = None,
        reference_t: int = DEFAULTS["reference_t"],
        recompute_reference: bool = False,
        mode: Literal["paper", "official"] | None = None,
        rounds: str | Sequence[PurificationRound] | None = None,
        **kwargs,
    ) -> None:
        if t_start is not None:  # the old keyword of t_star (deprecated)
            t_start = check_int(t_start, "t_start", 1)
            if t_star not in (t_start, DEFAULTS["t_star"]):
                raise UsageError(f"t_start={t_start} is the old name of t_star={t_star}; give t_star only")
            t_star = t_start
        super().__init__(eps_model, _plan(rounds, t_star, steps), **kwargs)
        amp_radius = check_distance(amp_radius, "amp_radius", optional=True)
        phase_radius = check_distance(phase_radius, "phase_radius", optional=True)
        delta = check_distance(delta, "delta")
        reference_t = check_step_index(reference_t, "reference_t", self.schedule.num_steps)
        check_flag(recompute_reference, "recompute_reference")
        settings = resolve_variant(self.variant, mode=mode, reference=reference)
        mode, reference = settings["mode"], settings["reference"]
        if reference == "denoised":
            check_step_range(eps_model, [], reference_t)
        self.amp_radius = amp_radius
        self.phase_radius = phase_radius
        self.delta = delta
        self.reference = reference
        self.reference_t = reference_t
        self.recompute_reference = recompute_reference
        self.mode = mode

    def validate(self, x: Tensor) -> Tensor:
        x = super().validate(x)
        height, width = x.shape[-2:]
        for r, name in ((self.amp_radius, "amp_radius"), (self.phase_radius, "phase_radius")):
            if r is not None:
                check_radius(r, height, width, name)
        return x

    def denoised_reference(self, x: Tensor, noise: Tensor) -> Tensor:
        """One-shot denoise of ``x`` (diffusion space) noised to ``reference_t`` with ``noise``."""
        alpha_bar = self.schedule.alpha_bar(self.reference_t)
        x_t = add_noise(x, alpha_bar, noise)
        t = torch.full((x.shape[0],), float(self.reference_t), device=x.device, dtype=torch.float32)
        eps = self.eps(x_t, t)[:, : x.shape[1]]
        a = float(alpha_bar)
        return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def make_x0_hook(self, x_round: Tensor, x_input: Tensor, noise: StepNoise) -> X0Hook:
        def exchange(x0: Tensor, ref: Tensor) -> Tensor:
            return freq_exchange(x0, ref, self.amp_radius, self.phase_radius, self.delta, mode=self.mode,
                                 check_values=False)  # inputs validated once in forward: no per-step sync

        if self.reference == "input":
            return lambda x0, t: exchange(x0, x_input)
        if self.reference == "round-denoised" or self.recompute_reference:
            # Key the draw by the step index so that checkpoint replays redraw the same reference.
            return lambda x0, t: exchange(x0, self.denoised_reference(x_round, noise(_REFERENCE_KEY + t, x_round)))
        ref = self.denoised_reference(x_round, noise(_REFERENCE_KEY, x_round))
        return lambda x0, t: exchange(x0, ref)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, amp_radius={self.amp_radius}, phase_radius={self.phase_radius}, "
            f"delta={self.delta}, reference={self.reference}, mode={self.mode}"
        )
