"""The comparison's statistics against independent computations (scipy, brute force)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nemotron_eval.report.stats import mcnemar_exact, paired_bootstrap, wilson_interval


@pytest.mark.parametrize(("value", "n"), [(0.5, 10), (0.0, 20), (1.0, 3), (0.3, 57), (0.123, 1000)])
def test_wilson_interval_matches_scipy(value: float, n: int) -> None:
    k = round(value * n)
    low, high = wilson_interval(k / n, n)
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_interval_without_items() -> None:
    assert wilson_interval(0.5, 0) is None


@pytest.mark.parametrize(("gains", "losses"), [(0, 5), (1, 9), (7, 3), (12, 12), (0, 1), (40, 61), (300, 360)])
def test_mcnemar_exact_matches_scipy_binomial_test(gains: int, losses: int) -> None:
    expected = scipy_stats.binomtest(gains, gains + losses, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(gains, losses) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(gains, losses) == mcnemar_exact(losses, gains)


def test_mcnemar_exact_edges() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == 2 / 32
    assert mcnemar_exact(5000, 5000) == 1.0  # large counts: integer arithmetic, no overflow
    assert 0 < mcnemar_exact(4000, 6000) < 1e-80


def test_paired_bootstrap_is_reproducible_and_seeded() -> None:
    rng = random.Random(0)
    diffs = [rng.choice([-1, 0, 0, 0, 1, 1]) for _ in range(200)]
    first = paired_bootstrap(diffs, seed=7)
    assert paired_bootstrap(diffs, seed=7) == first
    assert paired_bootstrap(list(reversed(diffs)), seed=7) == first  # a multiset: item order does not matter
    assert paired_bootstrap(diffs, seed=8) != first
    low, high = first
    assert low < sum(diffs) / len(diffs) < high


def test_paired_bootstrap_equals_resampling_items() -> None:
    """The multinomial shortcut has the distribution of resampling items with replacement: compare its
    interval with a brute-force item bootstrap (many draws, so the two agree to Monte Carlo error)."""
    rng = random.Random(1)
    diffs = np.array([rng.choice([-1, 0, 0, 1, 1]) for _ in range(80)], dtype=float)
    gen = np.random.default_rng(123)
    brute = gen.choice(diffs, size=(40_000, len(diffs)), replace=True).mean(axis=1)
    low, high = np.quantile(brute, [0.025, 0.975])
    fast = paired_bootstrap(diffs.tolist(), seed=5, draws=40_000)
    assert fast is not None
    se = diffs.std() / math.sqrt(len(diffs))
    assert fast[0] == pytest.approx(low, abs=0.15 * se) and fast[1] == pytest.approx(high, abs=0.15 * se)


def test_paired_bootstrap_degenerate() -> None:
    assert paired_bootstrap([], seed=1) is None
    assert paired_bootstrap([0, 0, 0], seed=1) == (0.0, 0.0)
    assert paired_bootstrap([1, 1], seed=1) == (1.0, 1.0)
