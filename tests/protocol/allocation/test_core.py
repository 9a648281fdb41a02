"""The protocol cores wired together with no sockets: stale views, loss, competing proposers."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.allocation.core import Member, Proposer, ViewOffer, droop_shortfall
from protocol.allocation.messages import Ack, Plan, in_silent, silent_filter
from protocol.allocation.plan import to_units
from protocol.state import Scope

SITE = Scope.site("s1")


class Net:
    """N members under a few transformers, one proposer, a lossy and reordering network."""

    def __init__(self, rng: random.Random, n: int, *, stale: float = 0.0, headroom: dict[str, float] | None = None) -> None:
        self.rng = rng
        self.members: dict[str, Member] = {}
        self.limit_now: dict[str, float] = {}
        self.weight: dict[str, float] = {}
        self.tf: dict[str, str] = {}
        self.view: list[ViewOffer] = []
        self.headroom = headroom or {}
        for i in range(n):
            nid = f"n{i:04d}"
            tf = f"t{i % 3}"
            m = Member(nid, tf)
            old = rng.uniform(1000, 11000)
            now_l = old * rng.uniform(1 - stale, 1 + stale) if stale else old
            w = rng.uniform(1000, 50000)
            m.offer(1000, old, w)  # the record the proposer saw
            m.offer(2000, now_l, w)  # a fresher one, not yet gossiped
            self.members[nid], self.limit_now[nid], self.weight[nid], self.tf[nid] = m, now_l, w, tf
            self.view.append(ViewOffer(nid, tf, old, w, 1000))
        self.applied: dict[str, float] = dict.fromkeys(self.members, 0.0)

    def deliver_plan(self, msg: Plan, origin: str = "det", loss: float = 0.0) -> list[tuple[str, Ack]]:
        raw = codec.encode(msg)  # what crosses the wire, decoded as untrusted
        msg = codec.decode_untrusted(Plan, raw)
        acks = []
        for nid, m in self.members.items():
            if self.rng.random() < loss:
                continue
            got = m.receive(origin, True, msg, 0.0, self.limit_now[nid], self.weight[nid])
            if got is not None:
                self.applied[nid] = min(m.share_w(), self.limit_now[nid])
                self.check()
                if self.rng.random() >= loss:
                    acks.append((nid, got.ack))
        return acks

    def check(self) -> None:
        for nid, a in self.applied.items():
            assert a <= self.limit_now[nid] + 1e-9
        for t, h in self.headroom.items():
            assert sum(a for n, a in self.applied.items() if self.tf[n] == t) <= h + 1e-6

    def total(self) -> float:
        return sum(self.applied.values())


def run_spike(net: Net, deficit: float, loss: float = 0.0, rounds: int = 3) -> tuple[Proposer, list[float]]:
    p = Proposer("det", SITE, epoch=1, round2_after_s=0.01)
    msg: Plan | None = p.start(deficit, net.view, net.headroom, 0.0)
    residuals = []
    now = 0.0
    while msg is not None and len(residuals) < rounds:
        for nid, ack in net.deliver_plan(msg, loss=loss):
            p.on_ack(nid, ack)
        residuals.append(deficit - net.total())
        now += 0.01
        msg = p.tick(now)
        if msg is not None and msg.base_seq == 0:  # a renewal: nothing left to plan
            break
    return p, residuals


def test_exact_view_is_exact_in_round_one() -> None:
    net = Net(random.Random(1), 60)
    _, res = run_spike(net, 150_000.0)
    assert abs(res[0]) < 1e-6


def test_stale_views_converge_in_round_two() -> None:
    for seed in range(20):
        net = Net(random.Random(seed), 80, stale=0.10, headroom={"t0": 90_000.0})
        _, res = run_spike(net, 200_000.0)
        assert res[0] >= -1e-6  # stale views never over-deliver
        assert len(res) >= 2 and abs(res[-1]) <= 0.1 + 1e-6, res


def test_ten_percent_loss_never_breaks_a_limit_and_closes_the_gap() -> None:
    for seed in range(20):
        net = Net(random.Random(100 + seed), 100, stale=0.10, headroom={"t1": 80_000.0})
        p, res = run_spike(net, 250_000.0, loss=0.10, rounds=4)
        assert all(r >= -1e-6 or i > 0 for i, r in enumerate(res))
        # a member whose ACK was lost keeps its share while the others cover it too: more
        # than the deficit, never more than a limit, never less than the deficit after round 2
        assert res[-1] <= 0.1 + 1e-6, res
        # renewals (answered again) show the proposer what lost ACKs hid; it trims the
        # over-delivery (every share only lowered) and its round 2 raises those with room
        now = 1.0
        for _ in range(6):
            msg = p.tick(now)
            if msg is not None:
                for nid, ack in net.deliver_plan(msg):
                    p.on_ack(nid, ack)
            now += 0.5
        assert abs(net.total() - 250_000.0) <= 0.1 + 1e-6, (seed, net.total())
        if res[-1] < -0.1:
            assert p.rebased >= 1


def test_late_acks_keep_shares_and_the_gap_closes() -> None:
    """The end-to-end test's failure: two of three ACKs arrive after round 2 was planned.

    Their members are silent in round 2; they keep their round-1 shares (their ACKs were
    late, not unsent) while round 2 re-plans the residual over the one that answered, so the
    deficit is over-delivered within every limit instead of left uncovered; the renewal
    re-bases it to the deficit exactly."""
    m = {f"a{i}": Member(f"a{i}", "t0") for i in range(3)}
    for mm in m.values():
        mm.offer(0, 10_000.0, 1.0)
    view = [ViewOffer(n, "t0", 10_000.0, 1.0, 0) for n in m]
    p = Proposer("a0", SITE, epoch=1, round2_after_s=0.02, renew_every_s=1.0)
    plan1 = p.start(15_000.0, view, {"t0": 30_000.0}, 0.0)
    acks = {n: mm.receive("a0", True, plan1, 0.0, 10_000.0, 1.0) for n, mm in m.items()}
    assert all(a is not None and a.share_w == 5_000.0 for a in acks.values())
    p.on_ack("a0", acks["a0"].ack)  # type: ignore[union-attr]
    plan2 = p.tick(0.02)  # a1's and a2's ACKs are still on their way
    assert plan2 is not None and plan2.base_seq == 1
    for n in ("a1", "a2"):
        p.on_ack(n, acks[n].ack)  # type: ignore[union-attr]  # late
    got = {n: mm.receive("a0", True, plan2, 0.02, 10_000.0, 1.0) for n, mm in m.items()}
    shares = {n: g.share_w for n, g in got.items() if g is not None}
    assert shares == {"a0": 10_000.0, "a1": 5_000.0, "a2": 5_000.0}  # 20 kW >= 15 kW, none past 10 kW
    for n, g in got.items():
        p.on_ack(n, g.ack)  # type: ignore[union-attr]
    assert p.covered_w() == 20_000.0
    assert p.tick(0.05) is None  # round 3: nothing left to plan (over, not short)
    plan3 = p.tick(1.02)  # renewal time: over-delivery re-bases, every share only lowered
    assert plan3 is not None and plan3.base_seq == 0 and plan3.trim and p.rebased == 1
    again = {n: mm.receive("a0", True, plan3, 1.02, 10_000.0, 1.0) for n, mm in m.items()}
    assert {n: g.share_w for n, g in again.items() if g is not None} == {"a0": 5_000.0, "a1": 5_000.0, "a2": 5_000.0}


def test_silent_member_releases_a_share_older_than_the_base() -> None:
    """Missing plan b and silent in b+1, a member's share is from before b: maybe not counted."""
    mm = Member("a1", "t0")
    mm.offer(0, 10_000.0, 1.0)
    view = [ViewOffer("a1", "t0", 10_000.0, 1.0, 0), ViewOffer("a2", "t0", 10_000.0, 1.0, 0)]
    p = Proposer("a0", SITE, epoch=1)
    plan1 = p.start(12_000.0, view, {}, 0.0)
    g1 = mm.receive("a0", True, plan1, 0.0, 10_000.0, 1.0)
    assert g1 is not None and g1.share_w == 6_000.0
    p.on_ack("a1", g1.ack)
    p.on_ack("a2", Ack(SITE, 1, 1, 2_000.0, 2_000.0, 1.0, "t0"))  # a2's limit fell to 2 kW
    plan2 = p.tick(0.1)
    assert plan2 is not None and plan2.base_seq == 1  # a1 is to take 4 kW more; it never hears plan 2
    p.on_ack("a2", Ack(SITE, 1, 2, 1_000.0, 1_000.0, 1.0, "t0"))  # and fell again
    plan3 = p.tick(0.2)  # a1 silent: taken to hold its 10 kW; a2's 1 kW is the residual
    assert plan3 is not None and plan3.base_seq == 2 and in_silent("a1", plan3.silent)
    g3 = mm.receive("a0", True, plan3, 0.2, 10_000.0, 1.0)
    assert g3 is not None and g3.share_w == 0.0  # its 6 kW came from plan 1, before the base


def test_a_member_silent_once_is_taken_to_hold_its_share_and_one_never_heard_is_covered() -> None:
    view = [ViewOffer(f"a{i}", "t0", 10_000.0, 1.0, 0) for i in range(4)]
    p = Proposer("d", SITE, epoch=1)
    p.start(20_000.0, view, {"t0": 40_000.0}, 0.0)
    for n in ("a0", "a1", "a2"):  # a3 never answers: maybe gone
        p.on_ack(n, Ack(SITE, 1, 1, 5_000.0, 10_000.0, 1.0, "t0"))
    plan2 = p.tick(0.1)
    assert plan2 is not None and p.rounds[-1].planned_w == 5_000.0  # a3's part covered by the others
    for n in ("a0", "a1"):  # a2's ACK of round 2 is late
        p.on_ack(n, Ack(SITE, 1, 2, p.rounds[-1].planned[n], 10_000.0, 1.0, "t0"))
    assert p.tick(0.2) is None  # a2 is taken to hold what round 2 gave it: nothing left to plan


def test_silent_filter_has_no_false_negatives() -> None:
    ids = [f"node-{i}" for i in range(150)]
    f = silent_filter(ids)
    assert len(f) <= 256 and all(in_silent(i, f) for i in ids)
    fp = sum(in_silent(f"other-{i}", f) for i in range(2000))
    assert fp < 200


def test_plan_bytes_at_1000_members_fit_one_datagram() -> None:
    net = Net(random.Random(1), 1000)
    msg = Proposer("det", SITE, 1).start(1_500_000.0, net.view, {"t0": 400_000.0}, 0.0)
    assert len(codec.encode(msg)) < 400  # the envelope adds < 200 bytes; limit 1,200


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(st.tuples(st.sampled_from(["deliver", "drop", "dup", "tick", "renew", "replan"]), st.integers(0, 50)), max_size=40),
)
def test_no_sequence_of_plans_acks_and_losses_breaks_a_limit(seed: int, steps: list[tuple[str, int]]) -> None:
    rng = random.Random(seed)
    net = Net(rng, 12, stale=0.10, headroom={"t0": 12_000.0, "t1": 8_000.0})
    p = Proposer("det", SITE, epoch=1, round2_after_s=0.01)
    inflight: list[tuple[str, Plan | Ack]] = []
    sent = [p.start(60_000.0, net.view, net.headroom, 0.0)]
    inflight += [(nid, sent[0]) for nid in net.members]
    now = 0.0
    for action, i in steps:
        if not inflight and action in ("deliver", "drop", "dup"):
            continue
        if action in ("deliver", "drop", "dup"):
            nid, msg = inflight[i % len(inflight)]
            if action != "dup":
                inflight.remove((nid, msg))
            if action == "drop":
                continue
            if isinstance(msg, Ack):
                p.on_ack(nid, msg)
                continue
            got = net.members[nid].receive("det", True, msg, now, net.limit_now[nid], net.weight[nid])
            if got is not None:
                net.applied[nid] = min(net.members[nid].share_w(), net.limit_now[nid])
                inflight.append((nid, got.ack))
        elif action in ("tick", "renew"):  # renew: a renewal is due (and maybe a re-base)
            now += 0.01 if action == "tick" else 1.0
            out = p.tick(now)
            if out is not None:
                inflight += [(nid, out) for nid in net.members]
        else:
            now += 0.01
            out = p.start(rng.uniform(0, 80_000.0), net.view, net.headroom, now)
            inflight += [(nid, out) for nid in net.members]
        net.check()
    for nid, a in net.applied.items():
        assert a <= to_units(net.limit_now[nid]) / 10 + 1e-9


def test_droop_shortfall_counts_what_each_droop_cannot_deliver() -> None:
    view = [
        ViewOffer("a", "t0", 10_000.0, 1.0, 0, rated_w=10_000.0),  # delivers its 3 kW, 7 kW spare
        ViewOffer("b", "t0", 0.0, 1.0, 0, rated_w=10_000.0),  # no vehicle: owes 3 kW
        ViewOffer("c", "t1", 1_000.0, 1.0, 0, rated_w=5_000.0),  # capped: delivers 1 of 1.5 kW
        ViewOffer("d", "t1", 4_000.0, 1.0, 0),  # no rating known: asked nothing, all spare
    ]
    short = droop_shortfall(view, 0.3, {"t0": 20_000.0, "t1": 2_000.0})
    assert short.asked_w == 3_000.0 + 3_000.0 + 1_500.0
    assert short.undelivered_w == 3_000.0 + 500.0
    assert short.spare_w == 7_000.0 + 4_000.0
    assert short.headroom_w == {"t0": 17_000.0, "t1": 1_000.0}


def test_a_frequency_plan_leaves_each_member_its_own_droop() -> None:
    m = Member("a", "t0")
    m.offer(0, 10_000.0, 1.0, rated_w=10_000.0)
    view = [ViewOffer("a", "t0", 10_000.0, 1.0, 0, rated_w=10_000.0),
            ViewOffer("b", "t0", 0.0, 1.0, 0, rated_w=10_000.0)]
    short = droop_shortfall(view, 0.7, {})
    msg = Proposer("det", Scope.frequency("s1"), 1).start(short.undelivered_w, view, short.headroom_w, 0.0,
                                                           droop_pu=0.7)
    assert msg.droop_pu == 0.7 and codec.decode_untrusted(Plan, codec.encode(msg)) == msg
    got = m.receive("det", True, msg, 0.0, 10_000.0, 1.0)
    # b owes 7 kW; a's droop takes 7 of its 10 kW, so 3 kW is all it may add
    assert got is not None and got.share_w == 3_000.0 and got.ack.limit_w == 3_000.0
