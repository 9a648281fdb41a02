"""The allocation seam: nested water-filling, exact sums, caps, transformers' headroom."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sims.policy import allocate, product_plan, waterfill


def test_waterfill_levels_and_saturation() -> None:
    shares = waterfill(12.0, np.array([1.0, 2, 3, 4, 5, 6]), np.ones(6))
    assert shares == pytest.approx([1, 2, 2.25, 2.25, 2.25, 2.25])
    assert waterfill(100.0, np.array([1.0, 2.0]), np.ones(2)) == pytest.approx([1, 2])
    assert waterfill(0.0, np.array([1.0, 2.0]), np.ones(2)) == pytest.approx([0, 0])
    assert waterfill(3.0, np.array([0.0, 5.0, 5.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx([0, 1, 2])


def test_a_full_transformer_is_held_at_its_headroom_and_the_rest_rises() -> None:
    limits = np.array([1.0, 2, 3, 4, 5, 6])
    tx = np.array([0, 0, 0, 1, 1, 1])
    shares = allocate(12.0, limits, np.ones(6), tx, np.array([2.0, np.inf]))
    assert shares[:3].sum() == pytest.approx(2.0)
    assert shares.sum() == pytest.approx(12.0)
    everyone_full = allocate(100.0, limits, np.ones(6), tx, np.array([2.0, 4.0]))
    assert everyone_full.sum() == pytest.approx(6.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 10_000), st.integers(0, 3)), min_size=1, max_size=30),
    st.floats(0, 200_000),
    st.lists(st.floats(0, 50_000), min_size=4, max_size=4),
)
def test_allocation_invariants(nodes: list[tuple[float, int]], deficit: float, headroom: list[float]) -> None:
    limits = np.array([x for x, _ in nodes])
    tx = np.array([t for _, t in nodes], dtype=np.int64)
    room = np.array(headroom)
    shares = allocate(deficit, limits, np.ones(len(nodes)), tx, room)
    assert np.all(shares >= -1e-9) and np.all(shares <= limits + 1e-6)
    per_tx = np.bincount(tx, weights=shares, minlength=4)
    assert np.all(per_tx <= room + 1e-6)
    reachable = sum(min(room[t], limits[tx == t].sum()) for t in range(4))
    assert shares.sum() == pytest.approx(min(deficit, reachable), rel=1e-9, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 10_000), st.floats(1, 80_000), st.integers(0, 3)), min_size=1, max_size=40),
    st.floats(0, 300_000),
    st.lists(st.one_of(st.floats(0, 60_000), st.just(float("inf"))), min_size=4, max_size=4),
)
def test_the_fleets_allocation_is_the_products_plan(
    nodes: list[tuple[float, float, int]], deficit: float, headroom: list[float]
) -> None:
    """The vectorised ``allocate`` the fleet steps with gives the shares of the product's own
    ``protocol.allocation.plan``: the same optimum, which the product then expresses in 0.1 W
    units (limits and headroom floored to 0.1 W, largest-remainder rounding): given the
    floored limits, every share within 0.1 W, the sums within 0.1 W."""
    limits = np.array([x for x, _, _ in nodes])
    weights = np.array([w for _, w, _ in nodes])
    tx = np.array([t for _, _, t in nodes], dtype=np.int64)
    room = np.array(headroom)
    product = product_plan(deficit, limits, weights, tx, room)
    ours = allocate(round(deficit * 10) / 10, np.floor(limits * 10 + 1e-6) / 10, weights, tx,
                    np.floor(room * 10 + 1e-6) / 10)
    assert np.abs(ours - product).max() <= 0.1 + 1e-6
    assert abs(ours.sum() - product.sum()) <= 0.1 + 1e-6
