"""Mean, spread and paired intervals over seeds, without scipy.

A comparison trains every variant with the same seeds, and the seed fixes the training
subset, the validation split, the batch order and the first member's initialization. So the
natural unit is the per-seed *paired* difference ``d_s = variant_s - baseline_s``; its mean
gets a two-sided Student-t interval with ``n - 1`` degrees of freedom:
``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)``. With 3 seeds ``t = 4.303``: an interval
excludes 0 only for a difference large against its own spread.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

INTERVAL = ("two-sided 95% Student-t interval of the mean paired difference over seeds "
            "(n - 1 degrees of freedom)")

# t_{0.975, df} for df = 1..30 (the usual table); beyond it the Cornish-Fisher expansion
# of t in powers of 1/df around the normal quantile (Abramowitz & Stegun 26.7.5), within
# 1e-4 of the exact value from df = 10 on.
_Z975 = 1.959963984540054
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(g / df ** (k + 1) for k, g in enumerate(terms))


@dataclass(frozen=True)
class Paired:
    mean: float
    low: float | None  # None with fewer than 2 pairs: no interval
    high: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def percent_mean_std(pair: Sequence[float]) -> str:
    """``(mean, std)`` of fractions as the report writes them: "61.25 ± 0.80"."""
    return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"


def paired_interval(differences: Sequence[float]) -> Paired:
    """The mean of per-seed differences and its 95% t interval (see the module docstring)."""
    d = list(differences)
    if not d:
        raise ValueError("no paired differences")
    mean, sd = mean_std(d)
    if len(d) < 2:
        return Paired(mean, None, None, len(d))
    half = t_quantile_975(len(d) - 1) * sd / math.sqrt(len(d))
    return Paired(mean, mean - half, mean + half, len(d))
