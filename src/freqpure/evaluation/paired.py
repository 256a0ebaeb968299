"""Paired comparison of two evaluation runs on the test images both have finished (exact McNemar test).

Two runs that attack the same test images (same data subset, different defence, classifier, ...)
have paired per-sample outcomes; the exact McNemar test looks only at the discordant pairs: images
that one run gets right and the other wrong. :func:`newcombe_paired_ci` gives the 95% interval of the
difference of the two accuracies and :func:`min_detectable_difference` the smallest difference a
given number of images could have detected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from freqpure.errors import UsageError
from freqpure.evaluation.results import SampleRecord, wilson_interval

__all__ = ["mcnemar_p", "newcombe_paired_ci", "mcnemar_power", "min_detectable_difference", "PairedRow",
           "pair_outcomes", "PairedComparison", "compare_samples"]

Z95 = 1.959963984540054  # standard normal 0.975 quantile


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (binomial test of b vs c, p = 1/2)."""
    if b < 0 or c < 0:
        raise UsageError(f"discordant pair counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def newcombe_paired_ci(both: int, only_a: int, only_b: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of ``acc_A - acc_B`` on paired outcomes: Newcombe's hybrid score interval (method 10).

    Counts of the paired 2x2 table: ``both`` right, ``only_a`` (A right, B wrong), ``only_b`` (B right,
    A wrong), ``neither``; the estimate is ``(only_a - only_b) / n``. Source: R. G. Newcombe (1998),
    "Improved confidence intervals for the difference between binomial proportions based on paired data",
    Statistics in Medicine 17:2635-2650, method 10: with Wilson intervals ``(l1, u1)`` of ``acc_A`` and
    ``(l2, u2)`` of ``acc_B``,

        lo = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        hi = d + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)

    where ``phi = C / sqrt(e f g h)`` over the four margins (0 when one is 0) and ``C`` is the phi
    correction of ``ad - bc``: ``max(ad - bc - n/2, 0)`` when ``ad > bc``, else ``ad - bc``.
    The interval contains the estimate and lies in [-1, 1]; ``(-1, 1)`` when ``n = 0``.
    """
    counts = (both, only_a, only_b, neither)
    if any(k < 0 for k in counts):
        raise UsageError(f"paired counts must be >= 0, got {counts}")
    n = sum(counts)
    if n == 0:
        return -1.0, 1.0
    hits_a, hits_b = both + only_a, both + only_b
    p1, p2 = hits_a / n, hits_b / n
    d = (only_a - only_b) / n
    l1, u1 = wilson_interval(hits_a, n, z)
    l2, u2 = wilson_interval(hits_b, n, z)
    margins = hits_a * (only_b + neither) * hits_b * (only_a + neither)
    cross = both * neither - only_a * only_b
    if margins == 0:
        phi = 0.0
    else:
        corrected = max(cross - n / 2, 0.0) if cross > 0 else float(cross)
        phi = corrected / math.sqrt(margins)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    below = math.sqrt(max(0.0, dl1 * dl1 - 2 * phi * dl1 * du2 + du2 * du2))
    above = math.sqrt(max(0.0, du1 * du1 - 2 * phi * du1 * dl2 + dl2 * dl2))
    return max(-1.0, min(d, d - below)), min(1.0, max(d, d + above))


@lru_cache(maxsize=4096)
def _rejection_limit(m: int, alpha: float) -> int:
    """Largest ``k < m/2`` with the exact McNemar test of ``(k, m - k)`` rejecting at ``alpha``; -1 if none.

    The same test as :func:`mcnemar_p` (``p = 2 * sum_{j<=k} C(m, j) / 2^m <= alpha``), in exact integers.
    """
    num, den = alpha.as_integer_ratio()
    full = 2**m
    total, term, k = 0, 1, -1
    for j in range((m + 1) // 2):  # j < m/2: p grows with j, and p = 1 at the middle split
        total += term
        if 2 * total * den > num * full:
            break
        k = j
        term = term * (m - j) // (j + 1)
    return k


def _binomial_pmf(m: int, q: float, log_fact: np.ndarray) -> np.ndarray:
    """``P(X = j)`` for ``j = 0..m``, ``X ~ Binomial(m, q)`` (``log_fact[i] = log i!``, ``i <= m`` at least)."""
    if q <= 0.0 or q >= 1.0:
        pmf = np.zeros(m + 1)
        pmf[0 if q <= 0.0 else m] = 1.0
        return pmf
    j = np.arange(m + 1)
    return np.exp(log_fact[m] - log_fact[j] - log_fact[m - j] + j * math.log(q) + (m - j) * math.log1p(-q))


def _check_design(n: int, discordance: float, alpha: float) -> None:
    if n < 0:
        raise UsageError(f"the number of paired images must be >= 0, got {n}")
    if not 0.0 <= discordance <= 1.0:
        raise UsageError(f"the discordance rate must be in [0, 1], got {discordance}")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha must be in (0, 1), got {alpha}")


def mcnemar_power(n: int, discordance: float, difference: float, alpha: float = 0.05) -> float:
    """Power of the two-sided exact McNemar test (:func:`mcnemar_p` ``<= alpha``) on ``n`` paired images.

    Model: each image is independently discordant with probability ``discordance`` (psi) and, when it
    is, A is the run that is right with probability ``pi = (1 + difference / psi) / 2``, so that
    ``acc_A - acc_B = difference`` (``|difference| <= psi``). The number of discordant pairs ``m`` is
    Binomial(n, psi) and the test is conditional on it, so the power is exact:
    ``sum_m Bin(m; n, psi) * P(split of the m pairs is rejected | pi)``, with the rejected splits found
    by enumeration (no normal approximation).
    """
    _check_design(n, discordance, alpha)
    if abs(difference) > discordance + 1e-12:
        raise UsageError(f"|difference| = {abs(difference)} cannot exceed the discordance rate {discordance}")
    if n == 0 or discordance == 0.0:
        return 0.0
    pi = min(1.0, max(0.0, (1 + difference / discordance) / 2))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    counts = _binomial_pmf(n, discordance, log_fact)
    power = 0.0
    for m in np.nonzero(counts > 1e-18)[0]:  # the dropped m weigh less than n * 1e-18 together
        k = _rejection_limit(int(m), alpha)
        if k >= 0:  # rejected: at most k of the m pairs go to one run (either one)
            b_at_most_k = _binomial_pmf(int(m), 1 - pi, log_fact)[: k + 1].sum()
            a_at_most_k = _binomial_pmf(int(m), pi, log_fact)[: k + 1].sum()
            power += float(counts[m] * (a_at_most_k + b_at_most_k))
    return min(1.0, power)


def min_detectable_difference(n: int, discordance: float, alpha: float = 0.05,
                              power: float = 0.8) -> float | None:
    """Smallest ``|acc_A - acc_B|`` that ``n`` paired images detect with the given power (exact McNemar).

    Assumptions (those of :func:`mcnemar_power`): images independent, each discordant with probability
    ``discordance`` whichever run is better (so the difference can be at most ``discordance``), the
    two-sided exact McNemar test of :func:`mcnemar_p` at level ``alpha``, power averaged over the
    Binomial(n, discordance) number of discordant pairs. The power grows with the difference, so this
    bisects it to a relative precision of 2^-50 and returns the upper end (the conservative side).
    ``None`` when even ``difference = discordance`` (every discordant pair won by one run) falls short
    of ``power``, including ``discordance = 0``. For the rate to assume, see :meth:`PairedRow.min_detectable`.
    """
    _check_design(n, discordance, alpha)
    if not 0.0 < power < 1.0:
        raise UsageError(f"power must be in (0, 1), got {power}")
    if discordance == 0.0 or mcnemar_power(n, discordance, discordance, alpha) < power:
        return None
    lo, hi = 0.0, discordance
    for _ in range(50):
        mid = (lo + hi) / 2
        if mcnemar_power(n, discordance, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class PairedRow:
    """One metric on the common images: correct counts of A and B, the discordant pairs and the p-value."""

    metric: str
    n: int
    correct_a: int
    correct_b: int
    only_a: int  # A right, B wrong
    only_b: int  # B right, A wrong
    p: float

    @property
    def accuracy_a(self) -> float:
        return self.correct_a / self.n

    @property
    def accuracy_b(self) -> float:
        return self.correct_b / self.n

    @property
    def difference(self) -> float:
        """``accuracy_a - accuracy_b`` on the common images."""
        return (self.only_a - self.only_b) / self.n

    @property
    def diff_ci95(self) -> tuple[float, float]:
        """95% interval of :attr:`difference` (:func:`newcombe_paired_ci`, Newcombe 1998 method 10)."""
        both = self.correct_a - self.only_a
        neither = self.n - self.correct_a - self.only_b
        return newcombe_paired_ci(both, self.only_a, self.only_b, neither)

    @property
    def discordance(self) -> float:
        """Share of the common images that exactly one run gets right."""
        return (self.only_a + self.only_b) / self.n

    def min_detectable(self, n: int | None = None, alpha: float = 0.05, power: float = 0.8) -> float | None:
        """Smallest ``|difference|`` that ``n`` images (default: this row's) detect with ``power``.

        :func:`min_detectable_difference` at this row's observed discordance rate; when no pair is
        discordant, at the upper end of its 95% Wilson interval (``0 / n`` allows up to
        ``z^2 / (n + z^2)``, about ``3.84 / n``) instead of 0, which would make every difference
        undetectable. Pass the planned ``n`` to ask what the finished study could detect.
        """
        rate = self.discordance if self.only_a + self.only_b else wilson_interval(0, self.n)[1]
        return min_detectable_difference(self.n if n is None else n, rate, alpha, power)


@dataclass(frozen=True)
class PairedComparison:
    """Every shared metric of two runs on their ``common`` images (sorted test-image indices)."""

    common: list[int]
    finished_a: int
    finished_b: int
    rows: list[PairedRow]


def compare_samples(a: dict[int, SampleRecord], b: dict[int, SampleRecord],
                    order: list[str] | None = None) -> PairedComparison:
    """Compare runs A and B (``{index: SampleRecord}``) on the images both finished.

    Metrics: ``clean``, every attack label both runs have, and ``worst case``; in the order of ``order``
    where given (e.g. the run's config order), else as stored.
    Raises :class:`~freqpure.errors.UsageError` when they share no image.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise UsageError("the two runs have no finished test image in common (different data subsets?)")
    first_a, first_b = a[common[0]].outcomes(), b[common[0]].outcomes()
    metrics = [m for m in first_a if m in first_b]
    if order:
        rank = {m: i for i, m in enumerate(order)}
        metrics.sort(key=lambda m: rank.get(m, len(rank)))
    rows = [pair_outcomes(metric, {i: a[i].outcomes()[metric] for i in common},
                          {i: b[i].outcomes()[metric] for i in common}) for metric in metrics]
    return PairedComparison(common, len(a), len(b), [row for row in rows if row is not None])


def pair_outcomes(metric: str, a: Mapping[int, bool], b: Mapping[int, bool]) -> PairedRow | None:
    """The paired row of two runs' outcomes ``{image index: correct}`` on the images both have (``None``
    when they share none): correct counts, discordant pairs and the exact McNemar p-value. Every paired
    number in freqpure (evaluation runs, the study's clean and robust rows, the verdict) comes from here."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    pa, pb = [bool(a[i]) for i in common], [bool(b[i]) for i in common]
    only_a = sum(x and not y for x, y in zip(pa, pb))
    only_b = sum(y and not x for x, y in zip(pa, pb))
    return PairedRow(metric, len(common), sum(pa), sum(pb), only_a, only_b, mcnemar_p(only_a, only_b))
