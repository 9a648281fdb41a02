"""The allocation plan: split a discharge deficit among members, exact to 0.1 W.

Theory of operation
-------------------
Given each member's discharge limit ``u_i``, weight ``w_i`` and transformer ``k`` with
headroom ``C_k``, the plan solves

    minimise  sum(x_i^2 / (2 w_i))
    s.t.      sum(x_i) = D,  0 <= x_i <= u_i,  sum over transformer k of x_i <= C_k.

Its optimality (KKT) conditions say every member's share is ``x_i = min(w_i L_k, u_i)``
where ``L_k = min(lambda, mu_k)`` is its transformer's *water level*: ``lambda`` is the global
level and ``mu_k`` the level at which transformer ``k`` fills to its headroom (infinite when
the members under it cannot reach it). So the whole plan is one number per transformer, and
a member derives its own share from its own limit and weight: that is what lets a PLAN fit
one datagram whatever the number of members (``protocol.allocation.messages``).

Everything runs in integer units of 0.1 W (``UNIT_W``): limits and headrooms are floored to
units (a member is never asked for more than it offered), the deficit is rounded. Levels are
found by a sweep over the sorted breakpoints (``u_i / w_i`` and ``mu_k``): O(N log N).

Exact sums: shares are rounded by the largest-remainder method. Each member's share floors
to whole units, and the units still missing are handed one each to the members with the
largest remainder ``(frac, key)`` (``key`` a 64-bit hash of the node id), transformer by
transformer within its room. The last key given a unit in each transformer is the *cut*,
carried with the level: a member adds one unit when its own ``(frac, key) >= cut`` and it is
below its limit. The proposer computes every share with that same rule (``member_units``),
so what members derive is, bit for bit, what the plan sums to: exactly ``D`` when capacity
suffices, else all capacity (the shortfall is reported).

Order independence: members are put in a canonical order (by node id) before any floating
point sum, so the result depends only on the set of offers, not the order they came in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

import attrs

from protocol import codec
from protocol.errors import LocalProtocolError

UNIT_W = 0.1
UNITS_PER_W = 10
FULL = -1.0  # level meaning "every member under this transformer gives its whole limit"
NO_CUT = 2.0  # a cut no remainder reaches (remainders are < 1)
MIN_WEIGHT = 1e-6  # a weight below this counts as 0 (keeps levels well conditioned)
_EPS_UNITS = 1e-6  # tolerance when turning watts into units (0.3 * 10 is 3.0000000000000004)


def to_units(watts: float) -> int:
    """Watts -> whole 0.1 W units, floored (never more than offered)."""
    if not math.isfinite(watts) or watts <= 0:
        return 0
    return math.floor(watts * UNITS_PER_W + _EPS_UNITS)


def deficit_units(watts: float) -> int:
    """The deficit in units, rounded to the nearest 0.1 W."""
    if not math.isfinite(watts) or watts <= 0:
        return 0
    return round(watts * UNITS_PER_W)


def node_key(node_id: str) -> int:
    """The tie-break key of a member (a 64-bit hash of its id), known to it and the proposer."""
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big")


@attrs.frozen
class MemberOffer:
    """What the plan knows of one member: its discharge limit and weight, under a transformer."""

    node_id: str
    transformer_id: str
    limit_w: float  # the tightest of its clamps, now
    weight: float  # default: energy above the minimum SoC (Wh)


@attrs.frozen
class Level:
    """One transformer's water level and rounding cut: all a member needs to find its share.

    Also a wire value (inside ``messages.Plan``): id, level, cut as a msgpack array.
    """

    transformer_id: str = codec.text(64)
    level: float = codec.number(-1.0)  # L_k in units per unit of weight; FULL: whole limit
    cut_frac: float = codec.number(0.0, NO_CUT, default=NO_CUT)
    cut_key: int = codec.integer(0, 2**64 - 1, default=0)


@attrs.frozen
class TransformerShare:
    transformer_id: str
    headroom_w: float | None  # None: not constrained
    available_w: float  # sum of members' limits under it
    planned_w: float
    binding: bool  # the plan filled it to its headroom


@attrs.frozen
class Plan:
    deficit_w: float
    planned_w: float
    shortfall_w: float
    levels: tuple[Level, ...]
    shares_units: Mapping[str, int]  # node id -> 0.1 W units
    transformers: tuple[TransformerShare, ...]

    def share_w(self, node_id: str) -> float:
        return self.shares_units.get(node_id, 0) / UNITS_PER_W

    def level_of(self, transformer_id: str) -> Level | None:
        for lv in self.levels:
            if lv.transformer_id == transformer_id:
                return lv
        return None


def _continuous(weight: float, limit_units: int, level: float) -> float:
    """The member's real-valued share in units; the same expression wherever it is computed."""
    if limit_units <= 0 or not weight >= MIN_WEIGHT or not math.isfinite(weight):
        return 0.0
    if level == FULL:
        return float(limit_units)
    return min(weight * level, float(limit_units))


def member_units(node_id: str, limit_w: float, weight: float, level: Level) -> int:
    """A member's share in 0.1 W units from its own offer and its transformer's level."""
    limit = to_units(limit_w)
    x = _continuous(weight, limit, level.level)
    whole = min(math.floor(x), limit)
    frac = x - whole
    if whole < limit and weight >= MIN_WEIGHT and (frac, node_key(node_id)) >= (level.cut_frac, level.cut_key):
        whole += 1
    return whole


@attrs.frozen
class CapacityBreakdown:
    """Transformer-aware capacity: each transformer counts at most its headroom."""

    total_w: float
    transformers: tuple[TransformerShare, ...]


def transformer_capacity(
    offers: Iterable[tuple[str, float]], headroom_w: Mapping[str, float]
) -> CapacityBreakdown:
    """sum over transformers of min(C_k, sum u_i), with the per-transformer breakdown.

    ``offers`` are (transformer id, discharge limit W); a transformer absent from
    ``headroom_w`` is not constrained.
    """
    avail: dict[str, float] = {}
    for tid, limit in offers:
        if math.isfinite(limit) and limit > 0:
            avail[tid] = avail.get(tid, 0.0) + limit
        else:
            avail.setdefault(tid, 0.0)
    rows = []
    total = 0.0
    for tid in sorted(avail):
        head = headroom_w.get(tid)
        a = avail[tid]
        counted = a if head is None else max(0.0, min(head, a))
        total += counted
        rows.append(TransformerShare(tid, head, a, counted, head is not None and a > head))
    return CapacityBreakdown(total, tuple(rows))


def _fill_level(members: list[tuple[float, int]], target: int) -> float:
    """The level at which sum(min(w L, u)) reaches ``target`` (units); members (w, u), w > 0."""
    pts = sorted(members, key=lambda m: m[1] / m[0])
    slope = math.fsum(w for w, _ in pts)
    capped = 0.0
    for w, u in pts:
        b = u / w
        if capped + slope * b >= target:
            break
        capped += u
        slope -= w
    if slope <= 0:
        return math.inf
    return (target - capped) / slope


def plan(
    offers: Iterable[MemberOffer],
    deficit_w: float,
    headroom_w: Mapping[str, float] | None = None,
) -> Plan:
    """Split ``deficit_w`` among ``offers`` (see the module docstring). Pure and deterministic."""
    headroom_w = headroom_w or {}
    members = sorted(offers, key=lambda o: o.node_id)
    seen: set[str] = set()
    for m in members:
        if m.node_id in seen:
            raise LocalProtocolError(f"member {m.node_id!r} offered twice")
        seen.add(m.node_id)
    by_tf: dict[str, list[tuple[MemberOffer, int]]] = {}
    for m in members:
        by_tf.setdefault(m.transformer_id, []).append((m, to_units(m.limit_w)))
    tids = sorted(by_tf)
    cap_units: dict[str, int] = {}
    mu: dict[str, float] = {}
    active: dict[str, list[tuple[float, int]]] = {}
    for tid in tids:
        act = [(m.weight, u) for m, u in by_tf[tid] if u > 0 and math.isfinite(m.weight) and m.weight >= MIN_WEIGHT]
        active[tid] = act
        total = sum(u for _, u in act)
        head = headroom_w.get(tid)
        c = total if head is None else min(total, to_units(head))
        cap_units[tid] = c
        mu[tid] = math.inf if c >= total else _fill_level(act, c)
    capacity = sum(cap_units.values())
    want = deficit_units(deficit_w)
    target = min(want, capacity)

    # global level: sweep g(l) = sum_k f_k(min(l, mu_k)). Member i grows with slope w_i until
    # t_i = min(u_i / w_i, mu_k); the slope of each segment is a suffix sum (no subtraction,
    # so a tiny weight beside large ones is not lost to cancellation).
    lam = math.inf
    if target < capacity:
        ends: list[tuple[float, float, int]] = []  # (t_i, w_i, contribution when capped)
        for tid in tids:
            for w, u in active[tid]:
                b = u / w
                ends.append((b, w, u) if b < mu[tid] else (mu[tid], w, -1))
        ends.sort(key=lambda e: e[0])
        n = len(ends)
        suffix = [0.0] * (n + 1)
        for j in range(n - 1, -1, -1):
            suffix[j] = suffix[j + 1] + ends[j][1]
        g = 0.0  # g at ``at``
        at = 0.0
        lam = math.nan
        for j, (t, _w, _u) in enumerate(ends):
            nxt = g + suffix[j] * (t - at)
            if nxt >= target:
                lam = at + (target - g) / suffix[j]
                break
            g, at = nxt, t
        if math.isnan(lam):  # float round-off at the very end of the sweep
            lam = at
    levels_real: dict[str, float] = {}
    for tid in tids:
        lv = min(lam, mu[tid])
        levels_real[tid] = FULL if math.isinf(lv) else lv

    # largest remainder, transformer by transformer within its room
    rows: list[tuple[float, int, str, str, int]] = []  # (frac, key, node, tid, whole)
    derived: list[tuple[MemberOffer, int, int, float, int | None]] = []  # key None: no +1
    whole_by_tf: dict[str, int] = dict.fromkeys(tids, 0)
    for tid in tids:
        lv = levels_real[tid]
        for m, u in by_tf[tid]:
            x = _continuous(m.weight, u, lv)
            whole = min(math.floor(x), u)
            whole_by_tf[tid] += whole
            if whole < u and m.weight >= MIN_WEIGHT:
                key = node_key(m.node_id)
                rows.append((x - whole, key, m.node_id, tid, whole))
                derived.append((m, u, whole, x - whole, key))
            else:
                derived.append((m, u, whole, 0.0, None))
    missing = target - sum(whole_by_tf.values())
    room = {tid: cap_units[tid] - whole_by_tf[tid] for tid in tids}
    cut: dict[str, tuple[float, int]] = {}
    rows.sort(key=lambda r: (r[0], r[1], r[2]), reverse=True)
    for frac, key, _node, tid, _whole in rows:
        if missing <= 0:
            break
        if room[tid] <= 0:
            continue
        room[tid] -= 1
        missing -= 1
        cut[tid] = (frac, key)
    levels = tuple(
        Level(tid, levels_real[tid], *cut.get(tid, (NO_CUT, 0))) for tid in tids
    )
    level_by = {lv.transformer_id: lv for lv in levels}
    # every share by the members' own rule (``member_units``), from the values above: the
    # same float operations on the same inputs, so the same bits
    shares: dict[str, int] = {}
    planned_by_tf: dict[str, int] = dict.fromkeys(tids, 0)
    for m, _u, whole, frac, mkey in derived:
        mlevel = level_by[m.transformer_id]
        s = whole + 1 if mkey is not None and (frac, mkey) >= (mlevel.cut_frac, mlevel.cut_key) else whole
        if s:
            shares[m.node_id] = s
        planned_by_tf[m.transformer_id] += s
    planned = sum(planned_by_tf.values())
    transformers = tuple(
        TransformerShare(
            tid,
            headroom_w.get(tid),
            sum(u for _, u in by_tf[tid]) / UNITS_PER_W,
            planned_by_tf[tid] / UNITS_PER_W,
            tid in headroom_w and planned_by_tf[tid] >= cap_units[tid] and math.isfinite(mu[tid]),
        )
        for tid in tids
    )
    return Plan(
        deficit_w=want / UNITS_PER_W,
        planned_w=planned / UNITS_PER_W,
        shortfall_w=max(0, want - planned) / UNITS_PER_W,
        levels=levels,
        shares_units=shares,
        transformers=transformers,
    )
