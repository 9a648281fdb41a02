"""The small pure parts: suspicion maths, awareness, the broadcast queue, presets, records."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import LocalProtocolError
from protocol.state import Scope, StateRecord, capacity_sum, newer
from protocol.swim import BroadcastQueue, SwimConfig, push_pull_scale, retransmit_limit
from protocol.swim.awareness import Awareness
from protocol.swim.members import ProbeOrder
from protocol.swim.suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout


# memberlist's TestSuspicion_remainingSuspicionTime, in seconds
@pytest.mark.parametrize(
    ("n", "k", "elapsed", "min_s", "max_s", "expected"),
    [
        (0, 3, 0, 2, 30, 30),
        (1, 3, 2, 2, 30, 14),
        (2, 3, 3, 2, 30, 4.81),
        (3, 3, 4, 2, 30, -2),
        (4, 3, 5, 2, 30, -3),
        (5, 3, 10, 2, 30, -8),
        (0, 0, 0, 2, 30, 2),  # no confirmations wanted: the minimum from the start
    ],
)
def test_remaining_suspicion_time_table(n, k, elapsed, min_s, max_s, expected):
    assert remaining_suspicion_time(n, k, elapsed, min_s, max_s) == pytest.approx(expected, abs=1e-9)


def test_suspicion_timer_confirmations():
    # memberlist's TestSuspicion_Timer: k=3, min 0.5 s, max 2 s
    s = Suspicion.begin("me", 3, 0.5, 2.0, now=100.0)
    assert s.deadline == 102.0
    assert not s.confirm("me")  # the first accuser does not confirm itself
    assert s.confirm("foo")
    assert s.deadline == pytest.approx(101.25)
    assert not s.confirm("foo")
    assert s.confirm("bar")
    assert s.deadline == pytest.approx(100.811)  # memberlist: ~810 ms
    assert s.confirm("baz")
    assert s.deadline == pytest.approx(100.5)
    assert not s.confirm("qux")  # enough: further confirmations change nothing
    assert s.deadline == pytest.approx(100.5)


def test_suspicion_timeout_scales_with_log_n():
    assert suspicion_timeout(4, 1, 1.0) == 4.0
    assert suspicion_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_timeout(4, 10_000, 0.5) == pytest.approx(8.0)


@given(st.lists(st.integers(-5, 5), max_size=50))
def test_awareness_is_clamped(deltas):
    a = Awareness(max_multiplier=8)
    for d in deltas:
        a.apply_delta(d)
        assert 0 <= a.score <= 7
        assert a.scale(0.5) == 0.5 * (a.score + 1)


@pytest.mark.parametrize(("mult", "n", "limit"), [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (3, 10_000, 15)])
def test_retransmit_limit(mult, n, limit):
    assert retransmit_limit(mult, n) == limit


def test_push_pull_interval_grows_with_n():
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 64) == 60.0
    assert push_pull_scale(30.0, 1000) == 30.0 * (math.ceil(math.log2(1000) - 5) + 1)


def test_queue_least_sent_first_and_limit():
    q = BroadcastQueue()
    q.put("a", "A", 10)
    q.put("b", "B", 10)
    items, used = q.take(100, limit=2)
    assert sorted(items) == ["A", "B"] and used == 20
    q.put("c", "C", 10)  # fresh news goes first
    items, _ = q.take(15, limit=2)
    assert items == ["C"]
    items, _ = q.take(100, limit=2)
    assert sorted(items) == ["A", "B", "C"]  # A and B reach the limit and leave
    assert q.items() == [("c", "C", 2)] or len(q) == 0
    items, _ = q.take(100, limit=2)
    assert items == []


def test_queue_newer_invalidates_older_about_same_subject():
    q = BroadcastQueue()
    q.put(("m", "x"), "alive x inc 1", 20)
    q.take(100, limit=5)
    q.put(("m", "x"), "suspect x inc 1", 20)
    assert len(q) == 1
    assert q.transmits(("m", "x")) == 0  # the new rumor starts its own count
    assert q.take(100, limit=5)[0] == ["suspect x inc 1"]


def test_queue_skips_what_does_not_fit():
    q = BroadcastQueue()
    q.put("big", "B", 90)
    q.put("small", "s", 20)
    items, used = q.take(50, limit=3)
    assert items == ["s"] and used == 20
    assert q.transmits("big") == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(8, 200)), max_size=60),
    st.integers(0, 1500),
    st.integers(1, 6),
)
def test_queue_respects_budget_and_limit(puts, budget, limit):
    q = BroadcastQueue()
    for key, size in puts:
        q.put(key, (key, size), size)
    sent: dict[int, int] = {}
    for _ in range(limit + 2):
        items, used = q.take(budget, limit)
        assert used == sum(size for _, size in items) <= budget
        assert len({k for k, _ in items}) == len(items)
        for key, _ in items:
            sent[key] = sent.get(key, 0) + 1
    assert all(count <= limit for count in sent.values())
    latest = dict(puts)
    for key, item, transmits in q.items():
        assert item == (key, latest[key]) and transmits < limit


@given(st.integers(0, 300), st.integers(0, 10_000))
def test_probe_order_visits_each_index_once_per_round(n, seed):
    rng = random.Random(seed)
    order = ProbeOrder()
    seen = [order.next_index(n, rng) for _ in range(n)]
    if n == 0:
        assert order.next_index(0, rng) == -1
    else:
        assert sorted(seen) == list(range(n))


def test_presets_and_overrides():
    lan = SwimConfig.lan()
    assert (lan.probe_interval_s, lan.probe_timeout_s, lan.indirect_checks) == (1.0, 0.5, 3)
    assert (lan.gossip_interval_s, lan.gossip_nodes, lan.suspicion_mult) == (0.2, 3, 4)
    assert lan.push_pull_interval_s == 30.0
    local = SwimConfig.local(gossip_nodes=5)
    assert local.probe_interval_s < lan.probe_interval_s and local.gossip_nodes == 5
    assert SwimConfig.preset("lan", probe_interval_s=2.0).probe_interval_s == 2.0
    with pytest.raises(LocalProtocolError):
        SwimConfig.preset("wan")
    with pytest.raises(ValueError, match="probe_timeout_s"):
        SwimConfig.lan(probe_timeout_s=1.5)
    with pytest.raises(ValueError, match="gossip_interval_s"):
        SwimConfig.lan(gossip_interval_s=0)


def _record(node: str, inc: int, version: int, w: float = 1000.0, **kw) -> StateRecord:
    fields = dict(
        node_id=node, incarnation=inc, version=version, site_id="s1", transformer_id="t1",
        discharge_available_w=w, energy_above_min_soc_wh=5000.0, soc=0.6,
        thermal_derating=0.0, faults=(), updated_at_ms=1_000,
    )
    fields.update(kw)
    return StateRecord(**fields)


@pytest.mark.parametrize(
    ("candidate", "current", "wins"),
    [
        ((0, 1), None, True),
        ((0, 2), (0, 1), True),
        ((0, 1), (0, 2), False),
        ((0, 1), (0, 1), False),  # a duplicate changes nothing
        ((1, 1), (0, 9), True),  # a new life beats any version of an old one
        ((0, 9), (1, 1), False),
    ],
)
def test_record_merge_rule(candidate, current, wins):
    cur = None if current is None else _record("a", *current)
    assert newer(_record("a", *candidate), cur) is wins


@given(st.permutations([(0, 1), (0, 2), (1, 1), (1, 3), (2, 0)]))
def test_record_merge_is_order_independent(order):
    held = None
    for inc, version in order:
        r = _record("a", inc, version)
        if newer(r, held):
            held = r
    assert held is not None and held.order == (2, 0)


def test_record_round_trips_through_the_codec():
    r = _record("a", 3, 7, faults=("over-temp",), thermal_derating=0.25)
    assert codec.decode_untrusted(StateRecord, codec.encode(r)) == r


def test_capacity_sum_scopes_and_liveness():
    records = [
        _record("a", 0, 1, w=1000.0, site_id="s1", transformer_id="t1"),
        _record("b", 0, 1, w=2000.0, site_id="s1", transformer_id="t2"),
        _record("c", 0, 1, w=4000.0, site_id="s2", transformer_id="t2", faults=("x",)),
        _record("d", 0, 1, w=8000.0, site_id="s2", transformer_id="t2"),
    ]
    live = {"a", "b", "c"}.__contains__
    assert capacity_sum(records, live).discharge_available_w == 7000.0
    assert capacity_sum(records, live, Scope.site("s1")).discharge_available_w == 3000.0
    t2 = capacity_sum(records, live, Scope.transformer("t2"))
    assert (t2.discharge_available_w, t2.nodes, t2.nodes_with_faults) == (6000.0, 2, 1)
    assert capacity_sum([], live).oldest_updated_at_ms is None


def test_a_delegate_hears_member_events_and_cannot_take_what_is_handled():
    """The seam (protocol.swim.delegate): a new client rides on the core without editing it."""
    from protocol.errors import LocalProtocolError
    from protocol.state import StateRecord
    from protocol.swim import Delegate, MemberJoined, MemberLeft, Ping
    from tests.protocol.swim.helpers import Net

    class Watcher(Delegate):
        def __init__(self) -> None:
            self.seen: list[type] = []

        def member_event(self, event, now):
            self.seen.append(type(event))

    net = Net(seed=31)
    cores = net.mesh(3)
    watcher = Watcher()
    cores[0].add_delegate(watcher)
    cores[2].leave(net.now)
    net.after("n2")
    net.run_until(lambda: MemberLeft in watcher.seen, limit_s=5)

    class Greedy(Delegate):
        message_types = frozenset({Ping})

    class Copycat(Delegate):
        rumor_types = frozenset({StateRecord})

    class Unslotted(Delegate):
        rumor_types = frozenset({MemberJoined})

    for d in (Greedy(), Copycat(), Unslotted()):
        with pytest.raises(LocalProtocolError):
            cores[1].add_delegate(d)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(8, 300)), max_size=80),
    st.integers(0, 1500),
)
def test_queue_take_is_the_greedy_scan_of_every_queued_rumor(puts, budget):
    # take stops scanning once nothing queued can fit: it must choose what a scan of the
    # whole queue (least sent first, newest first among equals) would choose
    q = BroadcastQueue()
    for i, (key, size) in enumerate(puts):
        q.put(key, (key, size), size)
        if i % 7 == 6:
            q.take(budget // 2, 4)  # mixed transmit counts
    expected, used = [], 0
    for _key, item, _transmits in q.items():
        if budget - used < 8:
            break
        if used + item[1] <= budget:
            expected.append(item)
            used += item[1]
    assert q.take(budget, 10) == (expected, used)
