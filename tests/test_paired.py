"""Paired statistics of two runs on the same images: Newcombe's interval of the difference of accuracies and
the smallest difference the exact McNemar test detects (src/freqpure/evaluation/paired.py)."""

from __future__ import annotations

import itertools
import math

import pytest

from freqpure.errors import UsageError
from freqpure.evaluation.paired import (
    PairedRow,
    _rejection_limit,
    compare_samples,
    mcnemar_p,
    mcnemar_power,
    min_detectable_difference,
    newcombe_paired_ci,
)
from freqpure.evaluation.results import wilson_interval

Z = 1.959963984540054


# Newcombe (1998), Stat. Med. 17:2635-2650, Table II, method 10 (95%), counts (both, A only, B only, neither).
# Values as reproduced in the test suite of the R package propint (github.com/m-Py/propint,
# tests/testthat/test_Two_Dependent_Props_CI.R, "produces the results reported in Newcombe1998"); the same
# formula, with the phi correction, is in biostatUZH's confIntPairedProportion (after Altman et al. 2000,
# "Statistics with confidence", p. 52).
NEWCOMBE_1998 = [
    ((36, 12, 2, 0), 0.2, (0.0569, 0.3404)),
    ((18, 12, 2, 18), 0.2, (0.0562, 0.3290)),
    ((53, 0, 0, 1), 0.0, (-0.0729, 0.0729)),  # no discordant pair
    ((0, 30, 0, 0), 1.0, (0.8395, 1.0)),  # every pair discordant, all one way
]


@pytest.mark.parametrize(("table", "estimate", "interval"), NEWCOMBE_1998)
def test_newcombe_interval_reproduces_the_published_examples(table, estimate, interval):
    lo, hi = newcombe_paired_ci(*table)
    both, only_a, only_b, neither = table
    assert (only_a - only_b) / sum(table) == pytest.approx(estimate)
    assert lo == pytest.approx(interval[0], abs=5e-5)
    assert hi == pytest.approx(interval[1], abs=5e-5)


def test_newcombe_interval_for_one_image_by_hand():
    # Wilson of 1/1 is (1 / (1 + z^2), 1), of 0/1 is (0, z^2 / (1 + z^2)); one margin is 0, so phi = 0
    w = Z * Z / (1 + Z * Z)
    lo, hi = newcombe_paired_ci(0, 1, 0, 0)  # A right, B wrong: d = 1
    assert lo == pytest.approx(1 - math.sqrt(2) * w, abs=1e-12) and hi == 1.0
    assert newcombe_paired_ci(0, 0, 1, 0) == pytest.approx((-hi, -lo), abs=1e-12)
    for table in ((1, 0, 0, 0), (0, 0, 0, 1)):  # both right / both wrong: d = 0
        assert newcombe_paired_ci(*table) == pytest.approx((-w, w), abs=1e-12)


def test_newcombe_interval_without_discordant_pairs_is_symmetric_about_zero():
    for both, neither in ((10, 0), (0, 10), (7, 3), (250, 6)):
        lo, hi = newcombe_paired_ci(both, 0, 0, neither)
        assert lo == pytest.approx(-hi, abs=1e-12) and 0 < hi < 1


def test_newcombe_interval_all_discordant_pairs():
    # 5:5, nothing concordant: phi = (0 - 25) / sqrt(5^4) = -1, so each side is the sum of the two Wilson
    # half-widths of 5/10: h = z sqrt(1/40 + z^2/400) / (1 + z^2/10) = 0.26341
    h = Z * math.sqrt(1 / 40 + Z * Z / 400) / (1 + Z * Z / 10)
    assert h == pytest.approx(0.26341, abs=1e-5)
    assert newcombe_paired_ci(0, 5, 5, 0) == pytest.approx((-2 * h, 2 * h), abs=1e-12)
    lo, hi = newcombe_paired_ci(0, 10, 0, 0)
    assert hi == 1.0 and 0.5 < lo < 1.0


def test_newcombe_interval_contains_the_estimate_and_stays_in_range():
    for n in range(1, 13):
        for both, only_a, only_b in itertools.product(range(n + 1), repeat=3):
            neither = n - both - only_a - only_b
            if neither < 0:
                continue
            d = (only_a - only_b) / n
            lo, hi = newcombe_paired_ci(both, only_a, only_b, neither)
            assert -1.0 <= lo <= d <= hi <= 1.0
            assert lo < hi
            # swapping A and B mirrors the interval
            assert newcombe_paired_ci(both, only_b, only_a, neither) == pytest.approx((-hi, -lo), abs=1e-12)


def test_newcombe_interval_refuses_negative_counts_and_is_uninformative_without_images():
    with pytest.raises(UsageError):
        newcombe_paired_ci(3, -1, 0, 2)
    assert newcombe_paired_ci(0, 0, 0, 0) == (-1.0, 1.0)


def test_paired_row_prints_the_difference_interval():
    row = PairedRow("worst case", 50, 48, 38, 12, 2, mcnemar_p(12, 2))  # Newcombe's first example
    assert row.difference == pytest.approx(0.2)
    assert row.diff_ci95 == pytest.approx((0.0569, 0.3404), abs=5e-5)
    assert row.discordance == pytest.approx(14 / 50)
    text = f"{row.difference:+.3f} [{row.diff_ci95[0]:+.3f}, {row.diff_ci95[1]:+.3f}]"
    assert text == "+0.200 [+0.057, +0.340]"


def test_compare_samples_rows_carry_the_interval():
    class Rec:
        def __init__(self, clean):
            self.clean = clean

        def outcomes(self):
            return {"clean": self.clean}

    a = {i: Rec(i % 2 == 0) for i in range(10)}
    b = {i: Rec(i % 3 == 0) for i in range(10)}
    (row,) = compare_samples(a, b).rows
    both = sum(a[i].clean and b[i].clean for i in range(10))
    neither = sum(not a[i].clean and not b[i].clean for i in range(10))
    assert row.diff_ci95 == newcombe_paired_ci(both, row.only_a, row.only_b, neither)


# ----------------------------------------------------------------------------------------------------------
# Smallest detectable difference (exact McNemar, alpha 0.05, power 0.8)
# ----------------------------------------------------------------------------------------------------------
def test_rejection_limit_is_the_mcnemar_test():
    for m in range(0, 61):
        k = _rejection_limit(m, 0.05)
        for j in range(m + 1):
            assert (mcnemar_p(j, m - j) <= 0.05) == (min(j, m - j) <= k), (m, j)
    assert [_rejection_limit(m, 0.05) for m in (5, 6, 9, 10)] == [-1, 0, 1, 1]


def _brute_power(n: int, psi: float, diff: float, alpha: float = 0.05) -> float:
    """Enumerate every (A only, B only, concordant) table of n images with its multinomial probability."""
    p_a, p_b = (psi + diff) / 2, (psi - diff) / 2
    total = 0.0
    for b in range(n + 1):
        for c in range(n - b + 1):
            if mcnemar_p(b, c) <= alpha:
                total += (math.factorial(n) / (math.factorial(b) * math.factorial(c) * math.factorial(n - b - c))
                          * p_a**b * p_b**c * (1 - psi) ** (n - b - c))
    return total


@pytest.mark.parametrize(("n", "psi", "diff"), [(12, 0.5, 0.2), (12, 0.5, -0.4), (15, 0.3, 0.0), (20, 0.8, 0.5),
                                                (9, 1.0, 0.6), (14, 0.25, 0.25)])
def test_mcnemar_power_equals_enumeration(n, psi, diff):
    assert mcnemar_power(n, psi, diff) == pytest.approx(_brute_power(n, psi, diff), abs=1e-12)


def test_min_detectable_difference_by_hand():
    # Every image discordant (psi = 1), n = 6: the exact test rejects only the 6:0 split (p = 2/64; 5:1 has
    # p = 14/64), so the power at pi = P(A wins a pair) is pi^6 + (1 - pi)^6 and the difference is 2 pi - 1.
    pi_lo, pi_hi = 0.5, 1.0
    for _ in range(200):
        mid = (pi_lo + pi_hi) / 2
        pi_lo, pi_hi = (mid, pi_hi) if mid**6 + (1 - mid) ** 6 < 0.8 else (pi_lo, mid)
    assert min_detectable_difference(6, 1.0) == pytest.approx(2 * pi_hi - 1, abs=1e-12)
    assert 2 * pi_hi - 1 == pytest.approx(2 * 0.8 ** (1 / 6) - 1, abs=2e-9)  # (1 - pi)^6 is about 2e-9
    # n = 5 can never reject (5:0 has p = 2/32 > 0.05), nor can half discordant pairs at n = 6 reach 0.8
    assert min_detectable_difference(5, 1.0) is None
    assert min_detectable_difference(6, 0.5) is None
    assert min_detectable_difference(1000, 0.0) is None


def test_min_detectable_difference_meets_the_power_and_shrinks_with_n():
    previous = 1.0
    for n in (50, 100, 256, 1000):
        d = min_detectable_difference(n, 0.2)
        assert d is not None and 0 < d < previous <= 1.0
        assert mcnemar_power(n, 0.2, d) >= 0.8 > mcnemar_power(n, 0.2, d * (1 - 1e-6))
        previous = d
    # at the same n, more disagreement between the runs hides a difference more
    assert min_detectable_difference(256, 0.1) < min_detectable_difference(256, 0.3)


def test_paired_row_min_detectable_uses_the_observed_discordance_with_a_stated_fallback():
    row = PairedRow("clean", 96, 30, 17, 13, 0, mcnemar_p(13, 0))
    assert row.min_detectable() == min_detectable_difference(96, 13 / 96)
    assert row.min_detectable(256) == min_detectable_difference(256, 13 / 96)
    agree = PairedRow("clean", 100, 40, 40, 0, 0, 1.0)
    assert agree.min_detectable(1000) == min_detectable_difference(1000, wilson_interval(0, 100)[1])


def test_min_detectable_difference_refuses_bad_designs():
    for args in ((-1, 0.2), (10, 1.5), (10, -0.1)):
        with pytest.raises(UsageError):
            min_detectable_difference(*args)
    with pytest.raises(UsageError):
        mcnemar_power(10, 0.2, 0.3)
