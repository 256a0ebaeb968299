"""Frequency-band-limited perturbations: the perturbation lives in the low-frequency disc of the spectrum.

The *band* of radius ``r`` is the set of images whose centred 2-D spectrum (per channel) is zero outside
the disc ``sqrt(u² + v²) ≤ r`` (frequency-index units, the same disc as FreqPure's ``amp_radius``,
:func:`freqpure.spectral.radial_mask`). It is a linear subspace ``S``; :func:`band_project` is the
orthogonal (L2) projection onto it (the disc is symmetric under ``k → −k``, so the filtered image stays
real).

A band-limited attack keeps ``delta = x_adv − x`` in ``S ∩ ball(norm, eps) ∩ box`` (``box``: ``x + delta``
in [0, 1]); :func:`band_constrain` maps any ``delta`` into it, see its docstring for how the projections
interact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from freqpure.attacks.types import Norm, parse_enum
from freqpure.errors import UsageError
from freqpure.spectral import radial_mask

__all__ = ["band_project", "band_constrain", "out_of_band_fraction", "check_band_radius"]


def check_band_radius(max_radius: float, where: str = "band_max_radius") -> float:
    """``max_radius`` as a float > 0 (finite); :class:`~freqpure.errors.UsageError` otherwise."""
    if isinstance(max_radius, bool) or not isinstance(max_radius, int | float):
        raise UsageError(f"{where} must be a number > 0 (frequency-index units), got {max_radius!r}")
    if not (math.isfinite(max_radius) and max_radius > 0):
        raise UsageError(f"{where} must be a finite number > 0 (frequency-index units), got {max_radius}")
    return float(max_radius)


def band_project(delta: Tensor, max_radius: float) -> Tensor:
    """Orthogonal projection of ``delta`` ``[..., H, W]`` onto the band ``sqrt(u² + v²) ≤ max_radius``."""
    height, width = delta.shape[-2:]
    mask = radial_mask(height, width, max_radius, delta.device, centred=False)
    spectrum = torch.fft.fft2(delta.to(torch.float64) if delta.dtype == torch.float64 else delta.float())
    return torch.fft.ifft2(spectrum * mask).real.to(delta.dtype)


def out_of_band_fraction(delta: Tensor, max_radius: float) -> Tensor:
    """Per sample ``[B]``: the fraction of ``delta``'s energy outside the band (0 for a band-limited one)."""
    outside = delta - band_project(delta, max_radius)
    total = delta.flatten(1).pow(2).sum(1)
    return outside.flatten(1).pow(2).sum(1) / total.clamp_min(1e-30)


def band_constrain(
    delta: Tensor,
    x: Tensor,
    norm: Norm | str,
    eps: float,
    max_radius: float,
    *,
    tol: float = 1e-6,
    max_iters: int = 2000,
) -> Tensor:
    """Map ``delta`` ``[B, C, H, W]`` into band ∩ eps-ball ∩ box (``x + delta`` in [0, 1]).

    How the projections interact:

    1. **Band first**: ``delta ← band_project(delta)`` (orthogonal projection onto the band ``S``).
    2. **Then the eps ball**, by scaling: ``delta ← delta · min(1, eps / ‖delta‖)``. Scaling keeps a
       band-limited ``delta`` band-limited. For L2 this composition *is* the Euclidean projection onto
       ``S ∩ ball`` (the ball is centred at 0 ∈ ``S``; by Pythagoras, project onto ``S``, then scale).
       For L∞ a per-pixel clamp would leave the band, so the scaling is a feasible retraction, not
       the Euclidean projection (which has no closed form).
    3. **Then the image box** ``[−x, 1 − x]`` (intersected with the L∞ ball for L∞): a clamp would
       leave the band wherever ``x + delta`` leaves [0, 1] (pixels at 0 or 1 are common in CIFAR-10),
       and scaling would collapse ``delta`` to 0 at any such pixel. So alternating projections
       ``delta ← band_project(clamp(delta, lo, hi))`` run until the box violation is at most ``tol``
       (or ``max_iters``), starting from step 2's point; both maps are non-expansive towards 0, so the
       L2 norm never grows. A final clamp makes the result exactly feasible (box and eps).

    The result respects the eps ball and [0, 1] exactly; its energy outside the band is what the final
    clamp removed: at most ``tol`` per pixel (numerically zero: :func:`out_of_band_fraction` ~1e-10).
    """
    norm = parse_enum(Norm, norm, "norm")
    d = band_project(delta, max_radius)
    size = d.flatten(1).norm(dim=1) if norm is Norm.L2 else d.flatten(1).abs().amax(1)
    d = d * (eps / size.clamp_min(1e-30)).clamp(max=1.0).view(-1, *([1] * (d.ndim - 1)))
    lo, hi = -x, 1 - x
    if norm is Norm.LINF:
        lo, hi = lo.clamp(min=-eps), hi.clamp(max=eps)
    check_every = _CPU_CHECK_EVERY if d.device.type == "cpu" else _GPU_CHECK_EVERY
    done = torch.zeros((), dtype=torch.bool, device=d.device)
    for it in range(max_iters):
        violation = torch.maximum(d - hi, lo - d).clamp_min(0).amax()
        if check_every == 1:
            if violation <= tol:
                break
            d = band_project(torch.maximum(torch.minimum(d, hi), lo), max_radius)
            continue
        # on a GPU: freeze d once converged (the same numbers as stopping there) and read the flag back
        # to the host only every few iterations instead of once per iteration
        done = done | (violation <= tol)
        d = torch.where(done, d, band_project(torch.maximum(torch.minimum(d, hi), lo), max_radius))
        if (it + 1) % check_every == 0 and bool(done):
            break
    return torch.maximum(torch.minimum(d, hi), lo)


_GPU_CHECK_EVERY = 8  # band_constrain's host read-backs on a GPU: one per this many projection iterations
_CPU_CHECK_EVERY = 1  # (a read-back costs nothing on the CPU)
