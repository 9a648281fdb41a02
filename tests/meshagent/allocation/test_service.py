"""Allocators on mesh nodes over the in-memory network, in virtual time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshagent.allocation.service import Allocator
from meshagent.control.detect import Phase, Spike
from meshagent.mesh.node import MeshNode
from meshagent.transport.memory import LinkConditions, MemoryNetwork, open_memory_network
from protocol.swim import SwimConfig
from tests.conftest import NOW_MS

LOCAL = SwimConfig.local()


def wall_ms() -> int:
    return NOW_MS + int(trio.current_time() * 1000)


class Agent:
    def __init__(self, node: MeshNode, limit_w: float, weight: float, **kw) -> None:
        self.node = node
        self.limit_w = limit_w
        self.weight = weight
        self.applied_w = 0.0
        self.history: list[float] = []
        self.alloc = Allocator(
            node, limit_now_w=lambda: self.limit_w, weight_now=lambda: self.weight, apply=self._apply, **kw
        )

    def _apply(self, w: float, covered: float | None = None) -> None:
        assert w <= self.limit_w + 1e-9  # never past its own limit, whatever the messages said
        self.applied_w = w
        self.history.append(w)

    def publish(self, limit_w: float | None = None, rated_w: float = 0.0) -> None:
        if limit_w is not None:
            self.limit_w = limit_w
        rec = self.node.publish_record(
            discharge_available_w=self.limit_w, energy_above_min_soc_wh=self.weight, soc=0.6,
            thermal_derating=0.0, faults=(), rated_discharge_w=rated_w,
        )
        self.alloc.offer(rec.updated_at_ms, rec.discharge_available_w, rec.energy_above_min_soc_wh,
                         rec.rated_discharge_w)


async def wait_until(predicate, *, timeout_s: float, step_s: float = 0.01) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls state that many tasks change)
            await trio.sleep(step_s)


@asynccontextmanager
async def agents(pki, n: int, *, net: MemoryNetwork, detectors=(0,), transformers=None, seed=0, **kw) -> AsyncIterator[list[Agent]]:
    rng = random.Random(seed)
    out: list[Agent] = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            ident = pki.identity(
                f"n{i:02d}", roles=("detector",) if i in detectors else (),
                transformer_id=transformers[i] if transformers else "tx-1",
            )
            node = MeshNode(
                ident, pki.trust(), net.endpoint(), LOCAL, boot_epoch=1,
                seeds=[out[0].node.address] if out else [], wall_clock_ms=wall_ms, rng=random.Random(seed * 100 + i),
            )
            await nursery.start(node.run)
            a = Agent(node, rng.choice([7400.0, 11000.0, 3700.0]), rng.uniform(5000, 40000), **kw)
            await nursery.start(a.alloc.run)
            out.append(a)
        for a in out:
            a.publish()
        await wait_until(lambda: all(len(a.node.records.records()) == n for a in out), timeout_s=60, step_s=0.1)
        yield out
        nursery.cancel_scope.cancel()


def spike(phase: Phase, deficit_w: float, spike_id: str = "s1", scope="site", scope_id="site-1") -> Spike:
    return Spike(spike_id, phase, deficit_w, scope, scope_id, "limit", 0.0, 0.0, 0.0)


def total(agents_: list[Agent]) -> float:
    return sum(a.applied_w for a in agents_)


async def test_a_spike_is_split_exactly_and_released(pki, autojump_clock):
    async with open_memory_network(random.Random(1)) as net, agents(pki, 8, net=net) as ags:
        ags[0].alloc.on_spike(spike(Phase.START, 30_000.0))
        await wait_until(lambda: abs(total(ags) - 30_000.0) <= 0.1, timeout_s=1)
        assert trio.current_time() < 1e9
        assert sum(1 for a in ags if a.applied_w > 0) == 8
        report = ags[0].alloc.spikes()
        assert report[0]["rounds"][0]["answered"] == 8 and report[0]["residual_w"] <= 0.1
        ags[0].alloc.on_spike(spike(Phase.END, 0.0))
        await wait_until(lambda: total(ags) == 0.0, timeout_s=1)


async def test_stale_views_are_closed_by_round_two(pki, autojump_clock):
    async with open_memory_network(random.Random(2)) as net, agents(pki, 10, net=net, seed=2) as ags:
        rng = random.Random(2)
        for a in ags[1:]:  # limits moved by up to 10% and the mesh has not heard yet
            a.limit_w *= rng.uniform(0.9, 1.1)
        ags[0].alloc.on_spike(spike(Phase.START, 40_000.0))
        await trio.sleep(0.5)
        assert abs(total(ags) - 40_000.0) <= 0.1
        rounds = ags[0].alloc.spikes()[0]["rounds"]
        assert len(rounds) >= 2 and rounds[0]["applied_w"] <= 40_000.0
        assert rounds[0]["base_seq"] == 0 and rounds[1]["base_seq"] == rounds[0]["seq"]  # a correction of round 1


async def test_ten_percent_loss_and_a_lost_member(pki, autojump_clock):
    lossy = LinkConditions(loss=0.10, delay_s=0.001, jitter_s=0.001)
    async with open_memory_network(random.Random(3), default=lossy) as net, agents(pki, 12, net=net, seed=3) as ags:
        ags[5].node.stop()  # lost mid-allocation: its inverter stops with it
        ags[5].applied_w = 0.0
        ags[0].alloc.on_spike(spike(Phase.START, 30_000.0))
        await trio.sleep(3.0)  # rounds and renewals
        live = [a for i, a in enumerate(ags) if i != 5]
        assert total(live) <= 30_000.0 + 0.1
        assert total(live) >= 30_000.0 * 0.8


async def test_shares_lapse_when_the_proposer_is_lost_and_a_new_epoch_takes_over(pki, autojump_clock):
    async with open_memory_network(random.Random(4)) as net, agents(pki, 6, net=net, detectors=(0, 1), ttl_ms=2000) as ags:
        ags[0].alloc.on_spike(spike(Phase.START, 12_000.0))
        await wait_until(lambda: abs(total(ags) - 12_000.0) <= 0.1, timeout_s=1)
        ags[0].node.stop()
        ags[0].applied_w = 0.0
        await trio.sleep(3.0)  # no renewal: every share lapsed
        assert total(ags[1:]) == 0.0
        ags[1].alloc.on_spike(spike(Phase.START, 9_000.0, spike_id="s2"))
        await wait_until(lambda: abs(total(ags[1:]) - 9_000.0) <= 0.1, timeout_s=2)
        assert ags[1].alloc.spikes()[0]["epoch"] == 2


async def test_a_plan_from_a_node_without_the_detector_role_is_refused(pki, autojump_clock):
    async with open_memory_network(random.Random(5)) as net, agents(pki, 4, net=net, detectors=(0,)) as ags:
        rogue = ags[3].alloc
        rogue.is_detector = True  # a compromised agent ignores its own certificate
        rogue.on_spike(spike(Phase.START, 5_000.0))
        await trio.sleep(0.5)
        assert all(a.applied_w == 0.0 for a in ags[:3])
        assert all(a.alloc.statistics().refused_not_detector >= 1 for a in ags[:3])


async def test_two_spikes_in_two_scopes_never_exceed_a_charger(pki, autojump_clock):
    tfs = ["tx-a"] * 3 + ["tx-b"] * 3
    async with open_memory_network(random.Random(6)) as net, agents(pki, 6, net=net, detectors=(0, 3), transformers=tfs) as ags:
        ags[0].alloc.on_spike(spike(Phase.START, 6_000.0, scope="transformer", scope_id="tx-a"))
        ags[3].alloc.on_spike(spike(Phase.START, 6_000.0, spike_id="s2", scope="site", scope_id="site-1"))
        await trio.sleep(1.0)
        for a in ags:
            assert a.applied_w <= a.limit_w
        assert total(ags) <= 12_000.0 + 0.2


async def test_partition_during_a_spike_never_over_allocates(pki, autojump_clock):
    async with open_memory_network(random.Random(7)) as net, agents(pki, 8, net=net, detectors=(0, 4)) as ags:
        cut = net.partition([a.node.address for a in ags[:4]], [a.node.address for a in ags[4:]])
        ags[0].alloc.on_spike(spike(Phase.START, 20_000.0))
        ags[4].alloc.on_spike(spike(Phase.START, 20_000.0, spike_id="s2"))
        await trio.sleep(0.5)
        for side in (ags[:4], ags[4:]):
            assert total(side) <= 20_000.0 + 0.1
            assert all(a.applied_w <= a.limit_w for a in side)
        net.heal(cut)
        await trio.sleep(3.0)
        for a in ags:
            assert a.applied_w <= a.limit_w


async def test_transformer_headroom_bounds_the_plan_and_the_capacity(pki, autojump_clock):
    from meshagent.allocation.capacity import breakdown_json, transformer_aware
    from protocol.state import Scope

    tfs = ["tx-a"] * 3 + ["tx-b"] * 3
    heads = {"tx-a": 5_000.0}
    async with open_memory_network(random.Random(8)) as net, agents(pki, 6, net=net, transformers=tfs, headroom_w=lambda: heads) as ags:
        cap = breakdown_json(transformer_aware(ags[4].node, Scope.everyone(), heads))
        rows = {r["transformer_id"]: r for r in cap["transformers"]}
        assert rows["tx-a"]["counted_w"] == 5_000.0 and rows["tx-a"]["limited_by_headroom"]
        assert rows["tx-b"]["counted_w"] == sum(a.limit_w for a in ags[3:])
        assert cap["transformer_aware_w"] == 5_000.0 + rows["tx-b"]["counted_w"]
        want = min(15_000.0, cap["transformer_aware_w"])
        ags[0].alloc.on_spike(spike(Phase.START, want))
        await trio.sleep(0.5)
        assert sum(a.applied_w for a in ags[:3]) <= 5_000.0
        assert abs(total(ags) - want) <= 0.1


async def test_covered_keeps_every_member_through_an_update(pki, autojump_clock):
    """A new plan (an UPDATE) must not make the covered total collapse to the detector's own
    share until the members answer it: each member counts with its newest ACK."""
    async with open_memory_network(random.Random(5)) as net, agents(pki, 6, net=net, seed=5) as ags:
        ags[0].alloc.on_spike(spike(Phase.START, 20_000.0))
        await wait_until(lambda: abs(total(ags) - 20_000.0) <= 0.1, timeout_s=1)
        await wait_until(lambda: abs((ags[0].alloc.covered_w() or 0.0) - 20_000.0) <= 0.1, timeout_s=1)
        ags[0].alloc.on_spike(spike(Phase.UPDATE, 22_000.0))  # sent; no member has answered yet
        assert (ags[0].alloc.covered_w() or 0.0) >= 20_000.0 - ags[0].applied_w - 0.1
        await wait_until(lambda: abs((ags[0].alloc.covered_w() or 0.0) - 22_000.0) <= 0.1, timeout_s=1)


async def test_what_the_droop_cannot_deliver_is_planned_over_the_others(pki, autojump_clock):
    """A frequency event: every charger's droop asks 40 % of its 10 kW rating; two have no
    vehicle (limit 0) and one is capped at 2 kW, so 4 + 4 + 2 kW go undelivered. The detector
    plans those 10 kW over what the others' droop leaves them, and releases when it lets go."""
    droop = {"pu": 0.0}
    async with open_memory_network(random.Random(7)) as net, agents(
        pki, 6, net=net, response_pu=lambda: droop["pu"]
    ) as ags:
        limits = [10_000.0, 0.0, 0.0, 2_000.0, 9_000.0, 10_000.0]
        for a, lim in zip(ags, limits, strict=True):
            a.publish(lim, rated_w=10_000.0)
        await wait_until(lambda: all(r.rated_discharge_w == 10_000.0 for r in ags[0].node.records.records()),
                         timeout_s=10, step_s=0.1)
        droop["pu"] = 0.4
        await wait_until(lambda: abs(total(ags) - 10_000.0) <= 0.1, timeout_s=1)
        for a in ags:  # the share rides on top of the member's own droop, within its limit
            assert a.applied_w + min(a.limit_w, 0.4 * 10_000.0) <= a.limit_w + 1e-6
        assert [a.applied_w > 0 for a in ags] == [True, False, False, False, True, True]
        rep = ags[0].alloc.spikes()[0]
        assert rep["scope"] == {"kind": "frequency", "id": "site-1"} and rep["rounds"][0]["deficit_w"] == 10_000.0
        droop["pu"] = 0.6  # deeper: 6 + 6 + 4 kW undelivered, 4 + 3 + 4 kW spare: all of it
        await wait_until(lambda: abs(total(ags) - 11_000.0) <= 0.1, timeout_s=1)
        assert ags[0].alloc.spikes()[0]["rounds"][-1]["residual_w"] >= 4_999.0  # the shortfall is reported
        droop["pu"] = 0.0
        await wait_until(lambda: total(ags) == 0.0, timeout_s=1)
        assert ags[0].alloc.spikes()[0]["released"]


async def test_a_droop_every_charger_can_deliver_sends_no_plan(pki, autojump_clock):
    droop = {"pu": 0.0}
    async with open_memory_network(random.Random(8)) as net, agents(
        pki, 4, net=net, response_pu=lambda: droop["pu"]
    ) as ags:
        for a in ags:
            a.publish(10_000.0, rated_w=10_000.0)
        await wait_until(lambda: all(r.rated_discharge_w == 10_000.0 for r in ags[0].node.records.records()),
                         timeout_s=10, step_s=0.1)
        droop["pu"] = 0.5
        await trio.sleep(1.0)
        assert total(ags) == 0.0 and ags[0].alloc.spikes() == []


async def test_a_site_spike_and_a_frequency_event_share_the_headroom(pki, autojump_clock):
    """One detector, two plans at once (the site's load spike, the frequency event's shortfall):
    together they keep the transformer within its headroom."""
    droop = {"pu": 0.0}
    async with open_memory_network(random.Random(9)) as net, agents(
        pki, 5, net=net, response_pu=lambda: droop["pu"], headroom_w=lambda: {"tx-1": 30_000.0}
    ) as ags:
        limits = [10_000.0, 0.0, 10_000.0, 10_000.0, 10_000.0]
        for a, lim in zip(ags, limits, strict=True):
            a.publish(lim, rated_w=10_000.0)
        await wait_until(lambda: all(r.rated_discharge_w == 10_000.0 for r in ags[0].node.records.records()),
                         timeout_s=10, step_s=0.1)
        ags[0].alloc.on_spike(spike(Phase.START, 15_000.0))
        await wait_until(lambda: abs(total(ags) - 15_000.0) <= 0.1, timeout_s=1)
        droop["pu"] = 0.5  # the member with no vehicle owes 5 kW; the four others' droop takes 20 kW
        await trio.sleep(1.0)
        # the droop under tx-1 delivers 20 kW and the site spike's plan holds 15 kW of its 30 kW
        # headroom: nothing is left for the frequency plan (alone it would have planned 5 kW)
        assert abs(total(ags) - 15_000.0) <= 0.1
        freq = [sp for sp in ags[0].alloc.spikes() if sp["scope"]["kind"] == "frequency"]
        assert freq and freq[0]["rounds"][0]["planned_w"] == 0.0
