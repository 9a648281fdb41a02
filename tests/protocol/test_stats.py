"""The one percentile helper: nearest rank, always a sample, enough samples for a p99."""

from __future__ import annotations

import math

import pytest

from protocol.stats import enough_for, percentile


def test_nearest_rank_is_a_sample_and_not_the_max_with_enough_samples():
    values = [float(v) for v in range(1, 1001)]  # 1 .. 1000 shuffled order does not matter
    assert percentile(reversed(values), 0.99) == 990.0
    assert percentile(values, 0.5) == 500.0
    assert percentile(values, 1.0) == 1000.0
    assert percentile(range(1, 101), 0.99) == 99  # 0.99 * 100 is not rounded up to 100


def test_too_few_samples_make_the_p99_the_max():
    assert percentile(range(1, 51), 0.99) == 50
    assert enough_for(0.99) == 100 and percentile(range(1, enough_for(0.99) + 1), 0.99) < 100
    assert enough_for(0.999) == 1000


def test_empty_and_bad_q():
    assert math.isnan(percentile([], 0.5))
    assert percentile([], 0.5, default=0.0) == 0.0
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 0.0)
