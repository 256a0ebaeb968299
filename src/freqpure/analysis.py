"""Damage to the amplitude and phase spectra, measured per radial frequency band.

This is the measurement behind FreqPure's argument (Pei et al., ICML 2025, Sec. 3): adversarial
perturbations damage the amplitude and phase spectra of an image more as frequency grows, while
diffusion purification damages all frequencies; FreqPure keeps the low ones close to the input.

Everything here is a plain batched function over tensors (no per-image loops):

* :class:`RadialBands` — a partition of the centred spectrum into rings by the radius
  ``r = sqrt(u² + v²)`` of each bin (``u, v`` integer offsets from the DC bin, as in
  :func:`freqpure.spectral.radial_mask`). With the default integer bands, band ``k`` holds the bins
  with ``k − 1 < r ≤ k`` (band 0 is the DC bin alone), so for an integer ``R`` the bands ``k ≤ R``
  are exactly the disc that a FreqPure exchange of radius ``R`` edits.
* :func:`band_damage` — per image and band, the mean relative amplitude error
  ``|A_x − A_clean| / A_clean`` and the mean circular phase distance ``|wrap(φ_x − φ_clean)|``
  (radians, in [0, π]), averaged over the colour channels and the bins of the band.
* :func:`summarise` / :func:`ratio_summary` (from :mod:`freqpure.bandstats`) — per-band means over images
  with 95% confidence intervals (percentile bootstrap over images with a seeded generator, or the normal approximation).
* :func:`spearman` — rank correlation of band index and damage (own implementation, average ranks
  for ties; no SciPy needed).

**Division by ~0.** Amplitudes are compared against a floor ``amp_floor · mean(A_clean)``, the
mean taken over all bins of the same image and channel (default ``amp_floor = 1e-3``). The
relative amplitude error divides by ``max(A_clean, floor)``, so a bin where both spectra are
(numerically) zero counts as undamaged rather than as 0/0. The phase of a bin whose clean *or*
perturbed amplitude is below the floor is undefined and left out of that band's phase mean; a band
with no usable bin in an image gets NaN for that image, and the summaries skip NaNs.

All spectra are computed in float64 (inputs of any float dtype, any value range; classifier space
[0, 1] is what the tools use). Shapes: images ``[B, C, H, W]``; per-image results ``[B, K]`` for
``K`` bands; summaries ``[K]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from freqpure.bandstats import BandSummary, CIMethod, rankdata, ratio_summary, spearman, summarise
from freqpure.errors import UsageError
from freqpure.spectral import centred_spectrum, radial_mask, wrap_phase

__all__ = [
    "RadialBands",
    "BandDamage",
    "BandSummary",
    "CIMethod",
    "amplitude_floor",
    "spectral_errors",
    "band_means",
    "band_damage",
    "summarise",
    "ratio_summary",
    "rankdata",
    "spearman",
    "summarise_cases",
]

# ---------------------------------------------------------------------------------------------
# Bands
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RadialBands:
    """Rings of the centred ``height × width`` spectrum, by bin radius ``r = sqrt(u² + v²)``.

    ``edges`` are the upper edges, strictly increasing: band 0 holds ``r ≤ edges[0]``, band ``k``
    holds ``edges[k − 1] < r ≤ edges[k]``; bins beyond ``edges[-1]`` belong to no band. Every band
    must contain at least one bin. Radii are in frequency-index units (see
    :mod:`freqpure.spectral`); the grid is the ``fftshift`` one (DC at ``[H // 2, W // 2]``).
    """

    height: int
    width: int
    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise UsageError(f"spectrum size must be positive, got {self.height}x{self.width}")
        edges = tuple(float(e) for e in self.edges)
        object.__setattr__(self, "edges", edges)
        if not edges:
            raise UsageError("band edges are empty: need at least one edge")
        if any(not math.isfinite(e) or e < 0 for e in edges):
            raise UsageError(f"band edges must be finite and >= 0, got {list(edges)}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise UsageError(f"band edges must be strictly increasing, got {list(edges)}")
        empty = [k for k, c in enumerate(self.counts().tolist()) if c == 0]
        if empty:
            raise UsageError(
                f"bands {empty} of edges {list(edges)} contain no bin of the {self.height}x{self.width} spectrum; "
                "widen them (bins sit at integer offsets u, v from DC, radius sqrt(u^2 + v^2))"
            )

    @classmethod
    def integer(cls, height: int, width: int, max_radius: float | None = None) -> RadialBands:
        """Unit-width bands ``0, 1, …`` (band ``k``: ``k − 1 < r ≤ k``) up to ``max_radius``.

        ``max_radius`` defaults to the corner of the spectrum, so every bin is in a band; pass
        ``min(H, W) // 2`` to keep only complete rings.
        """
        corner = math.hypot(height // 2, width // 2)
        top = corner if max_radius is None else float(max_radius)
        if not 0 <= top:
            raise UsageError(f"max_radius must be >= 0, got {max_radius}")
        return cls(height, width, tuple(float(k) for k in range(int(math.ceil(top - 1e-9)) + 1)))

    @property
    def num_bands(self) -> int:
        return len(self.edges)

    def masks(self, device: torch.device | str | None = None) -> Tensor:
        """Boolean ``[K, H, W]`` band masks in the centred layout (disjoint)."""
        discs = [radial_mask(self.height, self.width, e, device) for e in self.edges]
        rings = [discs[0]] + [outer & ~inner for inner, outer in zip(discs, discs[1:])]
        return torch.stack(rings)

    def counts(self) -> Tensor:
        """Number of bins per band, int64 ``[K]``."""
        return self.masks().flatten(1).sum(1)

    def within(self, radius: float | None) -> list[int]:
        """Indices of the bands lying entirely inside the disc ``r ≤ radius`` (``[]`` for ``None``)."""
        if radius is None:
            return []
        return [k for k, e in enumerate(self.edges) if e <= radius + 1e-9]

    def labels(self) -> list[str]:
        """Human-readable ranges, e.g. ``'r<=0'``, ``'(0, 1]'``."""
        lows = [None, *self.edges[:-1]]
        return [f"r<={hi:g}" if lo is None else f"({lo:g}, {hi:g}]" for lo, hi in zip(lows, self.edges)]

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "edges": list(self.edges),
                "counts": self.counts().tolist(), "labels": self.labels()}


# ---------------------------------------------------------------------------------------------
# Per-bin and per-band damage
# ---------------------------------------------------------------------------------------------
def _check_batch(x: Tensor, clean: Tensor) -> None:
    for name, t in (("x", x), ("clean", clean)):
        if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise UsageError(f"{name} must be a floating-point [B, C, H, W] tensor, got {shape}")
        if t.shape[0] == 0:
            raise UsageError(f"{name} is an empty batch")
        if not bool(torch.isfinite(t).all()):
            raise UsageError(f"{name} contains NaN or Inf")
    if x.shape != clean.shape:
        raise UsageError(f"x and clean must have the same shape, got {tuple(x.shape)} and {tuple(clean.shape)}")


def amplitude_floor(amp_clean: Tensor, amp_floor: float) -> Tensor:
    """``amp_floor · mean(A_clean)`` over the bins of each image and channel: ``[B, C, 1, 1]``.

    Never below the smallest positive float64, so the result is always a valid divisor.
    """
    scale = amp_clean.mean(dim=(-2, -1), keepdim=True)
    return (amp_floor * scale).clamp_min(torch.finfo(amp_clean.dtype).tiny)


def spectral_errors(x: Tensor, clean: Tensor, amp_floor: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin damage of ``x`` relative to ``clean`` in the centred spectrum.

    Args:
        x: ``[B, C, H, W]`` perturbed or purified images (any float dtype and range).
        clean: ``[B, C, H, W]`` the matching clean images.
        amp_floor: relative amplitude floor (see the module docstring).

    Returns:
        ``(amp_err, phase_err, phase_ok)``, each ``[B, C, H, W]`` float64 / float64 / bool:
        relative amplitude error ``|A_x − A_c| / max(A_c, floor)`` (≥ 0), circular phase distance
        ``|wrap(φ_x − φ_c)|`` in [0, π], and where that phase distance is defined (both amplitudes
        above the floor).
    """
    _check_batch(x, clean)
    if not amp_floor > 0:
        raise UsageError(f"amp_floor must be > 0, got {amp_floor}")
    f_x = centred_spectrum(x.detach().to(torch.float64))
    f_c = centred_spectrum(clean.detach().to(torch.float64))
    a_x, a_c = f_x.abs(), f_c.abs()
    floor = amplitude_floor(a_c, amp_floor)
    amp_err = (a_x - a_c).abs() / torch.maximum(a_c, floor)
    phase_err = wrap_phase(torch.angle(f_x) - torch.angle(f_c)).abs()
    phase_ok = (a_c > floor) & (a_x > floor)
    return amp_err, phase_err, phase_ok


def band_means(values: Tensor, bands: RadialBands, valid: Tensor | None = None) -> Tensor:
    """Mean of ``values`` ``[B, C, H, W]`` over the channels and bins of each band → ``[B, K]`` float64.

    Bins where ``valid`` (bool, broadcastable to ``values``) is False are left out; a band with no
    valid bin in an image gives NaN for that image.
    """
    if tuple(values.shape[-2:]) != (bands.height, bands.width):
        raise UsageError(
            f"bands are for a {bands.height}x{bands.width} spectrum, values are {values.shape[-2]}x{values.shape[-1]}"
        )
    masks = bands.masks(values.device).flatten(1).to(torch.float64)  # [K, HW]
    weight = torch.ones_like(values, dtype=torch.float64) if valid is None else valid.expand_as(values).double()
    vals = torch.where(weight > 0, values.double(), torch.zeros((), dtype=torch.float64, device=values.device))
    total = (vals * weight).flatten(2) @ masks.T  # [B, C, K]
    count = weight.flatten(2) @ masks.T
    total, count = total.sum(1), count.sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


@dataclass(frozen=True)
class BandDamage:
    """Per-image, per-band damage: ``amplitude`` and ``phase`` are float64 ``[B, K]``.

    ``amplitude``: mean relative amplitude error (0 = untouched, 1 = 100%). ``phase``: mean circular
    phase distance in radians, [0, π] (NaN where the band had no bin with a defined phase).
    """

    amplitude: Tensor
    phase: Tensor
    bands: RadialBands

    def __len__(self) -> int:
        return self.amplitude.shape[0]

    @staticmethod
    def concat(parts: Sequence[BandDamage]) -> BandDamage:
        """Join the damage of several batches measured with the same bands."""
        if not parts:
            raise UsageError("nothing to concatenate")
        if any(p.bands != parts[0].bands for p in parts):
            raise UsageError("cannot concatenate damage measured with different bands")
        return BandDamage(torch.cat([p.amplitude for p in parts]), torch.cat([p.phase for p in parts]), parts[0].bands)


def band_damage(
    x: Tensor, clean: Tensor, bands: RadialBands | None = None, *, amp_floor: float = 1e-3
) -> BandDamage:
    """Damage of ``x`` relative to ``clean`` (both ``[B, C, H, W]``) in each radial band.

    ``bands`` defaults to :meth:`RadialBands.integer` for the image size. See
    :func:`spectral_errors` for the per-bin quantities and the floor.
    """
    _check_batch(x, clean)
    bands = bands or RadialBands.integer(x.shape[-2], x.shape[-1])
    amp_err, phase_err, phase_ok = spectral_errors(x, clean, amp_floor)
    return BandDamage(band_means(amp_err, bands), band_means(phase_err, bands, phase_ok), bands)


# ---------------------------------------------------------------------------------------------
# All of it, JSON-ready
# ---------------------------------------------------------------------------------------------
def summarise_cases(
    cases: Mapping[str, BandDamage],
    *,
    ratios: Sequence[tuple[str, str]] = (),
    low_radius: float | Mapping[str, float | None] | None = None,
    method: CIMethod = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summaries of several cases measured on the same images, as a JSON-ready dict.

    Args:
        cases: name → :class:`BandDamage` (all with the same bands and images, in the same order).
        ratios: ``(numerator, denominator)`` case pairs, e.g. ``("freqpure", "diffpure")``; their
            per-band ratio of mean damage is reported for the bands within ``low_radius``.
        low_radius: radius of the low-frequency disc for ``ratios`` (FreqPure's exchange radius);
            a mapping ``{"amplitude": r_a, "phase": r_p}`` gives each quantity its own radius.
        method, level, n_boot, seed: confidence intervals, see :func:`summarise`.

    Returns:
        ``{"bands": ..., "ci": ..., "cases": {name: {"n", "amplitude": {..., "spearman"}, "phase": ...}},
        "ratios": {"num/den": {"bands": [...], "amplitude": {...}, "phase": {...}}}}``.
    """
    if not cases:
        raise UsageError("no cases to summarise")
    first = next(iter(cases.values()))
    bands = first.bands
    for name, dmg in cases.items():
        if dmg.bands != bands or len(dmg) != len(first):
            raise UsageError(f"case {name!r} was measured on other bands or another number of images")
    ci = {"method": method, "level": level, "n_boot": n_boot if method == "bootstrap" else None,
          "seed": seed if method == "bootstrap" else None}
    kw = dict(method=method, level=level, n_boot=n_boot, seed=seed)
    index = list(range(bands.num_bands))
    out: dict[str, Any] = {"bands": bands.to_dict(), "ci": ci, "cases": {}, "ratios": {}}
    for name, dmg in cases.items():
        entry: dict[str, Any] = {"n": len(dmg)}
        for quantity in ("amplitude", "phase"):
            summary = summarise(getattr(dmg, quantity), **kw)
            rho = spearman(index, summary.mean)
            entry[quantity] = summary.to_dict() | {"spearman": rho if math.isfinite(rho) else None}
        out["cases"][name] = entry
    radii = dict(low_radius) if isinstance(low_radius, Mapping) else {"amplitude": low_radius, "phase": low_radius}
    for num_name, den_name in ratios:
        missing = [c for c in (num_name, den_name) if c not in cases]
        if missing:
            raise UsageError(f"ratio {num_name}/{den_name}: unknown case(s) {missing}; have {list(cases)}")
        widest = max((r for r in radii.values() if r is not None), default=None)
        entry: dict[str, Any] = {"bands": bands.within(widest), "radius": widest}
        for quantity in ("amplitude", "phase"):
            low = bands.within(radii.get(quantity))
            if not low:
                entry[quantity] = None
                continue
            num = getattr(cases[num_name], quantity)[:, low]
            den = getattr(cases[den_name], quantity)[:, low]
            entry[quantity] = ratio_summary(num, den, **kw).to_dict() | {"bands": low, "radius": radii.get(quantity)}
        out["ratios"][f"{num_name}/{den_name}"] = entry
    return out
