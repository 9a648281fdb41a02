"""The allocation's trio shell: spikes in, PLANs out by urgent broadcast, shares to the loop.

Theory of operation
-------------------
One ``Allocator`` per agent, beside its ``MeshNode`` and ``ControlLoop``:

* **as a member** it hears PLANs as urgent broadcasts (``Delivered`` events of the node),
  refuses those whose origin's certificate lacks the ``detector`` role (counted), hands the
  rest to ``protocol.allocation.core.Member``, applies ``min(share, limit now)`` through
  ``apply`` (the control loop's ``set_share``) and answers the proposer with a signed ACK;
* **as a detector** (its own certificate has the role) it takes the control loop's spikes
  (``on_spike``): START plans round 1 over the live members' gossiped records in the
  spike's scope and broadcasts it urgently; ACKs come back by unicast; round 2 follows when
  every ACK is in or after ``round2_after_s``; the latest plan is re-sent every
  ``renew_every_s`` (shares lapse after ``ttl_ms`` otherwise); UPDATE re-plans the new
  deficit; END releases every share.

* **frequency events** (a detector given ``response_pu``, its control loop's droop per unit):
  every member's droop answers first, locally; the detector, whose droop stands for all of
  them (same grid, same curve), works out what the members cannot deliver from their records
  (``droop_shortfall``: a charger with no vehicle, at its SoC floor or derated still owes
  ``droop_pu * rated``) and plans it over their spare in the site's frequency scope
  (``Scope.frequency``), re-planning when the droop moves by ``FREQ_UPDATE_PU`` and
  releasing when it lets go.

``apply(share_w, covered_w)`` is the control loop's ``set_share``: ``covered_w`` is what the
mesh applies for this node's own proposals (None when it proposes nothing), which the
detector's loop counts as covered so the spike does not end when the neighbours' discharge
takes the load off its meter.

The detector is a member too: it applies its own share directly (an urgent broadcast does
not come back to its origin). Every offer this node publishes must be noted with
``offer(...)``: a member evaluates a plan on the offers the proposer may have seen.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from meshagent.mesh.node import MeshNode
from meshagent.transport.base import Address
from protocol.allocation.core import Member, PlanKey, Proposer, ViewOffer, droop_shortfall
from protocol.allocation.messages import Ack, Plan
from protocol.state import Scope
from protocol.swim import Delivered

RECENT_SPIKES = 32
FREQ_START_PU = 0.01  # the droop answers an event (as the control loop's RESPONSE_SEEN_PU)
FREQ_END_PU = 0.005  # the droop let go: release (hysteresis under the start)
FREQ_UPDATE_PU = 0.02  # re-plan when the droop moved this much (of rating) since the last plan
FREQ_SETTLE_S = 0.2  # and at most this often
FREQ_MIN_W = 100.0  # a shortfall smaller than this is not worth a plan
FREQ_POLL_S = 0.02


def spike_scope(scope: str, scope_id: str) -> Scope:
    return Scope.transformer(scope_id) if scope == "transformer" else Scope.site(scope_id)


@attrs.frozen
class AllocatorStatistics:
    plans_sent: int
    plans_received: int
    refused_not_detector: int
    acks_sent: int
    acks_received: int
    deferred: int
    expired: int
    share_w: float


class Allocator:
    def __init__(
        self,
        node: MeshNode,
        *,
        limit_now_w: Callable[[], float],
        weight_now: Callable[[], float],
        apply: Callable[[float, float | None], None],
        headroom_w: Callable[[], Mapping[str, float]] = dict,
        round2_after_s: float = 0.02,
        renew_every_s: float = 1.0,
        ttl_ms: int = 5_000,
        on_applied: Callable[[Scope, PlanKey, float], None] | None = None,
        response_pu: Callable[[], float] | None = None,
    ) -> None:
        self.node = node
        cert = node.identity.certificate
        self.is_detector = cert.has_role("detector")
        self.member = Member(node.node_id, cert.transformer_id)
        self.limit_now_w = limit_now_w
        self.weight_now = weight_now
        self.apply = apply
        self.headroom_w = headroom_w
        self.round2_after_s = round2_after_s
        self.renew_every_s = renew_every_s
        self.ttl_ms = ttl_ms
        self.on_applied = on_applied
        self.response_pu = response_pu
        self._freq_plans = 0
        self._droop_delivered: dict[Scope, Mapping[str, float]] = {}
        self.proposers: dict[Scope, Proposer] = {}
        self.recent: collections.deque[Proposer] = collections.deque(maxlen=RECENT_SPIKES)
        self._epochs: dict[Scope, int] = {}
        self._wake = trio.Event()
        self._sent = self._received = self._acks_sent = self._acks_received = self._deferred = 0
        node.on_message(Ack, self._on_ack, first=True)  # a spike's ACKs do not wait behind gossip

    # --- inputs ----------------------------------------------------------------------------

    def offer(self, at_ms: int, limit_w: float, weight: float, rated_w: float = 0.0) -> None:
        """Note an offer this node published in its state record."""
        self.member.offer(at_ms, limit_w, weight, rated_w)

    def on_spike(self, spike: Any) -> None:
        """The control loop's spike (``meshagent.control.detect.Spike``); sync, never blocks."""
        if not self.is_detector:
            return
        scope = spike_scope(spike.scope, spike.scope_id)
        now = trio.current_time()
        phase = str(getattr(spike.phase, "value", spike.phase))
        prop = self.proposers.get(scope)
        if phase == "end":
            if prop is not None and not prop.stopped:
                self._broadcast(prop, prop.release(now))
            self.proposers.pop(scope, None)
            return
        if prop is None or prop.stopped:
            prop = self._new_proposer(scope, spike.spike_id, now)
            if prop is None:
                return
        msg = prop.start(spike.deficit_w, self.view(scope), self._headroom_for(scope, now), now)
        self._broadcast(prop, msg)

    def _headroom_for(self, scope: Scope, now: float) -> dict[str, float]:
        """Each transformer's headroom less what this node's other live plans (a site spike, a
        transformer spike, a frequency event at once) may have its members apply: plans of
        one detector respect the headroom together. (Plans of two detectors do not see each
        other's use: docs/allocation.md, known limits.)"""
        heads = dict(self.headroom_w())
        for other in self.proposers.values():
            if other.scope == scope or other.stopped:
                continue
            for t, w in other.held_w(now).items():
                if t in heads:
                    heads[t] = max(0.0, heads[t] - w)
        if scope in self._droop_delivered:
            for t, w in self._droop_delivered[scope].items():
                if t in heads:
                    heads[t] = max(0.0, heads[t] - w)
        return heads

    def _new_proposer(self, scope: Scope, spike_id: str, now: float) -> Proposer | None:
        if self._other_proposer_active(scope, now):
            self._deferred += 1
            return None
        epoch = self._epochs.get(scope, 0) + 1
        self._epochs[scope] = epoch
        prop = Proposer(
            self.node.node_id, scope, epoch, spike_id=spike_id,
            round2_after_s=self.round2_after_s, renew_every_s=self.renew_every_s, ttl_ms=self.ttl_ms,
        )
        self.proposers[scope] = prop
        self.recent.append(prop)
        return prop

    def view(self, scope: Scope, *, with_faults: bool = False) -> list[ViewOffer]:
        """Live members' offers in ``scope`` from their gossiped records (this node's too).

        ``with_faults``: members with faults too, with nothing to offer (a frequency event's
        droop still asks its part of them)."""
        core = self.node.core
        out = []
        for r in self.node.records.records():
            if not (scope.contains(r.site_id, r.transformer_id) and core.is_live(r.node_id)):
                continue
            if r.faults and not with_faults:
                continue
            out.append(
                ViewOffer(r.node_id, r.transformer_id, 0.0 if r.faults else r.discharge_available_w,
                          r.energy_above_min_soc_wh, r.updated_at_ms, r.version, r.rated_discharge_w)
            )
        return out

    def _frequency_step(self, now: float, state: dict[str, float]) -> None:
        """One look at the droop: start, re-plan or release the frequency scope's plan."""
        assert self.response_pu is not None
        scope = Scope.frequency(self.node.local.site_id)
        pu = min(1.0, max(0.0, self.response_pu()))  # discharge only: what 1547's droop asks
        prop = self.proposers.get(scope)
        active = prop is not None and not prop.stopped
        if active and pu < FREQ_END_PU:
            assert prop is not None
            self._broadcast(prop, prop.release(now))
            self.proposers.pop(scope, None)
            self._droop_delivered.pop(scope, None)
            return
        if pu < FREQ_START_PU:
            return
        if active and (abs(pu - state["pu"]) < FREQ_UPDATE_PU or now - state["at"] < FREQ_SETTLE_S):
            return
        view = self.view(scope, with_faults=True)
        self._droop_delivered.pop(scope, None)
        short = droop_shortfall(view, pu, self._headroom_for(scope, now))
        if not active:
            if short.undelivered_w < FREQ_MIN_W:
                return
            prop = self._new_proposer(scope, f"{self.node.node_id}:f{self._freq_plans + 1}", now)
            if prop is None:
                return
        assert prop is not None
        self._freq_plans += 1
        self._droop_delivered[scope] = short.delivered_w
        state["pu"], state["at"] = pu, now
        self._broadcast(prop, prop.start(short.undelivered_w, view, short.headroom_w, now, droop_pu=pu))

    async def _frequency(self) -> None:
        state = {"pu": 0.0, "at": -math.inf}
        while True:
            await trio.sleep(FREQ_POLL_S)
            self._frequency_step(trio.current_time(), state)

    # --- the task --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events = self.node.subscribe()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timers)
            if self.is_detector and self.response_pu is not None:
                nursery.start_soon(self._frequency)
            task_status.started()
            async for ev in events:
                if isinstance(ev, Delivered) and isinstance(ev.message, Plan):
                    self._on_plan(ev.origin_id, ev.message)
            nursery.cancel_scope.cancel()

    async def _timers(self) -> None:
        while True:
            deadline = min(
                [p.next_deadline() for p in self.proposers.values()] + [self.member.next_deadline()]
            )
            with trio.move_on_at(deadline if math.isfinite(deadline) else trio.current_time() + 3600):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if self.member.tick(now):
                self._apply_now()
            for prop in list(self.proposers.values()):
                if len(self.proposers) > 1:  # the others' use moves: rounds plan within what is left
                    prop.headroom_w = self._headroom_for(prop.scope, now)
                msg = prop.tick(now)
                if msg is not None:
                    self._broadcast(prop, msg)

    # --- plumbing --------------------------------------------------------------------------

    def _broadcast(self, prop: Proposer, msg: Plan) -> None:
        self._sent += 1
        self.node.urgent(msg, prop.scope)
        # the detector is a member too: it applies its own share at once
        if prop.scope.contains(self.node.local.site_id, self.node.local.transformer_id):
            got = self._receive(self.node.node_id, True, msg)
            if got is not None:
                prop.on_ack(self.node.node_id, got)
        self._wake.set()

    def _on_plan(self, origin_id: str, msg: Plan) -> None:
        self._received += 1
        cert = self.node.endpoint.trust.certificate(origin_id)
        is_detector = cert is not None and cert.has_role("detector")
        own = self.proposers.get(msg.scope)
        if own is not None and is_detector and own.yield_to((msg.epoch, origin_id, msg.seq)):
            self.proposers.pop(msg.scope, None)
        self._epochs[msg.scope] = max(self._epochs.get(msg.scope, 0), msg.epoch)
        ack = self._receive(origin_id, is_detector, msg)
        if ack is None:
            return
        member = self.node.core.member(origin_id)
        if member is not None:
            self.node.spawn(self._send_ack, member.address, ack)

    def _receive(self, origin_id: str, is_detector: bool, msg: Plan) -> Ack | None:
        now = trio.current_time()
        got = self.member.receive(origin_id, is_detector, msg, now, self.limit_now_w(), self.weight_now())
        if got is None:
            return None
        if not got.renewed:
            self._apply_now()
            if self.on_applied is not None:
                self.on_applied(msg.scope, got.key, got.share_w)
        self._wake.set()
        return got.ack

    def _apply_now(self) -> None:
        self.apply(min(self.member.share_w(), max(0.0, self.limit_now_w())), self.covered_w())

    def covered_w(self) -> float | None:
        """What the mesh applies for the spikes this node proposes (ACKed), or None.

        The detector's control loop counts it as covered, so its spike's gross load does not
        fall (and the spike end) just because the neighbours took load off the meter.

        A member applies the newest plan it has seen and its ACK says what it applied, so
        each member counts with its newest ACK. Counting only the newest plan's ACKs would
        drop, the moment a new plan goes out, every member that has not answered it yet (the
        detector's own share comes back at once): the gross load would seem to fall, the
        deficit move, and an UPDATE follow, plan after plan.
        """
        total = None
        for prop in self.proposers.values():
            if prop.stopped:
                continue
            newest: dict[str, float] = {}
            for seq in sorted(prop.acks):
                newest.update((node_id, a.applied_w) for node_id, a in prop.acks[seq].items())
            if newest:
                total = (total or 0.0) + math.fsum(newest.values())
        return total

    async def _send_ack(self, address: Address, ack: Ack) -> None:
        self._acks_sent += 1
        await self.node.send(address, ack)

    def _on_ack(self, sender_id: str, _source: Address, ack: Ack) -> None:
        self._acks_received += 1
        prop = self.proposers.get(ack.scope)
        if prop is not None:
            prop.on_ack(sender_id, ack)
            self._apply_now()  # the covered total moved
            if prop.all_answered():
                self._wake.set()

    def _other_proposer_active(self, scope: Scope, now: float) -> bool:
        cur = self.member.scopes.get(scope)
        if cur is None or cur.key[1] == self.node.node_id or cur.share_w <= 0 or now >= cur.expires_at:
            return False
        return self.node.core.is_live(cur.key[1])

    # --- what the CLI and API show ---------------------------------------------------------

    def spikes(self) -> list[dict[str, Any]]:
        """Recent spikes this node proposed, newest first: plans, rounds, what each member
        applied, residual (``GET /v1/spikes``, ``meshagent spikes``)."""
        out = []
        for prop in reversed(self.recent):
            rounds = prop.report()
            out.append({
                "spike_id": prop.spike_id,
                "scope": {"kind": prop.scope.kind.name.lower(), "id": prop.scope.id},
                "epoch": prop.epoch,
                "released": prop.released,
                "superseded": prop.stopped and not prop.released,
                "rounds": [
                    {
                        "seq": r.seq, "base_seq": r.base_seq, "deficit_w": r.deficit_w, "planned_w": r.planned_w,
                        "applied_w": r.applied_w, "residual_w": r.residual_w,
                        "answered": r.answered, "silent": r.silent,
                        "applied": dict(sorted(r.applied.items())),
                    }
                    for r in rounds
                ],
                "residual_w": next((r.residual_w for r in reversed(rounds) if r.deficit_w > 0), 0.0),
            })
        return out

    def statistics(self) -> AllocatorStatistics:
        ms = self.member.statistics()
        return AllocatorStatistics(
            self._sent, self._received, ms.refused_not_detector, self._acks_sent,
            self._acks_received, self._deferred, ms.expired, self.member.share_w(),
        )
