"""The study's statistics, in one place: every interval and every paired test the report prints.

An accuracy measured on n images is a binomial proportion; its 95 % interval is Wilson's score
interval, which stays inside [0, 1] and keeps its coverage near 0 % and 100 % and on the small
splits where the normal approximation does not. Two models scored on the same images are
compared by McNemar's exact test on the images where exactly one of them is right: the images
both get right or both get wrong say nothing about which is better.

Ground layer: the standard library only, no torch, nothing from the package.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
ALPHA = 0.05


def wilson(acc: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion `acc` measured on n items;
    (nan, nan) when n is 0."""
    if not n:
        return (float("nan"), float("nan"))
    z2 = z * z
    centre = (acc + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(max(acc * (1 - acc), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the interval always holds the estimate itself (rounding could push an end past it)
    return (max(0.0, min(acc, centre - half)), min(1.0, max(acc, centre + half)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test: under 'both models are equally good', each of
    the only_a + only_b discordant images is a fair coin; the p-value is twice the smaller tail
    of Binomial(only_a + only_b, 1/2), capped at 1. No discordant images: p = 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class Paired:
    """Two models scored on the same n images."""
    n: int
    only_a: int   # images model A gets right and B wrong
    only_b: int   # images B gets right and A wrong
    p: float      # McNemar's exact two-sided p-value

    @property
    def gap(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.only_a - self.only_b) / self.n if self.n else float("nan")

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def paired(pred_a: Sequence[int], pred_b: Sequence[int], labels: Sequence[int]) -> Paired:
    """McNemar's comparison of two models' predictions on the same labelled images."""
    if not (len(pred_a) == len(pred_b) == len(labels)):
        raise ValueError(f"paired test needs predictions of the same images: "
                         f"{len(pred_a)}, {len(pred_b)} and {len(labels)} labels")
    only_a = only_b = 0
    for a, b, y in zip(pred_a, pred_b, labels):
        ra, rb = a == y, b == y
        only_a += ra and not rb
        only_b += rb and not ra
    return Paired(len(labels), only_a, only_b, mcnemar_exact(only_a, only_b))
