"""Low-band passthrough: how much of a band-limited input perturbation a purifier lets through.

The measurement behind the study's clean stages (beside :mod:`freqpure.analysis`, the spectral damage by
radius). A perturbation ``delta`` whose spectrum lies in one radial band is added to an image; the purifier's
``response`` (purified perturbed image minus purified clean image, same noise) is projected onto that band:
:func:`band_passthrough` is 1 when the band's perturbation passes unchanged, 0 when it is removed.

Plain batched functions over tensors; spectra in float64. Shapes: images ``[B, C, H, W]``, masks ``[H, W]``
(centred, as :func:`freqpure.spectral.radial_mask`), per-image results ``[B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from freqpure.noise import PASSTHROUGH_SALT, passthrough_stream
from freqpure.spectral import radial_mask

__all__ = ["PASSTHROUGH_NOISE", "PASSTHROUGH_SALT", "band_labels", "band_limit", "band_limited_noise", "band_masks",
           "band_passthrough", "mean_ci", "passthrough_noise"]

# How the passthrough perturbation is drawn: "per-image-v2", one draw per test image from its own stream
# (freqpure.noise.passthrough_stream: path seed, PASSTHROUGH_SALT, test index; step: the band); "batch-shared-v1",
# the pilot's (one generator seeded with the root seed for every batch, so every batch got the same perturbations:
# kept only to read and resume the pilot; freqpure.noise.pilot_passthrough_generator).
PASSTHROUGH_NOISE = ("per-image-v2", "batch-shared-v1")


def band_masks(height: int, width: int, edges: list[float], device: torch.device | str = "cpu") -> Tensor:
    """Boolean ``[K + 1, H, W]`` centred masks: ``r <= e0``, ``e0 < r <= e1``, ..., ``r > e_last``."""
    discs = [radial_mask(height, width, e, torch.device(device)) for e in edges]
    rings = [discs[0]] + [outer & ~inner for inner, outer in zip(discs, discs[1:])] + [~discs[-1]]
    return torch.stack(rings)


def band_labels(edges: list[float]) -> list[str]:
    """``[3, 8]`` → ``['r<=3', '3<r<=8', 'r>8']`` (the names of :func:`band_masks`' rings)."""
    labels = [f"r<={edges[0]:g}"] + [f"{a:g}<r<={b:g}" for a, b in zip(edges, edges[1:])]
    return labels + [f"r>{edges[-1]:g}"]


def band_limit(z: Tensor, mask: Tensor, eps: float) -> Tensor:
    """Noise ``z`` ``[B, C, H, W]`` restricted to the centred band ``mask`` ``[H, W]`` and scaled per image to
    L-inf norm ``eps`` (so its spectrum lies in the band exactly, before any clipping); float32."""
    spec = torch.fft.fftshift(torch.fft.fft2(z.double()), dim=(-2, -1)) * mask.to(torch.float64)
    v = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    peak = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (z.dim() - 1)))
    return (eps * v / peak).float()


def band_limited_noise(shape: tuple[int, ...], mask: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """:func:`band_limit` of Gaussian noise of ``shape`` drawn from ``generator``."""
    return band_limit(torch.randn(shape, generator=generator, dtype=torch.float64), mask, eps)


def passthrough_noise(indices: list[int], like: Tensor, band: int, seed: int) -> Tensor:
    """Standard-normal float64 noise ``[len(indices), C, H, W]`` for the passthrough perturbation of band
    ``band`` (scheme ``per-image-v2``): row ``i`` comes from test image ``indices[i]``'s own stream, so every
    image gets its own draw whatever its batch or position."""
    shape = (len(indices), *like.shape[1:])
    one = torch.empty((1, *like.shape[1:]), dtype=torch.float64)
    return torch.cat([passthrough_stream(seed, i)(band, one) for i in indices]).reshape(shape)


def band_passthrough(delta: Tensor, response: Tensor, mask: Tensor) -> Tensor:
    """Fraction of ``delta`` that survives in ``response`` within the band ``mask``, per image ``[B]``.

    ``⟨B(response), B(delta)⟩ / ‖B(delta)‖²`` with ``B`` the band projection (computed on centred
    spectra, summed over channels): 1 = the band's perturbation passes unchanged, 0 = it is removed
    (or replaced by something uncorrelated with it), negative = it is inverted.
    """
    fd = torch.fft.fftshift(torch.fft.fft2(delta.double()), dim=(-2, -1))
    fr = torch.fft.fftshift(torch.fft.fft2(response.double()), dim=(-2, -1))
    m = mask.to(torch.float64)
    num = ((fr * fd.conj()).real * m).flatten(1).sum(1)
    den = ((fd.abs() ** 2) * m).flatten(1).sum(1)
    return num / den.clamp_min(1e-30)


def mean_ci(values: list[float | None]) -> dict[str, float]:
    """Mean of the finite ``values`` with a normal-approximation 95% interval: ``{mean, lo, hi, n}``."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    half = 1.959963984540054 * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}
