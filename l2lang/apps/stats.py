"""The statistics of `l2lang eval` (docs/evaluation.md): Wilson intervals, exact McNemar, paired deltas."""

from __future__ import annotations

from math import comb, sqrt

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); (0, 1) when n = 0.

    The interval always holds the estimate: exactly 0 below at 0 successes and exactly 1 above at n
    (in floating point `centre - half` comes out as ±5e-17 there).
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if successes == n else max(p, min(1.0, centre + half))
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial test of b vs c at ½)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_delta(b: int, c: int, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Accuracy difference (B − A) on n paired items and its Wald 95 % interval.

    b: items only B got right, c: items only A got right; var = ((b + c) − (b − c)² / n) / n².
    """
    if n == 0:
        return 0.0, -1.0, 1.0
    delta = (b - c) / n
    half = z * sqrt(max(0.0, (b + c) - (b - c) ** 2 / n)) / n
    return delta, delta - half, delta + half
