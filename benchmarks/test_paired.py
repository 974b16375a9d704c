"""Paired differences: the interval is Student's t over cases of seed-averaged differences."""

import numpy as np
import pytest
from scipy import stats

from benchmarks.paired import paired_difference


def test_matches_a_t_interval_over_seed_averaged_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.05, (8, 3))
    b = a - 0.03 + rng.normal(0, 0.01, (8, 3))
    d = paired_difference(a, b)
    per_case = (a - b).mean(1)
    lo, hi = stats.t.interval(0.95, 7, loc=per_case.mean(), scale=stats.sem(per_case))
    assert d.n == 8 and d.mean == pytest.approx(per_case.mean())
    assert (d.low, d.high) == pytest.approx((lo, hi))
    assert d.low > 0  # a clear gain excludes 0


def test_seeds_are_not_counted_as_cases_and_nans_are_left_out():
    a = np.array([[0.9, 0.7], [0.8, np.nan], [np.nan, np.nan]])
    b = np.zeros_like(a)
    d = paired_difference(a, b)
    assert d.n == 2 and d.mean == pytest.approx((0.8 + 0.8) / 2)


def test_no_difference_straddles_zero_and_shapes_must_match():
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.05, (10, 3))
    b = a[rng.permutation(10)]
    d = paired_difference(a, b)
    assert d.low < 0 < d.high
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(a, b[:5])
