"""Per-band summaries over images: means with 95% confidence intervals (a seeded percentile bootstrap over
images, or the normal approximation), ratios of means, and Spearman's rank correlation (average ranks for
ties; no SciPy needed). Plain functions over ``[B, K]`` float tensors (images × bands); NaNs (a band with no
usable bin in an image) are skipped. Used by :mod:`freqpure.analysis`, which re-exports every name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = ["BandSummary", "CIMethod", "summarise", "ratio_summary", "rankdata", "spearman"]

CIMethod = Literal["bootstrap", "normal"]


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
