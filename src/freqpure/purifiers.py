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
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure._checks import check_images
from freqpure.errors import UsageError
from freqpure.samplers import EpsFn, StepNoise, X0Hook, add_noise, sample_ddpm, sample_vpsde_euler
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
        checkpoint: per-step gradient checkpointing (flat memory for full-gradient attacks).
        seed: seed of the generator that draws a fresh noise seed for each call without ``noise``.
        variant: ``"paper"`` (default) or ``"official"``: the preset that fills ``step_rule``, ``grid``,
            ``variance`` (and, in :class:`FreqPure`, ``mode`` and ``reference``) when they are ``None``.
        step_rule: ``"posterior"`` (ε re-derived from the edited x0) or ``"official"`` (the model's own ε
            kept; :func:`freqpure.samplers.official_step`). ``None``: as the variant says.
        grid: ``"respaced"`` (t* − 1 … 0) or ``"official"`` (t*/n − 1, …, t* − 1, last step to ᾱ = 1; needs
            steps to divide t*). ``None``: as the variant says.
        variance: ``"learned"`` (use a model's learned-variance channels) or ``"fixed"`` (posterior
            variance, as the official code does on ImageNet). ``None``: as the variant says.
    """

    def __init__(
        self,
        eps_model: EpsFn,
        rounds: str | Sequence[PurificationRound],
        *,
        sampler: Sampler = "ddpm",
        schedule: LinearBetaSchedule | None = None,
        clamp_input: bool = False,
        clip_x0: bool = False,
        checkpoint: bool = False,
        seed: int = 0,
        variant: Variant = "paper",
        step_rule: str | None = None,
        grid: str | None = None,
        variance: str | None = None,
    ) -> None:
        super().__init__()
        if sampler not in ("ddpm", "ddim", "sde"):
            raise UsageError(f"sampler must be 'ddpm', 'ddim' or 'sde', got {sampler!r}")
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
        self.clamp_input = clamp_input
        self.clip_x0 = clip_x0
        self.checkpoint = checkpoint
        self.seed = seed
        self._seeds = torch.Generator().manual_seed(seed)

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
        """A fresh noise source drawn from this purifier's seeded generator."""
        return StepNoise(int(torch.randint(0, 2**62, (1,), generator=self._seeds)))

    def validate(self, x: Tensor) -> Tensor:
        """Check ``x`` against the model (channels, image size) and the [0, 1] range."""
        channels = getattr(self.eps_model, "channels", None)
        size = getattr(self.eps_model, "image_size", None)
        return check_images(x, "x", channels=channels, size=size, clamp=self.clamp_input)

    def forward(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """Purify ``x`` ``[B, C, H, W]`` in [0, 1] → ``[B, C, H, W]`` (classifier space, unclamped)."""
        x = self.validate(x)
        noise = noise if noise is not None else self.new_noise()
        x_input = x * 2 - 1  # diffusion space
        x_diff = x_input
        for r, rnd in enumerate(self.rounds):
            round_noise = noise.child(r)
            hook = self.make_x0_hook(x_diff, x_input, round_noise)
            x_diff = self._run_round(x_diff, rnd, round_noise, hook)
        return (x_diff + 1) / 2

    def timesteps(self, rnd: PurificationRound) -> list[int]:
        """The round's decreasing step indices on this purifier's grid."""
        return round_timesteps(rnd, self.grid)

    def _run_round(self, x: Tensor, rnd: PurificationRound, noise: StepNoise, hook: X0Hook | None) -> Tensor:
        z = noise(_FORWARD_KEY, x)
        if self.sampler == "sde":
            sde = self.schedule.as_vpsde()
            t_cont = rnd.t_star / self.schedule.num_steps
            x_t = add_noise(x, sde.alpha_bar(torch.tensor(t_cont, dtype=torch.float64)), z)
            return sample_vpsde_euler(
                self.eps_model, x_t, t_cont, rnd.steps, sde, noise=noise, x0_hook=hook, checkpoint=self.checkpoint
            )
        ts = self.timesteps(rnd)
        x_t = add_noise(x, self.schedule.alpha_bar(ts[0]), z)
        return sample_ddpm(
            self.eps_model,
            x_t,
            ts,
            self.schedule,
            eta=1.0 if self.sampler == "ddpm" else 0.0,
            noise=noise,
            x0_hook=hook,
            clip_x0=self.clip_x0,
            checkpoint=self.checkpoint,
            step_rule=self.step_rule,
            variance=self.variance,
        )

    def with_rounds(self, rounds: str | Sequence[PurificationRound]) -> Purifier:
        """A shallow copy with another purification plan (same model and settings): used for surrogates."""
        clone = copy.copy(self)
        clone.rounds = self._checked_rounds(rounds)
        clone._seeds = torch.Generator().manual_seed(self.seed)
        return clone

    def extra_repr(self) -> str:
        plan = ",".join(f"{r.t_star}:{r.steps}" for r in self.rounds)
        return (f"rounds={plan}, sampler={self.sampler}, seed={self.seed}, variant={self.variant}, "
                f"step_rule={self.step_rule}, grid={self.grid}, variance={self.variance}")


class DiffPure(Purifier):
    """DiffPure (Nie et al., 2022): noise to ``t_star`` and reverse-diffuse in ``steps`` steps.

    ``DiffPure(eps_model, t_star=100, steps=100, sampler="sde")`` is DiffPure's CIFAR-10 setting
    (t* = 0.1, dt = 1e-3); ``sampler="ddpm"`` runs the discrete ancestral chain instead.
    """

    def __init__(
        self,
        eps_model: EpsFn,
        t_star: int = 100,
        steps: int = 100,
        *,
        sampler: Sampler = "ddpm",
        rounds: str | Sequence[PurificationRound] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps_model, rounds or [PurificationRound(t_star, steps)], sampler=sampler, **kwargs)


class FreqPure(Purifier):
    """FreqPure (Pei et al., ICML 2025): DiffPure with the frequency exchange on x0 at every step.

    Args:
        eps_model: ε-model callable.
        amp_radius: ASE radius (frequency-index units of the centred spectrum; ``None`` disables).
        phase_radius: PSP radius (``None`` disables).
        delta: PSP half-width in radians.
        t_start: noise level t* in diffusion steps (1..1000) of a single-round plan.
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
        amp_radius: float | None = 10,
        phase_radius: float | None = 10,
        delta: float = 0.3,
        t_start: int = 100,
        steps: int = 20,
        *,
        reference: Reference | None = None,
        reference_t: int = 50,
        recompute_reference: bool = False,
        mode: Literal["paper", "reference"] | None = None,
        rounds: str | Sequence[PurificationRound] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps_model, rounds or [PurificationRound(t_start, steps)], **kwargs)
        settings = resolve_variant(self.variant, mode=mode, reference=reference)
        mode, reference = settings["mode"], settings["reference"]
        if not (delta >= 0 and math.isfinite(delta)):
            raise UsageError(f"delta must be a finite number >= 0 (radians), got {delta}")
        if not 0 <= reference_t < self.schedule.num_steps:
            raise UsageError(f"reference_t must be a step index in 0..{self.schedule.num_steps - 1}, got {reference_t}")
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
        eps = self.eps_model(x_t, t)[:, : x.shape[1]]
        a = float(alpha_bar)
        return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def make_x0_hook(self, x_round: Tensor, x_input: Tensor, noise: StepNoise) -> X0Hook:
        def exchange(x0: Tensor, ref: Tensor) -> Tensor:
            return freq_exchange(x0, ref, self.amp_radius, self.phase_radius, self.delta, mode=self.mode)

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
            softmax), the gradient that of the mean softmax (straight-through), so attack libraries can
            differentiate it; ``"softmax"`` — log of the mean softmax; ``"logits"`` — mean logits.
        preprocess: applied to the input before purification (e.g. ``Resize(256)``).
        postprocess: applied to the purified image before the classifier (e.g. ``Resize(224)`` and
            ImageNet normalisation, see :func:`freqpure.transforms.imagenet_classifier_input`).
        max_batch: purify at most this many images per call (chunks the ``ensemble × B`` batch).
    """

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
    ) -> None:
        super().__init__()
        if ensemble < 1:
            raise UsageError(f"ensemble must be >= 1, got {ensemble}")
        if vote not in ("majority", "logits", "softmax"):
            raise UsageError(f"vote must be 'majority', 'logits' or 'softmax', got {vote!r}")
        self.classifier = classifier
        self.purifier = purifier
        self.ensemble = ensemble
        self.vote = vote
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.max_batch = max_batch

    def purify(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] → ``[ensemble·B, C, H', W']`` purified (draw-major order)."""
        if self.preprocess is not None:
            x = self.preprocess(x)
        batch = x.repeat(self.ensemble, 1, 1, 1)
        if noise is None and hasattr(self.purifier, "new_noise"):
            noise = self.purifier.new_noise()
        chunk = self.max_batch or batch.shape[0]
        outs = []
        for k, start in enumerate(range(0, batch.shape[0], chunk)):
            part_noise = noise.child(k) if (noise is not None and chunk < batch.shape[0]) else noise
            outs.append(self.purifier(batch[start : start + chunk], noise=part_noise))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def logits_per_draw(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """Classifier logits of every purification run: ``[ensemble, B, K]``."""
        purified = self.purify(x, noise)
        if self.postprocess is not None:
            purified = self.postprocess(purified)
        logits = self.classifier(purified)
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
