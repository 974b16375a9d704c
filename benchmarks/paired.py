"""Paired comparisons of two methods scored on the same cases, training seeds and holes.

Seeds of one case share its anatomy and its holes, so they are not independent samples: the difference of
a pair is first averaged over seeds per case, and the confidence interval is Student's t over cases.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats


class PairedDifference(NamedTuple):
    """Mean of ``a - b`` and its two-sided confidence interval over ``n`` cases."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Mean difference ``a - b`` and its t-interval over cases.

    Args:
        a: scores of one method, ``(cases, ...)``: every further axis (seeds, patterns, fractions) is
            averaged per case, NaNs (a class absent from a case) left out.
        b: the other method's scores on the same cases, seeds and holes, same shape.
        confidence: coverage of the interval.

    Example:
        >>> a = np.array([[0.80, 0.82], [0.70, 0.71], [0.90, 0.92]])  # 3 cases, 2 seeds
        >>> b = a - np.array([[0.01], [0.03], [0.02]])
        >>> print(paired_difference(a, b))
        +0.020 [-0.005, +0.045]
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape, got {a.shape} and {b.shape}")
    diff = (a - b).reshape(a.shape[0], -1)
    per_case = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in diff])
    per_case = per_case[np.isfinite(per_case)]
    n = len(per_case)
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0)
    mean = float(per_case.mean())
    if n == 1:
        return PairedDifference(mean, float("-inf"), float("inf"), 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * per_case.std(ddof=1) / np.sqrt(n))
    return PairedDifference(mean, mean - half, mean + half, n)
