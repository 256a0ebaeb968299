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
* :func:`summarise` / :func:`ratio_summary` — per-band means over images with 95% confidence
  intervals (percentile bootstrap over images with a seeded generator, or the normal approximation).
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
from statistics import NormalDist
from typing import Any, Literal

import torch
from torch import Tensor

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

CIMethod = Literal["bootstrap", "normal"]


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

    def centres(self) -> list[float]:
        """A representative radius per band (midpoint of its edges; 0 for a band starting at 0)."""
        lows = [0.0, *self.edges[:-1]]
        return [(lo + hi) / 2 if k else hi / 2 for k, (lo, hi) in enumerate(zip(lows, self.edges))]

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
# Summaries over images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandSummary:
    """Per-band mean over images with a confidence interval. Tensors are float64 ``[K]``.

    ``n`` (int64 ``[K]``) counts the images with a defined value in each band.
    """

    mean: Tensor
    lower: Tensor
    upper: Tensor
    n: Tensor
    level: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        def clean(t: Tensor) -> list[float | None]:
            return [None if not math.isfinite(v) else float(v) for v in t.tolist()]

        return {"mean": clean(self.mean), "lower": clean(self.lower), "upper": clean(self.upper),
                "n": self.n.tolist(), "level": self.level, "method": self.method}


def _check_values(values: Tensor, name: str = "values") -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[0] == 0:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise UsageError(f"{name} must be a non-empty [B, K] tensor (images × bands), got {shape}")
    return values.double()


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise UsageError(f"confidence level must be in (0, 1), got {level}")


def _resample_counts(n: int, n_boot: int, seed: int, device: torch.device) -> Tensor:
    """Bootstrap multiplicities ``[n_boot, n]`` (float64): row ``b`` counts how often each image was drawn."""
    if n_boot < 1:
        raise UsageError(f"n_boot must be >= 1, got {n_boot}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    ones = torch.ones(n_boot, n, dtype=torch.float64)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, ones)
    return counts.to(device)


def _weighted_means(counts: Tensor, values: Tensor) -> Tensor:
    """NaN-skipping means of ``values`` ``[B, K]`` under resampling weights ``[R, B]`` → ``[R, K]``."""
    ok = torch.isfinite(values)
    total = counts @ torch.where(ok, values, torch.zeros_like(values))
    num = counts @ ok.double()
    return torch.where(num > 0, total / num.clamp_min(1), torch.full_like(total, math.nan))


def _percentiles(draws: Tensor, level: float) -> tuple[Tensor, Tensor]:
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=draws.dtype, device=draws.device)
    lo, hi = torch.nanquantile(draws, q, dim=0)
    return lo, hi


def _nan_stats(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column NaN-skipping mean, sample variance (ddof 1; NaN for n < 2) and count."""
    ok = torch.isfinite(values)
    n = ok.sum(0)
    zero = torch.zeros_like(values)
    mean = torch.where(ok, values, zero).sum(0) / n.clamp_min(1)
    mean = torch.where(n > 0, mean, torch.full_like(mean, math.nan))
    sq = torch.where(ok, (values - mean) ** 2, zero).sum(0)
    var = torch.where(n > 1, sq / (n - 1).clamp_min(1), torch.full_like(mean, math.nan))
    return mean, var, n


def summarise(
    values: Tensor,
    *,
    method: CIMethod = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> BandSummary:
    """Mean over images of per-image band values ``[B, K]`` with a ``level`` confidence interval.

    ``method="bootstrap"``: percentile bootstrap over images — ``n_boot`` resamples of the ``B``
    images with replacement, drawn from ``torch.Generator().manual_seed(seed)`` (the same seed gives
    the same interval on every device); all bands use the same resamples. ``method="normal"``:
    ``mean ± z·s/√n`` with ``z`` the normal quantile (NaN interval for n < 2). NaNs (bands without a
    defined value in an image) are skipped in both.
    """
    values = _check_values(values)
    _check_level(level)
    mean, var, n = _nan_stats(values)
    if method == "bootstrap":
        draws = _weighted_means(_resample_counts(values.shape[0], n_boot, seed, values.device), values)
        lo, hi = _percentiles(draws, level)
    elif method == "normal":
        z = NormalDist().inv_cdf(0.5 + level / 2)
        half = z * (var / n.clamp_min(1)).sqrt()
        lo, hi = mean - half, mean + half
    else:
        raise UsageError(f"CI method must be 'bootstrap' or 'normal', got {method!r}")
    return BandSummary(mean, lo, hi, n, level, method)


def ratio_summary(
    num: Tensor,
    den: Tensor,
    *,
    method: CIMethod = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> BandSummary:
    """Per-band ratio of means ``mean(num) / mean(den)`` over paired images, with a confidence interval.

    ``num`` and ``den`` are ``[B, K]`` values of the *same* images (e.g. FreqPure and DiffPure damage
    of the same adversarial images), so the bootstrap resamples image pairs (same seeded draws for
    both). ``method="normal"`` uses the delta method,
    ``Var(R) ≈ (s²_num + R² s²_den − 2R·cov) / (n · mean(den)²)``. Only images with both values
    defined count.
    """
    num, den = _check_values(num, "num"), _check_values(den, "den")
    if num.shape != den.shape:
        raise UsageError(f"num and den must have the same shape, got {tuple(num.shape)} and {tuple(den.shape)}")
    _check_level(level)
    both = torch.isfinite(num) & torch.isfinite(den)
    nan = torch.full_like(num, math.nan)
    num, den = torch.where(both, num, nan), torch.where(both, den, nan)
    m_num, v_num, n = _nan_stats(num)
    m_den, v_den, _ = _nan_stats(den)
    ratio = m_num / m_den
    if method == "bootstrap":
        counts = _resample_counts(num.shape[0], n_boot, seed, num.device)
        lo, hi = _percentiles(_weighted_means(counts, num) / _weighted_means(counts, den), level)
    elif method == "normal":
        zero = torch.zeros_like(num)
        cov = torch.where(both, (num - m_num) * (den - m_den), zero).sum(0) / (n - 1).clamp_min(1)
        var = (v_num + ratio**2 * v_den - 2 * ratio * cov) / (n.clamp_min(1) * m_den**2)
        half = NormalDist().inv_cdf(0.5 + level / 2) * var.clamp_min(0).sqrt()
        lo, hi = ratio - half, ratio + half
    else:
        raise UsageError(f"CI method must be 'bootstrap' or 'normal', got {method!r}")
    return BandSummary(ratio, lo, hi, n, level, method)


# ---------------------------------------------------------------------------------------------
# Rank correlation
# ---------------------------------------------------------------------------------------------
def rankdata(v: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties getting the average of their ranks (float64 ``[N]``)."""
    v = torch.as_tensor(v)
    if v.ndim != 1:
        raise UsageError(f"rankdata takes a 1-D tensor, got shape {tuple(v.shape)}")
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of the last member of each tie group
    avg = ends - (counts.double() - 1) / 2
    ranks = torch.empty(v.shape[0], dtype=torch.float64, device=v.device)
    ranks[order] = avg[inverse]
    return ranks


def spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman rank correlation of two equally long 1-D sequences (pairs with a NaN are dropped).

    Pearson correlation of the average ranks; NaN if fewer than 2 pairs remain or a side is constant.
    """
    xt = torch.as_tensor(x, dtype=torch.float64).flatten()
    yt = torch.as_tensor(y, dtype=torch.float64).flatten()
    if xt.shape != yt.shape:
        raise UsageError(f"x and y must have the same length, got {xt.numel()} and {yt.numel()}")
    ok = torch.isfinite(xt) & torch.isfinite(yt)
    xt, yt = xt[ok], yt[ok]
    if xt.numel() < 2:
        return math.nan
    rx, ry = rankdata(xt), rankdata(yt)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


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
