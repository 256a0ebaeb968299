"""Paired comparison of two evaluation runs on the test images both have finished (exact McNemar test).

Two runs that attack the same test images (same data subset, different defence, classifier, ...)
have paired per-sample outcomes; the exact McNemar test looks only at the discordant pairs: images
that one run gets right and the other wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from freqpure.errors import UsageError
from freqpure.evaluation.results import SampleRecord

__all__ = ["mcnemar_p", "PairedRow", "PairedComparison", "compare_samples"]


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (binomial test of b vs c, p = 1/2)."""
    if b < 0 or c < 0:
        raise UsageError(f"discordant pair counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


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
    rows = []
    for metric in metrics:
        pa = [a[i].outcomes()[metric] for i in common]
        pb = [b[i].outcomes()[metric] for i in common]
        only_a = sum(x and not y for x, y in zip(pa, pb))
        only_b = sum(y and not x for x, y in zip(pa, pb))
        rows.append(PairedRow(metric, len(common), sum(pa), sum(pb), only_a, only_b, mcnemar_p(only_a, only_b)))
    return PairedComparison(common, len(a), len(b), rows)
