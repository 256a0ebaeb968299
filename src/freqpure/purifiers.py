"""Purifiers (DiffPure, FreqPure) and the defended classifier that wraps them.

Every purifier is an ``nn.Module`` taking images ``[B, C, H, W]`` in [0, 1] and returning purified
images of the same shape, also in classifier space (roughly [0, 1]; not clamped, so that gradients
are exact). Randomness comes from a :class:`~freqpure.samplers.StepNoise` passed to ``forward``; when
none is passed the purifier draws a fresh seed from its own seeded ``torch.Generator``, so a run is
reproducible from the ``seed`` given at construction.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure._checks import check_images
from freqpure.checkpointing import AutoCheckpoint, CheckpointSetting, check_checkpoint_setting, checkpoint_policy
from freqpure.errors import UsageError
from freqpure.models.adapters import check_step_range
from freqpure.noise import check_noise_scheme, make_noise
from freqpure.presets import DEFAULTS
from freqpure.runtime import ensure_thread_policy, resolve_precision, run_in_precision
from freqpure.samplers import DrawNoise, EpsFn, StepNoise, X0Hook, add_noise, sample_ddpm, sample_vpsde_euler
from freqpure.schedules import LinearBetaSchedule, PurificationRound, parse_rounds, round_timesteps
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
    "VARIANTS",
    "resolve_variant",
]

Sampler = Literal["ddpm", "ddim", "sde"]
Reference = Literal["input", "denoised", "round-denoised"]
Variant = Literal["paper", "official"]

# The named presets. "paper": the method as the paper states it (freqpure's default). "official": the
# arithmetic of the official FreqPure code (purification.py / ddp_test.py), like for like.
VARIANTS: dict[str, dict[str, str]] = {
    "paper": {"mode": "paper", "reference": "input", "step_rule": "posterior", "grid": "respaced",
              "variance": "learned"},
    "official": {"mode": "reference", "reference": "round-denoised", "step_rule": "official", "grid": "official",
                 "variance": "fixed"},
}
_CHOICES = {"mode": ("paper", "reference"), "reference": ("input", "denoised", "round-denoised"),
            "step_rule": ("posterior", "official"), "grid": ("respaced", "official"), "variance": ("learned", "fixed")}


def resolve_variant(variant: str, **keys: str | None) -> dict[str, str]:
    """The effective settings of ``variant`` with the explicitly given ``keys`` (not ``None``) overriding it.

    Precedence: an explicit key wins over the preset (a documented override, e.g. ``variant="official",
    step_rule="posterior"`` for an ablation); ``None`` means "as the variant says". Only the keys passed
    are returned. Unknown variants or values raise :class:`UsageError`.
    """
    if variant not in VARIANTS:
        raise UsageError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    out = {}
    for key, value in keys.items():
        if value is not None and value not in _CHOICES[key]:
            raise UsageError(f"{key} must be {' or '.join(map(repr, _CHOICES[key]))}, got {value!r}")
        out[key] = VARIANTS[variant][key] if value is None else value
    return out

_ROUND_KEY = 100_000  # noise keys: round r uses keys r * _ROUND_KEY + ...
_FORWARD_KEY = 90_000  # ... + _FORWARD_KEY for the forward noising of that round
_REFERENCE_KEY = 50_000  # ... + _REFERENCE_KEY + i for the reference draws


def _check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (numpy integers too; no bools, no floats), optionally within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise UsageError(f"{name} must be {span}, got {value}")
    return value


def _check_number(value: object, name: str, *, optional: bool = False) -> float | None:
    """A finite number >= 0 (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or None" if optional else "a number"
        raise UsageError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{name} must be a finite number >= 0{' or None' if optional else ''}, got {value}")
    return value


def _compute_dtype(module: object) -> torch.dtype:
    """The floating dtype of ``module``'s parameters (float32 when it has none)."""
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def _as_compute_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """float16/bfloat16/float64 images are converted to the model's dtype (gradients flow through the cast)."""
    return x if x.dtype == dtype or not x.is_floating_point() else x.to(dtype)


SEED_MAX = 2**63 - 1


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
        resolve_precision(precision)  # refuse a bad name here
        self.noise_scheme = None if noise_scheme is None else check_noise_scheme(noise_scheme)
        if sampler not in ("ddpm", "ddim", "sde"):
            raise UsageError(f"sampler must be 'ddpm', 'ddim' or 'sde', got {sampler!r}")
        if not callable(eps_model):
            raise UsageError(f"eps_model must be a callable eps_model(x_t, t), got {type(eps_model).__name__}")
        seed = _check_int(seed, "seed", 0, SEED_MAX)
        settings = resolve_variant(variant, step_rule=step_rule, grid=grid, variance=variance)
        if sampler == "sde" and (settings["step_rule"] != "posterior" or settings["grid"] != "respaced"):
            raise UsageError(f"sampler 'sde' has no discrete grid or official step: variant={variant!r} needs "
                             f"sampler 'ddpm' or 'ddim' (step_rule={settings['step_rule']!r}, "
                             f"grid={settings['grid']!r})")
        if settings["step_rule"] == "official" and variance == "learned":
            raise UsageError("variance 'learned' needs step_rule 'posterior': the official step uses the fixed "
                             "posterior variance")
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
        parsed = parse_rounds(rounds)
        for rnd in parsed:
            round_timesteps(rnd, self.grid)
        return parsed

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
        return _as_compute_dtype(x, _compute_dtype(self.eps_model))

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
            round_noise = noise.child(r)
            hook = self.make_x0_hook(x_diff, x_input, round_noise)
            x_diff = self._run_round(x_diff, rnd, round_noise, hook, policy)
        return (x_diff + 1) / 2

    def timesteps(self, rnd: PurificationRound) -> list[int]:
        """The round's decreasing step indices on this purifier's grid."""
        return round_timesteps(rnd, self.grid)

    def _run_round(self, x: Tensor, rnd: PurificationRound, noise: StepNoise, hook: X0Hook | None,
                   checkpoint: bool | AutoCheckpoint = False) -> Tensor:
        z = noise(_FORWARD_KEY, x)
        if self.sampler == "sde":
            sde = self.schedule.as_vpsde()
            t_cont = rnd.t_star / self.schedule.num_steps
            x_t = add_noise(x, sde.alpha_bar(torch.tensor(t_cont, dtype=torch.float64)), z)
            return sample_vpsde_euler(
                self.eps, x_t, t_cont, rnd.steps, sde, noise=noise, x0_hook=hook, checkpoint=checkpoint
            )
        ts = self.timesteps(rnd)
        x_t = add_noise(x, self.schedule.alpha_bar(ts[0]), z)
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
        if rounds is None:
            t_star, steps = _check_int(t_star, "t_star", 1), _check_int(steps, "steps", 1)
        super().__init__(eps_model, rounds or [PurificationRound(t_star, steps)], sampler=sampler, **kwargs)


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
        t_start: noise level t* in diffusion steps (1..1000) of a single-round plan (positional; the keyword
            ``t_star`` says the same, as in :class:`DiffPure`).
        steps: denoising steps of a single-round plan.
        reference: ``"input"`` — the image being purified (the paper); ``"denoised"`` — the round's
            input (the previous round's output in multi-round plans) noised to ``reference_t`` and
            denoised by one model call, computed once per round; ``"round-denoised"`` — the same, redrawn
            with fresh noise at every step (the official code: two model calls per step). ``None``: as
            the variant says.
        reference_t: step index of the denoised references (official code: 50).
        recompute_reference: with ``reference="denoised"``, redraw it at every step (then equal to
            ``"round-denoised"``).
        mode: ``"paper"`` or ``"reference"`` arithmetic (see :func:`freqpure.spectral.freq_exchange`);
            ``None``: as the variant says.
        rounds: multi-round plan, e.g. ``"20:5*5,50:5*5"``; overrides ``t_start``/``steps``.
        **kwargs: :class:`Purifier` options (``sampler``, ``seed``, ``checkpoint``, ...).
    """

    def __init__(
        self,
        eps_model: EpsFn,
        amp_radius: float | None = DEFAULTS["amp_radius"],
        phase_radius: float | None = DEFAULTS["phase_radius"],
        delta: float = DEFAULTS["delta"],
        t_start: int = DEFAULTS["t_star"],
        steps: int = DEFAULTS["steps"],
        *,
        t_star: int | None = None,
        reference: Reference | None = None,
        reference_t: int = DEFAULTS["reference_t"],
        recompute_reference: bool = False,
        mode: Literal["paper", "reference"] | None = None,
        rounds: str | Sequence[PurificationRound] | None = None,
        **kwargs,
    ) -> None:
        if t_star is not None:  # DiffPure's name for the same setting
            if t_start not in (t_star, DEFAULTS["t_star"]):
                raise UsageError(f"t_star={t_star} and t_start={t_start} name the same setting; give one of them")
            t_start = t_star
        if rounds is None:
            t_start, steps = _check_int(t_start, "t_start", 1), _check_int(steps, "steps", 1)
        super().__init__(eps_model, rounds or [PurificationRound(t_start, steps)], **kwargs)
        amp_radius = _check_number(amp_radius, "amp_radius", optional=True)
        phase_radius = _check_number(phase_radius, "phase_radius", optional=True)
        delta = _check_number(delta, "delta")
        reference_t = _check_int(reference_t, "reference_t")
        if not isinstance(recompute_reference, bool):
            raise UsageError(f"recompute_reference must be True or False, got {recompute_reference!r}")
        settings = resolve_variant(self.variant, mode=mode, reference=reference)
        mode, reference = settings["mode"], settings["reference"]
        if not (delta >= 0 and math.isfinite(delta)):
            raise UsageError(f"delta must be a finite number >= 0 (radians), got {delta}")
        if not 0 <= reference_t < self.schedule.num_steps:
            raise UsageError(f"reference_t must be a step index in 0..{self.schedule.num_steps - 1}, got {reference_t}")
        if reference == "denoised":
            check_step_range(eps_model, [], reference_t)
        for r, name in ((amp_radius, "amp_radius"), (phase_radius, "phase_radius")):
            if r is not None and (r < 0 or not math.isfinite(r)):
                raise UsageError(f"{name} must be a finite number >= 0 or None, got {r}")
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


Vote = Literal["majority", "logits", "softmax"]


class PurifiedClassifier(nn.Module):
    """A classifier defended by a purifier: ``scores = vote(classifier(post(purifier(pre(x)))))``.

    Args:
        classifier: ``nn.Module`` taking images in [0, 1] (after ``postprocess``) → logits ``[B, K]``.
        purifier: a :class:`Purifier` (or any module ``[B,C,H,W] → [B,C,H,W]`` accepting ``noise=``).
        ensemble: number of independent purification runs per input (batched into one call).
        vote: ``"majority"`` — the value is the vote share of each class (ties broken by the mean
            softmax), the gradient that of the mean softmax (straight-through). The value is piecewise
            constant, so a loss computed on it (what AutoAttack's APGD tracks) is flat: give attack
            libraries ``"softmax"`` instead, as the evaluation does for AutoAttack
            (:meth:`freqpure.evaluation.components.Defence.mean_softmax_model`); ``"softmax"`` — log of
            the mean softmax; ``"logits"`` — mean logits.
        preprocess: applied to the input before purification (e.g. ``Resize(256)``).
        postprocess: applied to the purified image before the classifier (e.g. ``Resize(224)`` and
            ImageNet normalisation, see :func:`freqpure.transforms.imagenet_classifier_input`).
        max_batch: purify at most this many images per call (chunks the ``ensemble × B`` batch). Never
            changes the result: the noise is addressed per image and per ensemble draw (row ``b`` of
            draw ``e`` uses stream ``noise.rows(B)[b].child(e)``), not per chunk.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the classifier call (autocast; the
            purifier has its own ``precision``).

    Stochastic (``stochastic = True``, see :class:`freqpure.attacks.StochasticModel`): ``forward(x,
    noise)`` takes any noise source with ``rows(n)`` (a :class:`~freqpure.samplers.StepNoise` or
    :class:`~freqpure.samplers.DrawNoise`), so :class:`~freqpure.attacks.EOTGradient` can average
    over fresh draws of it.
    """

    stochastic = True

    def __init__(
        self,
        classifier: nn.Module,
        purifier: nn.Module,
        ensemble: int = 1,
        vote: Vote = "majority",
        *,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        postprocess: Callable[[Tensor], Tensor] | None = None,
        max_batch: int | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        ensemble = _check_int(ensemble, "ensemble", 1)
        if max_batch is not None:
            max_batch = _check_int(max_batch, "max_batch", 1)
        if not callable(classifier):
            raise UsageError(f"classifier must be a module or callable, got {type(classifier).__name__}")
        if not callable(purifier):
            raise UsageError(f"purifier must be a module or callable, got {type(purifier).__name__}")
        resolve_precision(precision)  # refuse a bad name here
        if vote not in ("majority", "logits", "softmax"):
            raise UsageError(f"vote must be 'majority', 'logits' or 'softmax', got {vote!r}")
        self.classifier = classifier
        self.purifier = purifier
        self.ensemble = ensemble
        self.vote = vote
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.max_batch = max_batch
        self.precision = precision

    def purify(self, x: Tensor, noise: StepNoise | DrawNoise | None = None) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] → ``[ensemble·B, C, H', W']`` purified (draw-major order)."""
        ensure_thread_policy()
        x = self._check_input(x)
        if self.preprocess is not None:
            x = self.preprocess(x)
        n = x.shape[0]
        batch = x.repeat(self.ensemble, 1, 1, 1)
        if noise is None and hasattr(self.purifier, "new_noise"):
            noise = self.purifier.new_noise()
        streams = None
        if noise is not None:
            if not hasattr(noise, "rows"):
                raise UsageError(f"PurifiedClassifier needs a noise source with rows(n) (StepNoise or DrawNoise), "
                                 f"got {type(noise).__name__}")
            per_image = noise.rows(n)
            streams = [s.child(e) for e in range(self.ensemble) for s in per_image]  # row e·B + b
        chunk = self.max_batch or batch.shape[0]
        outs = []
        for start in range(0, batch.shape[0], chunk):
            part = None if streams is None else DrawNoise(streams[start : start + chunk])
            outs.append(self.purifier(batch[start : start + chunk], noise=part))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def _check_input(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            hint = " (convert it with torch.from_numpy, scaled to [0, 1])" if hasattr(x, "__array__") else ""
            raise UsageError(f"x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}{hint}")
        if x.ndim != 4:
            hint = "; add a batch dimension with x[None]" if x.ndim == 3 else ""
            raise UsageError(f"x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise UsageError(f"x is an empty batch (shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise UsageError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
        return x

    def __repr__(self) -> str:  # one line of settings, not the whole network
        clf = getattr(self.classifier, "name", None) or type(self.classifier).__name__
        extra = f", max_batch={self.max_batch}" if self.max_batch else ""
        return (f"PurifiedClassifier(classifier={clf}, purifier={self.purifier!r}, ensemble={self.ensemble}, "
                f"vote={self.vote}{extra})")

    def logits_per_draw(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """Classifier logits of every purification run: ``[ensemble, B, K]``."""
        purified = self.purify(x, noise)
        if self.postprocess is not None:
            purified = self.postprocess(purified)
        logits = run_in_precision(self.classifier, self.precision,
                                  _as_compute_dtype(purified, _compute_dtype(self.classifier)))
        return logits.view(self.ensemble, x.shape[0], -1)

    def forward(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """``x`` ``[B, C, H, W]`` in [0, 1] → scores ``[B, K]`` (argmax = the defended prediction)."""
        return combine_draws(self.logits_per_draw(x, noise), self.vote)


def combine_draws(logits: Tensor, vote: Vote = "majority") -> Tensor:
    """Combine the logits of several purification runs ``[E, B, K]`` into scores ``[B, K]``.

    See :class:`PurifiedClassifier` for the three ``vote`` rules and their gradients.
    """
    if vote == "logits":
        return logits.mean(0)
    probs = F.softmax(logits.float(), dim=-1).mean(0)
    if vote == "softmax":
        return probs.clamp_min(1e-12).log()
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(probs.dtype).mean(0)
    value = votes + 1e-3 * probs  # the vote share; the mean softmax only breaks ties
    return value.detach() + (probs - probs.detach())
