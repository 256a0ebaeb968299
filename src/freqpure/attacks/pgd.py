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
from dataclasses import dataclass

import torch
from torch import Tensor

from freqpure.attacks.types import Norm, parse_enum
from freqpure.errors import UsageError

__all__ = ["LossAndGrad", "PGDResult", "pgd", "project", "random_start", "default_step_size"]

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


def random_start(x: Tensor, norm: Norm | str, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """A uniform draw from the ``eps``-ball around ``x`` (clipped to [0, 1])."""
    norm = parse_enum(Norm, norm, "norm")
    if norm is Norm.LINF:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        delta = (2 * u - 1) * eps
    else:
        d = x[0].numel()
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device="cpu").to(x.device) ** (1.0 / d)
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
    generator: torch.Generator | None = None,
) -> PGDResult:
    """Untargeted PGD maximising the oracle's loss within the ``eps``-ball of ``norm`` around ``x``.

    Args:
        loss_and_grad: gradient oracle (see module docstring).
        x: clean images ``[B, C, H, W]`` in [0, 1]; ``y``: labels ``[B]``.
        norm: ``"linf"`` or ``"l2"``; ``eps``: radius (pixel units of [0, 1] images).
        steps: iterations (gradient calls); ``step_size``: default :func:`default_step_size`.
        random_init: start from a uniform point of the ball (else from ``x``).
        keep: ``"best"`` (per-sample best iterate by the oracle's loss) or ``"last"``.
        generator: seeded generator for the random start.
    """
    norm = parse_enum(Norm, norm, "norm")
    if not (eps > 0 and math.isfinite(eps)):
        raise UsageError(f"eps must be a finite number > 0, got {eps}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if keep not in ("best", "last"):
        raise UsageError(f"keep must be 'best' or 'last', got {keep!r}")
    alpha = default_step_size(norm, eps, steps) if step_size is None else float(step_size)
    x = x.detach()
    x_adv = random_start(x, norm, eps, generator) if random_init else x.clone()
    best_x, best_loss = x_adv.clone(), torch.full((x.shape[0],), -math.inf, device=x.device)
    first_norm = None
    for _ in range(steps):
        loss, grad = loss_and_grad(x_adv, y)
        if first_norm is None:
            first_norm = grad.flatten(1).norm(dim=1)
        better = loss > best_loss
        best_x[better], best_loss[better] = x_adv[better], loss[better]
        step = x_adv + alpha * _ascent(torch.nan_to_num(grad), norm)
        x_adv = (x + project(step - x, norm, eps)).clamp(0, 1).detach()
    if keep == "last":  # no extra model call: the final iterate's loss is not measured
        return PGDResult(x_adv, torch.full_like(best_loss, math.nan), first_norm)
    final_loss = _final_loss(loss_and_grad, x_adv, y)
    better = final_loss > best_loss
    best_x[better], best_loss[better] = x_adv[better], final_loss[better]
    return PGDResult(best_x, best_loss, first_norm)


def _final_loss(loss_and_grad: LossAndGrad, x: Tensor, y: Tensor) -> Tensor:
    loss_only = getattr(loss_and_grad, "loss", None)
    if loss_only is not None:
        return loss_only(x, y)
    return loss_and_grad(x, y)[0]
