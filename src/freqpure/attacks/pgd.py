"""Projected gradient descent (Madry et al.) in L∞ and L2 on a gradient oracle, with EOT through the oracle.

The attack sees the model only through ``loss_and_grad(x, y) -> (loss [B], grad [B, C, H, W])``
(:class:`~freqpure.attacks.eot.EOTGradient` for EOT over a stochastic defence, in any gradient mode).

Which iterate is returned: ``keep="best"`` returns, per sample, the iterate with the largest loss the
oracle reported for it (the EOT-averaged loss of that call's draws), the final iterate included;
``keep="last"`` returns the final iterate. Either way the defence then judges the returned image once,
with its own randomness (one-shot evaluation), which is the number that counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from freqpure._checks import check_images, trusted_images
from freqpure.attacks.eot import EOTGradient, is_stochastic
from freqpure.attacks.registry import AttackContext, AttackResult, register_attack
from freqpure.attacks.settings import AttackSettings
from freqpure.attacks.types import GradientMode, Norm, eps_text, parse_enum, parse_number
from freqpure.errors import UsageError
from freqpure.noise import RowRandom, start_generator

__all__ = ["LossAndGrad", "PGDResult", "PGDAttack", "PGDSettings", "BPDAAttack", "BPDASettings", "pgd", "project",
           "random_start", "default_step_size"]

LossAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class PGDResult:
    """``x_adv`` ``[B, C, H, W]`` in [0, 1]; ``loss`` ``[B]`` the oracle's loss at ``x_adv`` (NaN for ``keep="last"``);
    ``first_grad_norm`` ``[B]`` the L2 norm of the first gradient (sanity: finite and non-zero)."""

    x_adv: Tensor
    loss: Tensor
    first_grad_norm: Tensor


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def project(delta: Tensor, norm: Norm | str, eps: float) -> Tensor:
    """Euclidean projection of ``delta`` ``[B, ...]`` onto the ``eps``-ball of ``norm`` (per sample)."""
    norm = parse_enum(Norm, norm, "norm")
    if norm is Norm.LINF:
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)


Generator = torch.Generator | np.random.Generator | RowRandom


def _uniform(shape, generator: Generator | None, like: Tensor) -> Tensor:
    if isinstance(generator, RowRandom):  # one counter stream per row, drawn on like's device (image-v1)
        return generator.random(shape, like)
    if isinstance(generator, np.random.Generator):
        host = torch.from_numpy(generator.random(tuple(shape))).to(like.dtype)
        return host.to(like.device, non_blocking=True)  # host draws: a copy without a sync
    return torch.rand(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device, non_blocking=True)


def _normal(shape, generator: Generator | None, like: Tensor) -> Tensor:
    if isinstance(generator, RowRandom):
        return generator.standard_normal(shape, like)
    if isinstance(generator, np.random.Generator):
        host = torch.from_numpy(generator.standard_normal(tuple(shape))).to(like.dtype)
        return host.to(like.device, non_blocking=True)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device, non_blocking=True)


def random_start(x: Tensor, norm: Norm | str, eps: float, generator: Generator | None = None) -> Tensor:
    """A uniform draw from the ``eps``-ball around ``x`` (clipped to [0, 1]).

    ``generator``: a ``torch.Generator``, a ``numpy.random.Generator`` (e.g.
    :meth:`freqpure.samplers.StepNoise.rng`, whose 128-bit keys do not collide across a run) or a
    :class:`~freqpure.noise.RowRandom` (one stream per row: each row's start independent of its batch).
    """
    norm = parse_enum(Norm, norm, "norm")
    if norm is Norm.LINF:
        delta = (2 * _uniform(x.shape, generator, x) - 1) * eps
    else:
        d = x[0].numel()
        g = _normal(x.shape, generator, x)
        r = _uniform((x.shape[0],), generator, x) ** (1.0 / d)
        delta = g / _flat_norm(g).clamp_min(1e-12) * (eps * r).view(-1, *([1] * (x.ndim - 1)))
    return (x + delta).clamp(0, 1)


def default_step_size(norm: Norm | str, eps: float, steps: int) -> float:
    """``2.5 · eps / steps`` (Madry et al.), at least ``eps / 10`` so very short runs still move."""
    return max(2.5 * eps / steps, eps / 10)


def _ascent(grad: Tensor, norm: Norm) -> Tensor:
    if norm is Norm.LINF:
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


def pgd(
    loss_and_grad: LossAndGrad,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm | str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_init: bool = True,
    keep: str = "best",
    generator: Generator | None = None,
    band_max_radius: float | None = None,
) -> PGDResult:
    """Untargeted PGD maximising the oracle's loss within the ``eps``-ball of ``norm`` around ``x``.

    Args:
        loss_and_grad: gradient oracle (see module docstring).
        x: clean images ``[B, C, H, W]`` in [0, 1]; ``y``: labels ``[B]``.
        norm: ``"linf"`` or ``"l2"``; ``eps``: radius (pixel units of [0, 1] images).
        steps: iterations (gradient calls); ``step_size``: default :func:`default_step_size`.
        random_init: start from a uniform point of the ball (else from ``x``).
        keep: ``"best"`` (per-sample best iterate by the oracle's loss) or ``"last"``.
        generator: seeded generator for the random start (torch or numpy).
        band_max_radius: restrict the perturbation to the centred-spectrum disc of this radius
            (frequency-index units): after every step (and after the random start) the perturbation is
            projected onto the band, then onto the eps ball, then into [0, 1] (see
            :func:`freqpure.attacks.band_projection.band_constrain`); ``None``: unrestricted.
    """
    norm = parse_enum(Norm, norm, "norm")
    if not (eps > 0 and math.isfinite(eps)):
        raise UsageError(f"eps must be a finite number > 0, got {eps}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if keep not in ("best", "last"):
        raise UsageError(f"keep must be 'best' or 'last', got {keep!r}")
    alpha = default_step_size(norm, eps, steps) if step_size is None else float(step_size)
    x = check_images(x.detach(), "x")  # validated once here; the iterates stay in [0, 1] by construction
    with trusted_images():  # no value checks (host read-backs) inside the loop's model calls
        return _pgd_loop(loss_and_grad, x, y, norm, eps, steps, alpha, random_init, keep, generator, band_max_radius)


def _keep_better(better: Tensor, x_new: Tensor, loss_new: Tensor, best_x: Tensor,
                 best_loss: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample best-iterate bookkeeping without a host sync: ``torch.where`` instead of boolean indexing."""
    keep_new = better.view(-1, *([1] * (x_new.ndim - 1)))
    return torch.where(keep_new, x_new, best_x), torch.where(better, loss_new, best_loss)


def _pgd_loop(loss_and_grad: LossAndGrad, x: Tensor, y: Tensor, norm: Norm, eps: float, steps: int, alpha: float,
              random_init: bool, keep: str, generator: Generator | None,
              band_max_radius: float | None) -> PGDResult:
    """:func:`pgd`'s iterations on validated ``x`` (no host-device sync inside an iteration)."""
    if band_max_radius is None:
        def constrain(delta: Tensor) -> Tensor:
            return (x + project(delta, norm, eps)).clamp(0, 1)
    else:
        from freqpure.attacks.band_projection import band_constrain, check_band_radius

        radius = check_band_radius(band_max_radius)

        def constrain(delta: Tensor) -> Tensor:
            return x + band_constrain(delta, x, norm, eps, radius)
    x_adv = random_start(x, norm, eps, generator) if random_init else x.clone()
    if random_init and band_max_radius is not None:
        x_adv = constrain(x_adv - x).detach()
    best_x, best_loss = x_adv.clone(), torch.full((x.shape[0],), -math.inf, device=x.device)
    first_norm = None
    for _ in range(steps):
        loss, grad = loss_and_grad(x_adv, y)
        if first_norm is None:
            first_norm = grad.flatten(1).norm(dim=1)
        best_x, best_loss = _keep_better(loss > best_loss, x_adv, loss, best_x, best_loss)
        step = x_adv + alpha * _ascent(torch.nan_to_num(grad), norm)
        x_adv = constrain(step - x).detach()
    if keep == "last":  # no extra model call: the final iterate's loss is not measured
        return PGDResult(x_adv, torch.full_like(best_loss, math.nan), first_norm)
    final_loss = _final_loss(loss_and_grad, x_adv, y)
    best_x, best_loss = _keep_better(final_loss > best_loss, x_adv, final_loss, best_x, best_loss)
    return PGDResult(best_x, best_loss, first_norm)


def _final_loss(loss_and_grad: LossAndGrad, x: Tensor, y: Tensor) -> Tensor:
    loss_only = getattr(loss_and_grad, "loss", None)
    if loss_only is not None:
        return loss_only(x, y)
    return loss_and_grad(x, y)[0]


# ---------------------------------------------------------------------------------------------
# The attacks the evaluation runs (see freqpure.attacks.registry)
# ---------------------------------------------------------------------------------------------
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}


def gradient_text(cfg) -> str:
    """The gradient part of a label: the mode, ``surrogate-mismatched`` for a surrogate at other noise levels."""
    if cfg.gradient == GradientMode.SURROGATE.value and not cfg.surrogate_match:
        return "surrogate-mismatched"
    return cfg.gradient


def gradient_sentence(cfg) -> str:
    """How the attack differentiates the purifier, in words (for protocol texts)."""
    if cfg.gradient == GradientMode.SURROGATE.value:
        if cfg.surrogate_match:
            return (f"the gradient of the matched surrogate {cfg.surrogate_rounds} (the defence's noise levels, "
                    "fewer steps)")
        return (f"the gradient of a MISMATCHED surrogate {cfg.surrogate_rounds} (other noise levels than the defence, "
                "as the official v2 evaluation does)")
    return {"full": "the exact gradient through every purification step",
            "adjoint": "adjoint gradients through the reverse VP-SDE",
            "bpda": "BPDA (purifier in the forward pass, identity in the backward pass)"}[cfg.gradient]


def surrogate_settings(cfg) -> dict:
    surrogate = cfg.gradient == GradientMode.SURROGATE.value
    return {"surrogate_rounds": cfg.surrogate_rounds if surrogate else None,
            "surrogate_match": bool(cfg.surrogate_match) if surrogate else None}


@dataclass
class PGDSettings(AttackSettings):
    """PGD-EOT's settings: the shared ones, ``steps`` iterations of ``step_size`` (``None``: 2.5 eps / steps, at
    least eps / 10; fractions accepted), a ``random_start`` in the ball, ``restarts`` kept by loss, ``keep`` the
    ``best`` iterate by the EOT loss or the ``last``, and ``eot_batch``: at most this many images per purifier
    call while attacking (``None``: all)."""

    name: str = "pgd"
    steps: int = 20
    step_size: float | str | None = None
    random_start: bool = True
    restarts: int = 1
    keep: str = "best"
    eot_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None:
            self.step_size = parse_number(self.step_size, "attack step_size")
            if not (self.step_size > 0 and math.isfinite(self.step_size)):
                raise UsageError(f"attack step_size must be finite and > 0, got {self.step_size}")
        for key in ("steps", "restarts"):
            if getattr(self, key) < 1:
                raise UsageError(f"attack {key} must be >= 1, got {getattr(self, key)}")
        if self.keep not in ("best", "last"):
            raise UsageError(f"attack keep must be 'best' or 'last', got {self.keep!r}")
        if self.eot_batch is not None and self.eot_batch < 1:
            raise UsageError(f"attack eot_batch must be >= 1, got {self.eot_batch}")


@dataclass
class BPDASettings(PGDSettings):
    """BPDA-PGD's settings: PGD's, with ``gradient: bpda`` (``full`` is read as ``bpda``)."""

    name: str = "bpda"
    gradient: str = "bpda"


class PGDAttack:
    """PGD with EOT (Madry et al.; Athalye et al.): :func:`pgd` on an :class:`EOTGradient` oracle over the
    defence's purifier in the attack's gradient mode. Per-sample best iterate or last, restarts kept by loss."""

    name = "pgd"
    settings_type: type = PGDSettings
    # Every row's numbers depend on its own image and noise only (per-sample steps, projections, best iterate;
    # EOT draws and random starts from the row's streams under noise_addressing image-v1).
    per_image = True

    def validate(self, cfg: PGDSettings) -> PGDSettings:
        """Nothing beyond what :class:`PGDSettings` checks: ``cfg`` itself."""
        return cfg

    def band(self, cfg) -> float | None:
        return None

    def step_size(self, cfg) -> float:
        return default_step_size(cfg.norm, cfg.eps, cfg.steps) if cfg.step_size is None else float(cfg.step_size)

    def label(self, cfg) -> str:
        return f"{self.name}-{cfg.norm}-{eps_text(cfg.eps)}-{gradient_text(cfg)}-eot{cfg.eot}"

    def settings(self, cfg) -> dict:
        return {"norm": cfg.norm, "eps": float(cfg.eps), "steps": cfg.steps, "step_size": self.step_size(cfg),
                "eot": cfg.eot, "loss": cfg.loss, "gradient": cfg.gradient, **surrogate_settings(cfg),
                "band_max_radius": self.band(cfg), "restarts": cfg.restarts, "random_start": bool(cfg.random_start),
                "keep": cfg.keep}

    def describe(self, cfg) -> str:
        return "PGD"

    def protocol_text(self, cfg) -> str:
        start = "a random start in the eps-ball" if cfg.random_start else "the clean image (no random start)"
        keep = ("the per-sample best iterate by the EOT-averaged loss (final iterate included)" if cfg.keep == "best"
                else "the last iterate")
        restarts = f", best of {cfg.restarts} restarts" if cfg.restarts > 1 else ""
        return (f"{self.describe(cfg)}-{cfg.steps} in {_NORM_TEXT[cfg.norm]} (eps {eps_text(cfg.eps)}, step "
                f"{self.step_size(cfg):.4g}, {cfg.loss} loss) from {start}, EOT over {cfg.eot} draw(s) per gradient "
                f"(1 against a deterministic defence), following {gradient_sentence(cfg)}; returns {keep}{restarts}")

    def build_model(self, defence, cfg):
        return defence.attack_model(cfg)

    def run(self, model, cfg, ctx: AttackContext) -> AttackResult:
        eot = cfg.eot if is_stochastic(model) else 1  # a deterministic defence has nothing to average
        oracle = EOTGradient(model, eot=eot, loss=cfg.loss, seed=ctx.noise, max_batch=cfg.eot_batch)
        gen = start_generator(ctx.start)  # batch-v1: start.rng(); image-v1: one stream per row
        best = None
        for _ in range(cfg.restarts):
            res = pgd(oracle, ctx.x, ctx.y, norm=cfg.norm, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size,
                      random_init=cfg.random_start, keep=cfg.keep, generator=gen, band_max_radius=self.band(cfg))
            if best is None:
                best = res
                continue
            better = torch.nan_to_num(res.loss, nan=-math.inf) > torch.nan_to_num(best.loss, nan=-math.inf)
            best.x_adv, best.loss = _keep_better(better, res.x_adv, res.loss, best.x_adv, best.loss)
        return AttackResult(best.x_adv, best.loss, best.first_grad_norm)


class BPDAAttack(PGDAttack):
    """PGD-EOT with ``gradient: bpda`` (the purifier's output forward, identity backward)."""

    name = "bpda"
    settings_type: type = BPDASettings

    def validate(self, cfg: BPDASettings) -> BPDASettings:
        """``cfg`` with ``gradient: bpda`` (a copy when it said ``full``); any other gradient mode is refused."""
        if cfg.gradient not in (GradientMode.BPDA.value, GradientMode.FULL.value):
            raise UsageError(f"attack 'bpda' uses gradient 'bpda', got gradient={cfg.gradient!r}")
        return cfg if cfg.gradient == GradientMode.BPDA.value else replace(cfg, gradient=GradientMode.BPDA.value)

    def describe(self, cfg) -> str:
        return "BPDA-PGD"


register_attack(PGDAttack())
register_attack(BPDAAttack())
