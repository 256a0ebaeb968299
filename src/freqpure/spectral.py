"""Batched, differentiable frequency-domain operations on ``[B, C, H, W]`` images.

The FreqPure step (Pei et al., ICML 2025, Eq. 13) edits the low-frequency part of the centred 2-D
spectrum of the diffusion model's clean-image estimate ``est`` using a reference image ``ref``:

* ASE — *amplitude spectrum exchange*: inside radius ``amp_radius`` the amplitude of ``est`` is
  replaced by the amplitude of ``ref``;
* PSP — *phase spectrum projection*: inside radius ``phase_radius`` the phase of ``est`` is projected
  into ``[phase(ref) − δ, phase(ref) + δ]``.

Radii are in frequency-index units of the centred spectrum (``sqrt(u² + v²) ≤ r`` with ``u, v``
integer offsets from the DC bin). They are absolute: r = 10 covers 31% of a 32×32 spectrum but 0.5%
of a 256×256 one; :func:`relative_radius` converts a fraction of the half-size to index units.

Two modes are offered by :func:`freq_exchange`:

``mode="paper"`` (default) — the method as the paper states it. Phase differences are taken on the
circle (wrap-aware), so the projected spectrum stays Hermitian and the inverse FFT is real up to
rounding; self-conjugate bins (DC, Nyquist) keep a real phase (0 or π). The output is the real part
of the inverse FFT; nothing is clamped, so gradients pass everywhere.

``mode="official"`` — the arithmetic of the official FreqPure code, for like-for-like comparison
with published numbers: both images are clipped to the image range first, the phase is taken in
[0, 2π] (``angle + π``), the low-frequency phase of ``est`` is first *replaced* by the reference's
and then clipped to ±δ around it (so δ has no effect: the step is a Fourier low-pass blend when the
two radii are equal), the image is rebuilt as the *magnitude* of the complex inverse FFT (negative
pixels are reflected) and clipped to the image range. Its grid follows the official
``arange(-N // 2, N // 2)`` frequency map (``radial_mask(..., grid="official")``), which differs from the
centred one for odd sizes. ``"reference"`` is the old name of this mode (and of that grid), still accepted.

All functions take and return images in the diffusion range [-1, 1] (any real range works in
``"paper"`` mode) and work on any device and dtype (float32/float64).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = [
    "radial_mask",
    "self_conjugate_mask",
    "relative_radius",
    "centred_spectrum",
    "amplitude_exchange",
    "phase_projection",
    "freq_exchange",
    "exchange_spectrum",
    "wrap_phase",
    "check_radius",
]

Mode = Literal["paper", "official"]
_OLD_NAMES = {"reference": "official"}  # mode="reference" / grid="reference": the old names, still accepted


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------
def _offsets(n: int, grid: str) -> Tensor:
    """Integer frequency offsets of the centred spectrum along one axis (float64 ``[n]``)."""
    if grid == "official":  # the official code's np.arange(-n // 2, n // 2)
        return torch.arange(-(n // 2) if n % 2 == 0 else -((n + 1) // 2), n // 2, dtype=torch.float64)
    return torch.arange(n, dtype=torch.float64) - (n // 2)  # DC at index n // 2, as fftshift puts it


@lru_cache(maxsize=64)
def _radial_mask_cpu(height: int, width: int, radius: float, grid: str) -> Tensor:
    v = _offsets(height, grid)[:, None]
    u = _offsets(width, grid)[None, :]
    return (u**2 + v**2).sqrt() <= radius


_DEVICE_MASKS: dict[tuple, Tensor] = {}


def radial_mask(
    height: int,
    width: int,
    radius: float,
    device: torch.device | str | None = None,
    *,
    centred: bool = True,
    grid: str = "centred",
) -> Tensor:
    """Boolean low-frequency disc ``sqrt(u² + v²) ≤ radius`` of shape ``[H, W]``, cached per shape/device.

    ``centred=True`` gives it in the ``fftshift`` layout (DC at ``[H // 2, W // 2]``); ``centred=False``
    in the natural ``fft2`` layout (DC at ``[0, 0]``), which saves two shifts per call. ``grid``: ``"centred"``
    (offsets from the DC bin) or ``"official"`` (the official code's ``arange(-N // 2, N // 2)``; differs for
    odd sizes; ``"reference"`` is its old name).
    """
    grid = _OLD_NAMES.get(grid, grid)
    if grid not in ("centred", "official"):
        raise UsageError(f"grid must be 'centred' or 'official', got {grid!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (height, width, float(radius), str(device), centred, grid)
    mask = _DEVICE_MASKS.get(key)
    if mask is None:
        mask = _radial_mask_cpu(height, width, float(radius), grid)
        if not centred:
            mask = torch.fft.ifftshift(mask, dim=(-2, -1))
        mask = mask.to(device, non_blocking=True)  # from a cached host tensor: no sync
        if len(_DEVICE_MASKS) > 256:
            _DEVICE_MASKS.clear()
        _DEVICE_MASKS[key] = mask
    return mask


@lru_cache(maxsize=64)
def _self_conjugate_cpu(height: int, width: int) -> Tensor:
    rows = torch.arange(height)
    cols = torch.arange(width)
    row_ok = (-rows) % height == rows
    col_ok = (-cols) % width == cols
    return row_ok[:, None] & col_ok[None, :]


def self_conjugate_mask(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Bins equal to their own mirror ``(-k mod N)`` in the natural layout: DC and Nyquist bins. ``[H, W]`` bool.

    Cached per shape and device (built once, then no host work or copy per call). Do not modify it in place.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = ("selfconj", height, width, str(device))
    mask = _DEVICE_MASKS.get(key)
    if mask is None:
        mask = _self_conjugate_cpu(height, width).to(device, non_blocking=True)
        if len(_DEVICE_MASKS) > 256:
            _DEVICE_MASKS.clear()
        _DEVICE_MASKS[key] = mask
    return mask


def relative_radius(fraction: float, height: int, width: int) -> float:
    """Convert a fraction of the spectrum's half-size (``min(H, W) / 2``) to a radius in index units."""
    if not 0 <= fraction <= 1:
        raise UsageError(f"relative radius must be in [0, 1], got {fraction}")
    return fraction * min(height, width) / 2


def check_radius(radius: float, height: int, width: int, name: str = "radius") -> None:
    """Raise if ``radius`` is negative, not finite, or beyond the spectrum's corner (rounded up)."""
    corner = math.hypot(height // 2, width // 2)
    if not math.isfinite(radius) or radius < 0:
        raise UsageError(f"{name} must be a finite non-negative number, got {radius}")
    if radius > math.ceil(corner):  # a radius of ceil(corner) already covers the whole spectrum
        raise UsageError(
            f"{name}={radius} is larger than the {height}x{width} spectrum (its corner is at {corner:.2f} "
            "frequency-index units); radii are absolute, see freqpure.spectral.relative_radius"
        )


# ---------------------------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------------------------
def centred_spectrum(x: Tensor) -> Tensor:
    """Centred 2-D FFT (DC at ``[H // 2, W // 2]``) of ``x`` ``[..., H, W]`` → complex ``[..., H, W]``."""
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def wrap_phase(phase: Tensor) -> Tensor:
    """Wrap angles into ``[-π, π)``."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _unit(z: Tensor) -> Tensor:
    """``z / |z|`` with 0 at 0 (finite gradients everywhere)."""
    mag = z.abs()
    tiny = torch.finfo(mag.dtype).tiny
    return z / torch.where(mag > 0, mag, torch.full_like(mag, 1.0)).clamp_min(tiny)


def _check_pair(est: Tensor, ref: Tensor) -> None:
    for value, name in ((est, "est"), (ref, "ref")):
        if not isinstance(value, Tensor):
            raise UsageError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if est.ndim != 4:
        raise UsageError(f"est must be 4-D [B, C, H, W], got shape {tuple(est.shape)}")
    if ref.shape != est.shape and not (ref.ndim == 4 and ref.shape[0] == 1 and ref.shape[1:] == est.shape[1:]):
        raise UsageError(f"ref must have est's shape {tuple(est.shape)} (or batch 1), got {tuple(ref.shape)}")
    if not est.is_floating_point() or not ref.is_floating_point():
        raise UsageError(f"est and ref must be floating point, got {est.dtype} and {ref.dtype}")
    if est.numel() == 0:
        raise UsageError(f"est is empty (shape {tuple(est.shape)}): need at least one image of at least 1x1 pixels")


def _check_settings(amp_radius: float | None, phase_radius: float | None, delta: float) -> None:
    """Types and signs of the exchange settings (the same rules in both modes)."""
    for value, name in ((amp_radius, "amp_radius"), (phase_radius, "phase_radius"), (delta, "delta")):
        if value is None and name != "delta":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{name} must be a number{' or None' if name != 'delta' else ''}, "
                             f"got {type(value).__name__} {value!r}")
        if name == "delta":
            if not value >= 0:  # inf is allowed: no phase constraint
                raise UsageError(f"delta must be >= 0 radians, got {value}")
        elif not math.isfinite(value) or value < 0:
            raise UsageError(f"{name} must be a finite non-negative number, got {value}")


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x.detach()).all()):
        raise UsageError(f"{name} contains NaN or Inf values")


def _edit_spectrum(
    f_est: Tensor, f_ref: Tensor, amp_mask: Tensor | None, phase_mask: Tensor | None, delta: float
) -> Tensor:
    """Core of paper mode on natural-layout spectra; ``None`` masks disable that edit."""
    unit_est = _unit(f_est)
    unit_out = unit_est
    if phase_mask is not None and delta < math.pi:
        unit_ref = _unit(f_ref)
        diff = torch.angle(unit_est * unit_ref.conj())  # wrap(φ_est − φ_ref) in (−π, π]
        projected = unit_ref * torch.polar(torch.ones_like(diff), diff.clamp(-delta, delta))
        # A self-conjugate bin (DC, Nyquist) must stay real: within δ < π of ref's phase (0 or π)
        # the only admissible real phase is ref's own.
        height, width = f_est.shape[-2:]
        selfconj = self_conjugate_mask(height, width, f_est.device)
        projected = torch.where(selfconj & (diff.abs() > delta), unit_ref, projected)
        unit_out = torch.where(phase_mask, projected, unit_est)
    magnitude = f_est.abs() if amp_mask is None else torch.where(amp_mask, f_ref.abs(), f_est.abs())
    edited = magnitude * unit_out
    touched = amp_mask if phase_mask is None else phase_mask if amp_mask is None else amp_mask | phase_mask
    return torch.where(touched, edited, f_est)  # bins outside both discs are passed through untouched


def exchange_spectrum(
    est: Tensor,
    ref: Tensor,
    amp_radius: float | None,
    phase_radius: float | None,
    delta: float,
) -> Tensor:
    """Paper-mode ASE + PSP; returns the complex natural-layout spectrum ``[B, C, H, W]``.

    A radius of ``None`` disables that edit. Exposed so that tests and analyses can check Hermitian
    symmetry; :func:`freq_exchange` returns ``ifft2(exchange_spectrum(...)).real``.
    """
    _check_pair(est, ref)
    _check_settings(amp_radius, phase_radius, delta)
    height, width = est.shape[-2:]
    masks = []
    for radius, name in ((amp_radius, "amp_radius"), (phase_radius, "phase_radius")):
        if radius is None:
            masks.append(None)
            continue
        check_radius(radius, height, width, name)
        masks.append(radial_mask(height, width, radius, est.device, centred=False))
    f_est = torch.fft.fft2(est)
    if masks == [None, None]:
        return f_est
    return _edit_spectrum(f_est, torch.fft.fft2(ref), masks[0], masks[1], delta)


def amplitude_exchange(est: Tensor, ref: Tensor, radius: float) -> Tensor:
    """ASE: ``est`` with the amplitude inside ``radius`` replaced by ``ref``'s; phase kept. ``[B, C, H, W]``."""
    return torch.fft.ifft2(exchange_spectrum(est, ref, radius, None, math.inf)).real.to(est.dtype)


def phase_projection(est: Tensor, ref: Tensor, radius: float, delta: float) -> Tensor:
    """PSP: ``est`` with its phase inside ``radius`` projected into ``[φ_ref − δ, φ_ref + δ]`` on the circle."""
    return torch.fft.ifft2(exchange_spectrum(est, ref, None, radius, delta)).real.to(est.dtype)


def freq_exchange(
    est: Tensor,
    ref: Tensor,
    amp_radius: float | None,
    phase_radius: float | None,
    delta: float,
    mode: Mode = "paper",
    *,
    check_values: bool = True,
) -> Tensor:
    """Apply ASE (radius ``amp_radius``) and PSP (radius ``phase_radius``, half-width ``delta``) to ``est``.

    Args:
        est: ``[B, C, H, W]`` clean-image estimate, diffusion range [-1, 1].
        ref: reference image, same shape (or batch 1), same range.
        amp_radius: amplitude-exchange radius in frequency-index units (``None``: no exchange).
        phase_radius: phase-projection radius in frequency-index units (``None``: no projection).
        delta: phase half-width in radians.
        mode: ``"paper"`` (true projection on the circle) or ``"official"`` (the official code's
            arithmetic; ``"reference"`` is its old name); see the module docstring.
        check_values: refuse NaN/Inf in ``est`` and ``ref`` (a host read-back: a device sync on a GPU).
            Purifiers, which validate their input once, pass ``False`` for the per-step call.

    Returns:
        ``[B, C, H, W]`` real tensor, same dtype as ``est``.
    """
    mode = _OLD_NAMES.get(mode, mode)
    if mode not in ("paper", "official"):
        raise UsageError(f"mode must be 'paper' or 'official', got {mode!r}")
    _check_pair(est, ref)
    _check_settings(amp_radius, phase_radius, delta)
    if check_values:
        _check_finite(est, "est")
        _check_finite(ref, "ref")
    dtype = est.dtype
    if dtype in (torch.float16, torch.bfloat16):  # no half-precision FFT of arbitrary sizes: compute in fp32
        est, ref = est.float(), ref.float()
    if mode == "paper":
        return torch.fft.ifft2(exchange_spectrum(est, ref, amp_radius, phase_radius, delta)).real.to(dtype)
    return _official_exchange(est, ref, amp_radius, phase_radius, delta).to(dtype)


def _official_exchange(
    est: Tensor, ref: Tensor, amp_radius: float | None, phase_radius: float | None, delta: float
) -> Tensor:
    """The official FreqPure arithmetic, batched (see the module docstring)."""
    _check_pair(est, ref)
    _check_settings(amp_radius, phase_radius, delta)
    height, width = est.shape[-2:]
    amp_radius = -1.0 if amp_radius is None else amp_radius  # an empty disc
    phase_radius = -1.0 if phase_radius is None else phase_radius
    for r, name in ((amp_radius, "amp_radius"), (phase_radius, "phase_radius")):
        if r >= 0:
            check_radius(r, height, width, name)
    scale = 255.0
    est255 = ((est + 1) / 2 * scale).clamp(0, scale)
    ref255 = ((ref + 1) / 2 * scale).clamp(0, scale)
    f_est = centred_spectrum(est255)
    f_ref = centred_spectrum(ref255)
    amp_mask = radial_mask(height, width, amp_radius, est.device, grid="official")
    phase_mask = radial_mask(height, width, phase_radius, est.device, grid="official")
    amp = torch.where(amp_mask, f_ref.abs(), f_est.abs())
    phase_est = torch.angle(f_est) + math.pi
    phase_ref = torch.angle(f_ref) + math.pi
    phase = torch.where(phase_mask, phase_ref, phase_est)  # exchanged first ...
    phase = torch.where(phase_mask, torch.clamp(phase, phase_ref - delta, phase_ref + delta), phase)  # ... then clipped
    spectrum = amp * torch.exp(1j * (phase - math.pi))
    image = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).abs().clamp(0, scale) / scale
    return (image * 2 - 1).to(est.dtype)
