"""Sampling error of the rates we report: a rate over n prompts is a binomial proportion.

Kept at the bottom of the package (no torch, no mergekit) so that evaluation, the sweep and its
plots share one definition of "within noise".
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` of ``n`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point at
    0/n or n/n, which are common here (an aligned model refusing every harmful prompt).
    ``n == 0`` gives the uninformative (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, not 1e-18
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: the plain reading of "within noise" of each other."""
    return a[0] <= b[1] and b[0] <= a[1]
