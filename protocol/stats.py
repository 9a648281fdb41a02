"""The one percentile every figure uses (benchmarks, tick lateness, the control loop).

``percentile(values, q)`` is the nearest-rank percentile: the smallest sample that at least
a fraction ``q`` of the samples are less than or equal to (``ordered[ceil(q * n) - 1]``).
It is always one of the samples, never an interpolation, so "p99 = 12 ms" means that 99 %
of the samples took 12 ms or less and at least one took exactly 12 ms. With fewer than
``1 / (1 - q)`` samples the p-q is the maximum: take enough samples for the percentile you
report (``enough_for(q)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float, *, default: float = math.nan) -> float:
    """Nearest-rank ``q``-percentile (``0 < q <= 1``) of ``values``; ``default`` when empty."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"percentile q must be in (0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return default
    rank = math.ceil(q * len(ordered) - 1e-9)  # tolerate 0.99 * 100 = 98.99999999999999 + eps
    return ordered[min(len(ordered), max(1, rank)) - 1]


def enough_for(q: float) -> int:
    """The fewest samples for which the ``q``-percentile is not simply the maximum."""
    return math.ceil(1.0 / (1.0 - q) - 1e-9) if q < 1.0 else 1
