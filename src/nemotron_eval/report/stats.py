"""The statistics of a comparison, small and exact where they can be.

- `wilson_interval`: a score's 95% interval. Benchmark scores here are proportions of items right; the Wilson
  interval stays inside [0, 1] and keeps sensible width at the small sample counts local runs use (10-20
  items), where the normal approximation (value +- 1.96 stderr) gives [0, 0] for a score of 0.
- `paired_bootstrap`: the interval of a mean paired difference. Resampling items with replacement only
  changes how often each distinct per-item difference occurs, so the resampled counts are drawn from a
  multinomial over the distinct values: the same distribution as resampling the items, in O(draws) whatever
  the number of items, and reproducible from the seed alone.
- `mcnemar_exact`: is one model right on more of the items where the two disagree than chance would give?
  The exact two-sided binomial test on the discordant pairs, computed with integers (no approximation at
  small counts, no overflow at large ones).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any


def z_value(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(value: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion `value` observed on `n` items; None without items."""
    if n <= 0 or not 0.0 <= value <= 1.0:
        return None
    z = z_value(confidence)
    denom = 1 + z * z / n
    centre = (value + z * z / (2 * n)) / denom
    half = z * math.sqrt(value * (1 - value) / n + z * z / (4 * n * n)) / denom
    # exact at 0 and 1 (rounding leaves 1e-17 where the bound is the observed value itself)
    return max(0.0, min(value, centre - half)), min(1.0, max(value, centre + half))


def _resampled_means(diffs: Sequence[float], rng: Any, draws: int) -> Any:
    """`draws` means of `diffs` resampled with replacement (one multinomial draw over the distinct values)."""
    import numpy as np

    counts = Counter(float(d) for d in diffs)
    values = np.array(sorted(counts), dtype=np.float64)
    probs = np.array([counts[v] / len(diffs) for v in sorted(counts)], dtype=np.float64)
    return rng.multinomial(len(diffs), probs, size=draws) @ values / len(diffs)


def paired_bootstrap(
    diffs: Sequence[float], *, seed: int, draws: int = 10_000, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile interval of the mean of `diffs` (per-item b - a) under resampling of items; None if empty."""
    import numpy as np

    n = len(diffs)
    if n == 0:
        return None
    if len(set(diffs)) == 1:
        return float(diffs[0]), float(diffs[0])
    means = _resampled_means(diffs, np.random.default_rng(seed), draws)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def mcnemar_exact(gains: int, losses: int) -> float:
    """Two-sided exact McNemar p-value for `gains` (b right, a wrong) and `losses` (a right, b wrong) items."""
    n = gains + losses
    if n == 0:
        return 1.0
    k = min(gains, losses)
    term, tail = 1, 1  # C(n, 0); each next binomial coefficient from the last: O(k) exact integer steps
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def stratified_bootstrap(
    strata: Sequence[Sequence[float]], *, seed: int, draws: int = 10_000, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """The mean over strata (tasks) of each stratum's mean paired difference, resampling items within each
    stratum: its percentile interval and a two-sided bootstrap p-value (twice the smaller share of resampled
    means on either side of 0). None when a stratum is empty. Each stratum is drawn as in `paired_bootstrap`."""
    import numpy as np

    if not strata or any(len(s) == 0 for s in strata):
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for diffs in strata:
        total += _resampled_means(diffs, rng, draws)
    means = total / len(strata)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(low), float(high), p
