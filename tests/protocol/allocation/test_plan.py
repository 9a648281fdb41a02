"""The plan against independent oracles: scipy's HiGHS LP for capacity, KKT for the optimum."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.allocation.plan import (
    FULL,
    MIN_WEIGHT,
    UNITS_PER_W,
    MemberOffer,
    member_units,
    plan,
    to_units,
    transformer_capacity,
)

scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy (test extra) is the oracle")
np = pytest.importorskip("numpy")


def random_instance(rng: random.Random) -> tuple[list[MemberOffer], dict[str, float], float]:
    n = rng.randint(1, 60)
    tfs = [f"tf{j}" for j in range(rng.randint(1, 4))]
    offers = []
    for i in range(n):
        limit = 0.0 if rng.random() < 0.05 else rng.choice([rng.uniform(0, 11_000), float(rng.randint(0, 7400))])
        weight = rng.uniform(0.5, 60_000) if rng.random() > 0.03 else 0.0
        offers.append(MemberOffer(f"node-{i:03d}", rng.choice(tfs), limit, weight))
    headroom = {t: rng.uniform(0, 150_000) for t in tfs if rng.random() < 0.6}
    total = sum(o.limit_w for o in offers)
    deficit = rng.uniform(0, 1.3 * total + 10)
    if rng.random() < 0.2:
        deficit = round(deficit, 1)
    return offers, headroom, deficit


def lp_capacity_units(offers: list[MemberOffer], headroom: dict[str, float]) -> float:
    """max sum x, 0 <= x_i <= u_i (units), per-transformer sum <= C_k: HiGHS."""
    n = len(offers)
    tids = sorted(headroom)
    a_ub = np.zeros((len(tids), n))
    for row, t in enumerate(tids):
        for i, o in enumerate(offers):
            if o.transformer_id == t:
                a_ub[row, i] = 1.0
    b_ub = np.array([to_units(headroom[t]) for t in tids], dtype=float)
    bounds = [(0, to_units(o.limit_w) if o.weight >= MIN_WEIGHT else 0) for o in offers]
    res = scipy_optimize.linprog(
        -np.ones(n), A_ub=a_ub if tids else None, b_ub=b_ub if tids else None,
        bounds=bounds, method="highs",
    )
    assert res.status == 0
    return float(-res.fun)


def check_kkt(offers: list[MemberOffer], headroom: dict[str, float], p) -> None:  # type: ignore[no-untyped-def]
    """x_i = min(w_i L_k, u_i); L_k equal across transformers unless k is full."""
    levels = {lv.transformer_id: lv.level for lv in p.levels}
    finite = [lv for lv in levels.values() if lv != FULL]
    lam = max(finite, default=math.inf)
    for lv in p.levels:
        t = lv.transformer_id
        members = [o for o in offers if o.transformer_id == t]
        if lv.level == FULL:
            # every member gives its whole limit
            for o in members:
                if o.weight >= MIN_WEIGHT:
                    assert p.shares_units.get(o.node_id, 0) == to_units(o.limit_w)
            continue
        if lv.level < lam * (1 - 1e-9):
            # a lower level than the global one only where the transformer is full
            planned = sum(p.shares_units.get(o.node_id, 0) for o in members)
            full = min(to_units(headroom[t]), sum(to_units(o.limit_w) for o in members if o.weight >= MIN_WEIGHT))
            # full up to rounding: the units may land one each elsewhere (largest remainder)
            assert t in headroom and full - len(members) <= planned <= full
        for o in members:
            u = to_units(o.limit_w) if o.weight >= MIN_WEIGHT else 0
            x = p.shares_units.get(o.node_id, 0)
            exact = min(o.weight * lv.level, u)
            assert abs(x - exact) < 1.0 + 1e-6  # one rounding unit at most
            assert 0 <= x <= u


def bisect_level(offers, headroom, target_units):  # type: ignore[no-untyped-def]
    """An independent level: bisect g(l) = sum_k min(C_k, sum_i min(w_i l, u_i)) = target."""
    w = np.array([o.weight for o in offers])
    u = np.array([to_units(o.limit_w) if o.weight >= MIN_WEIGHT else 0 for o in offers], dtype=float)
    tf = [o.transformer_id for o in offers]

    def g(level: float) -> float:
        x = np.minimum(w * level, u)
        total = 0.0
        for t in set(tf):
            s = float(sum(x[i] for i in range(len(tf)) if tf[i] == t))
            total += min(s, to_units(headroom[t])) if t in headroom else s
        return total

    lo, hi = 0.0, 1.0
    while g(hi) < target_units:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if g(mid) < target_units:
            lo = mid
        else:
            hi = mid
    return hi


def test_oracle_1000_random_instances() -> None:
    rng = random.Random(20261203)
    for _ in range(1000):
        offers, headroom, deficit = random_instance(rng)
        p = plan(offers, deficit, headroom)
        cap = lp_capacity_units(offers, headroom)
        want = round(deficit * UNITS_PER_W)
        total = sum(p.shares_units.values())
        # exact units: all of D when capacity suffices, else all of the capacity
        assert total == min(want, round(cap))
        assert p.shortfall_w == pytest.approx(max(0, want - round(cap)) / UNITS_PER_W)
        # no bound broken
        for o in offers:
            assert 0 <= p.shares_units.get(o.node_id, 0) <= to_units(o.limit_w)
        for t, h in headroom.items():
            assert sum(p.shares_units.get(o.node_id, 0) for o in offers if o.transformer_id == t) <= to_units(h)
        check_kkt(offers, headroom, p)
        # the global level against an independent bisection, within 1e-6 relative
        if want < round(cap) and want > 0:
            ref = bisect_level(offers, headroom, want)
            finite = [lv.level for lv in p.levels if lv.level != FULL]
            assert max(finite) == pytest.approx(ref, rel=1e-6)
        # members derive the same shares from their own offers
        by = {lv.transformer_id: lv for lv in p.levels}
        for o in offers:
            assert member_units(o.node_id, o.limit_w, o.weight, by[o.transformer_id]) == p.shares_units.get(o.node_id, 0)


def test_capacity_matches_lp() -> None:
    rng = random.Random(7)
    for _ in range(300):
        offers, headroom, _ = random_instance(rng)
        offers = [o for o in offers if o.weight >= MIN_WEIGHT]
        if not offers:
            continue
        cap = transformer_capacity([(o.transformer_id, to_units(o.limit_w) / 10) for o in offers], headroom)
        assert cap.total_w * 10 == pytest.approx(lp_capacity_units(offers, headroom), abs=1e-3 + to_units(1) * len(headroom))
        assert math.isclose(sum(r.planned_w for r in cap.transformers), cap.total_w, rel_tol=1e-12, abs_tol=1e-9)


def test_capacity_breakdown_per_transformer() -> None:
    cap = transformer_capacity([("a", 7000.0), ("a", 7000.0), ("b", 5000.0), ("c", 0.0)], {"a": 10_000.0})
    assert cap.total_w == 15_000.0
    rows = {r.transformer_id: r for r in cap.transformers}
    assert rows["a"].planned_w == 10_000.0 and rows["a"].available_w == 14_000.0 and rows["a"].binding
    assert rows["b"].planned_w == 5000.0 and rows["b"].headroom_w is None and not rows["b"].binding
    assert rows["c"].planned_w == 0.0


def test_permutation_invariance() -> None:
    rng = random.Random(3)
    for _ in range(200):
        offers, headroom, deficit = random_instance(rng)
        p = plan(offers, deficit, headroom)
        shuffled = offers[:]
        rng.shuffle(shuffled)
        q = plan(shuffled, deficit, headroom)
        assert q.levels == p.levels and dict(q.shares_units) == dict(p.shares_units)


def test_equal_weights_split_evenly_and_exactly() -> None:
    offers = [MemberOffer(f"n{i}", "t", 10_000.0, 1.0) for i in range(3)]
    p = plan(offers, 1000.0)
    assert sorted(p.shares_units.values()) == [3333, 3333, 3334]
    assert sum(p.shares_units.values()) == 10_000


def test_transformer_headroom_moves_load_elsewhere() -> None:
    offers = [MemberOffer("a1", "A", 10_000.0, 1.0), MemberOffer("a2", "A", 10_000.0, 1.0),
              MemberOffer("b1", "B", 10_000.0, 1.0)]
    p = plan(offers, 15_000.0, {"A": 6_000.0})
    assert p.share_w("a1") + p.share_w("a2") == 6_000.0
    assert p.share_w("b1") == 9_000.0
    assert p.shortfall_w == 0.0


def test_shortfall_when_capacity_is_short() -> None:
    offers = [MemberOffer("a", "A", 1_000.05, 1.0), MemberOffer("b", "B", 2_000.0, 1.0)]
    p = plan(offers, 10_000.0, {"B": 500.0})
    assert p.share_w("a") == 1_000.0 and p.share_w("b") == 500.0
    assert p.shortfall_w == 8_500.0


def test_duplicate_member_is_a_local_error() -> None:
    from protocol.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        plan([MemberOffer("a", "t", 1.0, 1.0), MemberOffer("a", "t", 1.0, 1.0)], 1.0)


offer_st = st.builds(
    MemberOffer,
    node_id=st.text("abcdef0123", min_size=1, max_size=6),
    transformer_id=st.sampled_from(["t1", "t2", "t3"]),
    limit_w=st.floats(0, 20_000, allow_nan=False),
    weight=st.floats(0, 1e6, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    offers=st.lists(offer_st, max_size=30, unique_by=lambda o: o.node_id),
    deficit=st.floats(0, 400_000, allow_nan=False),
    headroom=st.dictionaries(st.sampled_from(["t1", "t2", "t3"]), st.floats(0, 100_000, allow_nan=False)),
)
def test_properties(offers: list[MemberOffer], deficit: float, headroom: dict[str, float]) -> None:
    p = plan(offers, deficit, headroom)
    cap = transformer_capacity(
        [(o.transformer_id, to_units(o.limit_w) / 10 if o.weight >= MIN_WEIGHT else 0.0) for o in offers],
        {t: to_units(h) / 10 for t, h in headroom.items()},
    )
    total = sum(p.shares_units.values())
    assert total == min(round(deficit * 10), round(cap.total_w * 10))
    for o in offers:
        assert 0 <= p.shares_units.get(o.node_id, 0) <= to_units(o.limit_w)
    for t, h in headroom.items():
        assert sum(p.shares_units.get(o.node_id, 0) for o in offers if o.transformer_id == t) <= to_units(h)
    assert dict(plan(list(reversed(offers)), deficit, headroom).shares_units) == dict(p.shares_units)
