"""The statistics module against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from transferlab.stats import mcnemar_exact, paired, wilson


def test_wilson_by_hand():
    # p = 0.9, n = 1000: centre (0.9 + z²/2000) / (1 + z²/1000), half-width as in Wilson (1927)
    z = 1.959963984540054
    centre = (0.9 + z * z / 2000) / (1 + z * z / 1000)
    half = z * math.sqrt(0.9 * 0.1 / 1000 + z * z / 4e6) / (1 + z * z / 1000)
    assert wilson(0.9, 1000) == pytest.approx((centre - half, centre + half))
    assert wilson(0.9, 1000) == pytest.approx((0.8798, 0.9171), abs=1e-4)


def test_wilson_at_the_edges():
    lo, hi = wilson(1.0, 24)     # 24 of 24: the normal approximation would say 100-100 %
    assert hi == 1.0 and lo == pytest.approx(24 / (24 + 1.959963984540054 ** 2))
    lo, hi = wilson(0.0, 10)
    assert lo == 0.0 and 0 < hi < 0.31
    assert all(math.isnan(v) for v in wilson(0.5, 0))


def test_mcnemar_exact_by_hand():
    # 1 vs 6 discordant images: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128 = 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    # 0 vs 10: 2 / 1024
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_counts_only_the_images_where_one_is_right():
    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    a = [0, 1, 2, 3, 4, 5, 0, 0]   # 6 right
    b = [0, 1, 0, 0, 0, 0, 6, 0]   # 3 right
    r = paired(a, b, labels)
    assert (r.n, r.only_a, r.only_b) == (8, 4, 1)
    assert r.p == pytest.approx(2 * (1 + 5) / 32) and r.gap == pytest.approx(3 / 8)
    assert not r.significant
    with pytest.raises(ValueError, match="same images"):
        paired(a, b[:-1], labels)
