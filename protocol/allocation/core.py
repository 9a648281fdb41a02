"""The allocation protocol's sans-IO cores: a member's side and a proposer's side.

Theory of operation
-------------------
A **member** keeps, per scope, the newest plan it has applied, ordered by
``(epoch, proposer id, seq)``: a plan with a higher key replaces the share, an equal key
only renews it (a plan applied twice changes nothing), a lower one is stale and ignored. So
competing proposers resolve the same way everywhere: the higher epoch, then the higher
proposer id, wins; a proposer that sees a higher key for its scope stops (``Proposer.yield_to``).

Its share comes from its own offer and its transformer's level (``plan.member_units``):

* an absolute plan (``base_seq == 0``) is evaluated on every offer the member published
  since the proposer's view was taken (``view_since_ms``) and on the one current then, and
  the smallest share wins. The proposer planned on one of those offers, so the member never
  takes more than was planned for it, and no transformer more than its headroom, however
  stale the view;
* an incremental plan (round 2, ``base_seq = b``) adds to what the member reported in its
  ACK of seq ``b``, planned over the limit left in that ACK. A member in the plan's silent
  filter (the proposer did not hear its ACK of ``b``) takes no increment but keeps what it
  applies, if that comes from plan ``b`` or a later one of the chain: an ACK that is late or
  lost must not take discharge away in the middle of a spike. The proposer counted what it
  last planned for a silent member against the headroom, so keeping it breaks no limit; it
  re-planned the residual over the others, so a late ACK over-delivers (within every limit)
  until the next renewal re-bases (below). A silent member whose share is older than ``b``
  releases to 0 (it may not have been counted). A Bloom false positive only withholds an
  increment from a member that did answer; the next round gives it.

Whatever the plan says, a member applies ``min(share, its limit now)``. Shares lapse at
``ttl`` unless renewed (the proposer re-sends its latest plan), so a lost proposer never
leaves vehicles discharging; a plan without levels releases at once.

A **proposer** plans round 1 over its view, collects ACKs and, once all are in or after
``round2_after_s``, re-plans the residual over those who answered (silence counts as 0:
the headroom left in each transformer excludes what silent members were planned, since
they may be applying it), up to ``max_rounds``. At each renewal, if the members' newest ACKs
sum to more than the deficit (silent members kept shares the others then covered too), it
re-bases: a new absolute plan over its last view that members only lower their shares to
(``trim``), and its round 2 raises those with room, so late ACKs cost at most one renewal
period of over-delivery and never a shortfall, and every share moves one way per plan.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Iterable, Mapping

import attrs

from protocol.allocation.messages import Ack, Plan, in_silent, silent_filter
from protocol.allocation.plan import (
    UNITS_PER_W,
    MemberOffer,
    member_units,
    plan,
    to_units,
)
from protocol.allocation.plan import Plan as PlanResult
from protocol.state import Scope

PlanKey = tuple[int, str, int]  # (epoch, proposer id, seq)


@attrs.frozen
class OfferSample:
    """One offer a member published (what a proposer may have planned on)."""

    at_ms: int
    limit_w: float
    weight: float
    rated_w: float = 0.0  # the droop's base (a frequency plan leaves the droop its part)

    def spare_w(self, droop_pu: float) -> float:
        return max(0.0, self.limit_w - droop_pu * self.rated_w)


@attrs.frozen
class Applied:
    """What a member decided for one plan: the share to apply now and the ACK to send."""

    scope: Scope
    key: PlanKey
    share_w: float
    ack: Ack
    renewed: bool  # the same plan again: nothing changed


@attrs.define
class _ScopeState:
    key: PlanKey
    share_w: float
    expires_at: float
    spike_id: str


@attrs.frozen
class MemberStatistics:
    plans_applied: int
    plans_renewed: int
    plans_stale: int
    refused_not_detector: int
    expired: int


class Member:
    """A member's side: turn PLANs into shares (see the module docstring)."""

    def __init__(self, node_id: str, transformer_id: str, history: int = 64) -> None:
        self.node_id = node_id
        self.transformer_id = transformer_id
        self.offers: collections.deque[OfferSample] = collections.deque(maxlen=history)
        self.scopes: dict[Scope, _ScopeState] = {}
        self.acks: dict[tuple[Scope, PlanKey], Ack] = {}
        self._applied = self._renewed = self._stale = self._refused = self._expired = 0

    def offer(self, at_ms: int, limit_w: float, weight: float, rated_w: float = 0.0) -> None:
        """Note an offer this member published (call on every record it publishes)."""
        self.offers.append(OfferSample(at_ms, limit_w, weight, rated_w))

    def share_w(self) -> float:
        """The sum of this member's shares (before its own limit: the caller clamps)."""
        return math.fsum(s.share_w for s in self.scopes.values())

    def receive(
        self,
        origin_id: str,
        is_detector: bool,
        msg: Plan,
        now: float,
        limit_now_w: float,
        weight_now: float,
    ) -> Applied | None:
        """A PLAN arrived (verified, from ``origin_id``). None: refused or stale."""
        if not is_detector:
            self._refused += 1
            return None
        key = (msg.epoch, origin_id, msg.seq)
        cur = self.scopes.get(msg.scope)
        if cur is not None and key < cur.key:
            self._stale += 1
            return None
        ttl = msg.ttl_ms / 1000.0
        if cur is not None and key == cur.key:
            cur.expires_at = now + ttl
            self._renewed += 1
            ack = self.acks.get((msg.scope, key))
            if ack is None:
                return None
            return Applied(msg.scope, key, cur.share_w, ack, renewed=True)
        units = self._units(origin_id, msg)
        others = math.fsum(s.share_w for sc, s in self.scopes.items() if sc != msg.scope)
        # a frequency plan plans over what the member's own droop leaves of its limit
        rated = self.offers[-1].rated_w if self.offers else 0.0
        room = max(0.0, limit_now_w - others - msg.droop_pu * rated)
        share = min(units / UNITS_PER_W, to_units(room) / UNITS_PER_W)
        if share > 0 or msg.levels:
            self.scopes[msg.scope] = _ScopeState(key, share, now + ttl, msg.spike_id)
        else:  # a release
            self.scopes[msg.scope] = _ScopeState(key, 0.0, now + ttl, msg.spike_id)
        ack = Ack(msg.scope, msg.epoch, msg.seq, share, max(0.0, room), max(0.0, weight_now), self.transformer_id)
        self.acks[(msg.scope, key)] = ack
        # keep the ACKs of the current plan key family only (bounded memory)
        for k in [k for k in self.acks if k[0] == msg.scope and k[1][:2] != key[:2]]:
            del self.acks[k]
        self._applied += 1
        return Applied(msg.scope, key, share, ack, renewed=False)

    def _units(self, origin_id: str, msg: Plan) -> int:
        level = msg.level_of(self.transformer_id)
        if level is None:
            return 0
        if msg.base_seq == 0:
            samples = self._since(msg.view_since_ms)
            if not samples:
                return 0
            units = min(member_units(self.node_id, s.spare_w(msg.droop_pu), s.weight, level) for s in samples)
            if msg.trim:  # lower only: the next round raises whoever has room
                cur = self.scopes.get(msg.scope)
                held = to_units(cur.share_w) if cur is not None and cur.key[:2] == (msg.epoch, origin_id) else 0
                units = min(units, held)
            return units
        if in_silent(self.node_id, msg.silent):
            return self._kept(origin_id, msg)
        base = self.acks.get((msg.scope, (msg.epoch, origin_id, msg.base_seq)))
        if base is None:
            return 0
        delta = member_units(self.node_id, base.limit_w - base.applied_w, base.weight, level)
        return to_units(base.applied_w) + delta

    def _kept(self, origin_id: str, msg: Plan) -> int:
        """A silent member's share: what it applies now if that comes from this plan's chain.

        The proposer did not hear this member's ACK of ``base_seq``. It may be late or lost
        rather than unsent, so the member keeps what it applies (no increment: the proposer
        re-planned the residual over the others), and the proposer counted what it last
        planned for the member against the headroom. Only a share from the base plan or a
        later one of the same chain is kept: one from an older plan (this member missed the
        base) was maybe not counted, and is released.
        """
        cur = self.scopes.get(msg.scope)
        if cur is None or cur.key[:2] != (msg.epoch, origin_id) or cur.key[2] < msg.base_seq:
            return 0
        return to_units(cur.share_w)

    def _since(self, since_ms: int) -> list[OfferSample]:
        """Offers published at or after ``since_ms`` and the one current at that time."""
        out: list[OfferSample] = []
        before: OfferSample | None = None
        for s in self.offers:
            if s.at_ms >= since_ms:
                out.append(s)
            elif before is None or s.at_ms >= before.at_ms:
                before = s
        if before is not None:
            out.append(before)
        elif out and len(self.offers) == self.offers.maxlen:
            return []  # history no longer reaches the view: refuse rather than guess
        return out

    def tick(self, now: float) -> list[Scope]:
        """Drop shares past their expiry; returns the scopes released."""
        gone = [sc for sc, s in self.scopes.items() if s.share_w > 0 and now >= s.expires_at]
        for sc in gone:
            self.scopes[sc].share_w = 0.0
            self._expired += 1
        return gone

    def next_deadline(self) -> float:
        return min((s.expires_at for s in self.scopes.values() if s.share_w > 0), default=math.inf)

    def statistics(self) -> MemberStatistics:
        return MemberStatistics(self._applied, self._renewed, self._stale, self._refused, self._expired)


# --- the proposer -------------------------------------------------------------------------


@attrs.frozen
class ViewOffer:
    """A member's offer as the proposer's view has it (from its gossiped state record)."""

    node_id: str
    transformer_id: str
    limit_w: float
    weight: float
    updated_at_ms: int
    version: int = 0
    rated_w: float = 0.0  # the droop's base (its record's rated_discharge_w)


@attrs.frozen
class Round:
    seq: int
    base_seq: int
    deficit_w: float
    planned_w: float
    shortfall_w: float
    planned: Mapping[str, float]  # node -> W
    message: Plan
    at: float = 0.0  # when it was sent first


@attrs.frozen
class RoundReport:
    """One round as ``meshagent spikes`` shows it."""

    seq: int
    deficit_w: float
    planned_w: float
    applied_w: float
    residual_w: float
    answered: int
    silent: int
    applied: Mapping[str, float]
    base_seq: int = 0  # 0: an absolute plan; else the round this one corrects


def view_digest(offers: Iterable[ViewOffer]) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for o in sorted(offers, key=lambda o: o.node_id):
        h.update(f"{o.node_id}\0{o.version}\0".encode())
    return h.digest()


@attrs.frozen
class DroopShortfall:
    """What a frequency event's droop asks of a scope and cannot get from where it asks it."""

    droop_pu: float
    asked_w: float  # sum of droop_pu * rated over the view
    undelivered_w: float  # the part members cannot deliver (no vehicle, SoC floor, heat)
    spare_w: float  # what members have left after their own droop
    headroom_w: Mapping[str, float]  # each transformer's headroom less what its droop delivers
    delivered_w: Mapping[str, float]  # what the droop delivers under each transformer


def droop_shortfall(view: Iterable[ViewOffer], droop_pu: float, headroom_w: Mapping[str, float]) -> DroopShortfall:
    """Every member's droop asks ``droop_pu * rated`` of it and delivers at most its limit.

    The rest is what a frequency plan (``Proposer.start(..., droop_pu=...)``) spreads over the
    members' spare, each transformer within what its headroom leaves after its own droop.
    """
    asked = undelivered = spare = 0.0
    delivered: dict[str, float] = {}
    for o in view:
        want = droop_pu * o.rated_w
        got = min(want, max(0.0, o.limit_w))
        asked += want
        undelivered += want - got
        spare += max(0.0, o.limit_w - want)
        delivered[o.transformer_id] = delivered.get(o.transformer_id, 0.0) + got
    heads = {t: max(0.0, h - delivered.get(t, 0.0)) for t, h in headroom_w.items()}
    return DroopShortfall(droop_pu, asked, undelivered, spare, heads, delivered)


class Proposer:
    """A detector's side for one spike in one scope."""

    def __init__(
        self,
        node_id: str,
        scope: Scope,
        epoch: int,
        *,
        spike_id: str = "",
        round2_after_s: float = 0.02,
        renew_every_s: float = 1.0,
        ttl_ms: int = 5_000,
        max_rounds: int = 3,
    ) -> None:
        self.node_id = node_id
        self.scope = scope
        self.epoch = epoch
        self.spike_id = spike_id
        self.round2_after_s = round2_after_s
        self.renew_every_s = renew_every_s
        self.ttl_ms = ttl_ms
        self.max_rounds = max_rounds
        self.seq = 0
        self.rounds: list[Round] = []
        self.acks: dict[int, dict[str, Ack]] = {}
        self.transformers: dict[str, str] = {}
        self.headroom_w: dict[str, float] = {}
        self.view: list[ViewOffer] = []
        self.droop_pu = 0.0
        self.rebased = 0
        self._round_started = 0.0
        self._round_of_update = 0  # rounds since the last absolute plan
        self._last_sent = 0.0
        self.stopped = False
        self.released = False

    @property
    def key(self) -> PlanKey:
        return (self.epoch, self.node_id, self.seq)

    @property
    def current(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None

    def start(
        self,
        deficit_w: float,
        view: Iterable[ViewOffer],
        headroom_w: Mapping[str, float],
        now: float,
        *,
        trim: bool = False,
        droop_pu: float = 0.0,
    ) -> Plan:
        """An absolute plan over the view (a new spike, or a new deficit for this one).

        ``trim``: the re-base of over-delivery; members only lower their shares to it (every
        share moving one way, a transformer's sum never passes the larger of before and
        after while the plan spreads), and round 2 raises the ones with room. ``droop_pu``: a
        frequency event's plan, over the spare each member's own droop leaves."""
        view = list(view)
        self.view = view
        self.headroom_w = dict(headroom_w)
        self.droop_pu = droop_pu
        self.transformers = {o.node_id: o.transformer_id for o in view}
        result = plan(
            [MemberOffer(o.node_id, o.transformer_id, max(0.0, o.limit_w - droop_pu * o.rated_w), o.weight)
             for o in view],
            deficit_w,
            headroom_w,
        )
        since = min((o.updated_at_ms for o in view), default=0)
        self._round_of_update = 1
        return self._emit(result, 0, since, view_digest(view), b"", now, trim)

    def _emit(
        self, result: PlanResult, base_seq: int, since: int, digest: bytes, silent: bytes, now: float,
        trim: bool = False,
    ) -> Plan:
        self.seq += 1
        msg = Plan(
            self.scope, self.epoch, self.seq, base_seq, result.deficit_w, since, digest,
            result.levels, silent, self.ttl_ms, self.spike_id, trim, self.droop_pu,
        )
        planned = {n: u / UNITS_PER_W for n, u in result.shares_units.items()}
        self.rounds.append(
            Round(self.seq, base_seq, result.deficit_w, result.planned_w, result.shortfall_w, planned, msg, now)
        )
        self.acks[self.seq] = {}
        self._round_started = self._last_sent = now
        return msg

    def on_ack(self, sender_id: str, ack: Ack) -> None:
        if ack.scope != self.scope or ack.epoch != self.epoch or ack.seq not in self.acks:
            return
        self.acks[ack.seq][sender_id] = ack
        self.transformers.setdefault(sender_id, ack.transformer_id)

    def applied_w(self, seq: int | None = None) -> float:
        seq = self.seq if seq is None else seq
        return math.fsum(a.applied_w for a in self.acks.get(seq, {}).values())

    def _target_w(self) -> float:
        # the deficit of the latest absolute plan
        for r in reversed(self.rounds):
            if r.base_seq == 0:
                return r.deficit_w
        return 0.0

    def next_deadline(self) -> float:
        if self.stopped or not self.rounds:
            return math.inf
        renew = self._last_sent + self.renew_every_s
        if self._round_of_update < self.max_rounds:
            return min(renew, self._round_started + self.round2_after_s)
        return renew

    def all_answered(self) -> bool:
        cur = self.current
        if cur is None:
            return False
        expected = set(cur.planned) if cur.base_seq else set(self.transformers)
        return expected <= set(self.acks.get(cur.seq, {}))

    def tick(self, now: float) -> Plan | None:
        """Round 2 (and 3) when due or when every ACK is in; else a renewal when due."""
        cur = self.current
        if self.stopped or cur is None:
            return None
        if self._round_of_update < self.max_rounds and (
            now >= self._round_started + self.round2_after_s or self.all_answered()
        ):
            nxt = self._next_round(now)
            if nxt is not None:
                return nxt
            self._round_of_update = self.max_rounds  # nothing left to re-plan
        if now >= self._last_sent + self.renew_every_s:
            # short: one more round over the newest answers (when it plans anything)
            nxt = self._next_round(now, only_if_planned=True)
            if nxt is not None:
                return nxt
            target = self._target_w()
            if to_units(self.covered_w() - target) > 0 and self.view:
                self.rebased += 1
                return self.start(target, self.view, self.headroom_w, now, trim=True, droop_pu=self.droop_pu)
            self._last_sent = now
            return cur.message
        return None

    def covered_w(self) -> float:
        """What the members apply by their newest ACKs since the latest absolute plan."""
        first = next((r.seq for r in reversed(self.rounds) if r.base_seq == 0), 0)
        newest: dict[str, float] = {}
        for seq in sorted(self.acks):
            if seq >= first:
                newest.update((n, a.applied_w) for n, a in self.acks[seq].items())
        return math.fsum(newest.values())

    def _next_round(self, now: float, *, only_if_planned: bool = False) -> Plan | None:
        cur = self.current
        assert cur is not None
        answered = self.acks.get(cur.seq, {})
        # everyone the view or any ACK named and who did not answer this round is silent:
        # it may hold an ACK of this round we never got, and must not build on it
        silent = sorted(set(self.transformers) - set(answered))
        residual = (
            self._target_w()
            - math.fsum(a.applied_w for a in answered.values())
            - math.fsum(self._presumed_w(cur, n) for n in silent)
        )
        if to_units(residual) <= 0:
            return None
        used: dict[str, float] = {}
        for a in answered.values():
            used[a.transformer_id] = used.get(a.transformer_id, 0.0) + a.applied_w
        for n in silent:
            tid = self.transformers.get(n, "")
            used[tid] = used.get(tid, 0.0) + self._held_bound(n, now)
        headroom = {t: max(0.0, h - used.get(t, 0.0)) for t, h in self.headroom_w.items()}
        offers = [
            MemberOffer(n, a.transformer_id, a.limit_w - a.applied_w, a.weight)
            for n, a in sorted(answered.items())
        ]
        result = plan(offers, residual, headroom)
        if only_if_planned and to_units(result.planned_w) <= 0:
            return None
        self._round_of_update += 1
        msg = self._emit(result, cur.seq, 0, b"", silent_filter(silent), now)
        # a round-2 share is the base plus the increment: record the totals
        last = self.rounds[-1]
        totals = {n: a.applied_w + last.planned.get(n, 0.0) for n, a in answered.items()}
        self.rounds[-1] = attrs.evolve(last, planned=totals)
        return msg

    def _presumed_w(self, cur: Round, node_id: str) -> float:
        """What a member silent in ``cur`` is taken to apply when planning the residual.

        One that answered the round before ``cur`` is alive and its ACK late or lost: it holds
        what ``cur`` planned for it (or, if ``cur`` never reached it, the share it last
        acknowledged, a little less: the next round sees it). One silent twice, or never heard
        in this plan's chain, may be gone: taken as 0, the others cover it (if it is alive it
        keeps its share: over-delivery, within every limit, until the renewal trims it). After
        a trim, one that answered before holds at most the trimmed share.
        """
        if cur.base_seq:
            return cur.planned.get(node_id, 0.0)
        if not cur.message.trim:
            return 0.0
        for seq in sorted(self.acks, reverse=True):  # its newest ACK before the trim
            ack = self.acks[seq].get(node_id) if seq < cur.seq else None
            if ack is not None:
                return min(cur.planned.get(node_id, 0.0), ack.applied_w)
        return 0.0

    def held_w(self, now: float) -> dict[str, float]:
        """Per transformer, the most this proposer's members may apply for it now (each at
        ``_held_bound``): what another plan of the same detector must leave to it."""
        if self.stopped:
            return {}
        out: dict[str, float] = {}
        for n, t in self.transformers.items():
            out[t] = out.get(t, 0.0) + self._held_bound(n, now)
        return out

    def _held_bound(self, node_id: str, now: float) -> float:
        """The most a silent member may still apply for this proposer: the largest share any
        of its plans gave it that has not lapsed (a member that missed an update or a trim
        holds an older, maybe larger share until it hears a newer plan or ``ttl_ms`` passes)."""
        first = next((i for i in range(len(self.rounds) - 1, -1, -1) if self.rounds[i].base_seq == 0), 0)
        horizon = now - self.ttl_ms / 1000.0 - self.renew_every_s
        best = 0.0
        for i, r in enumerate(self.rounds):
            superseded_at = self.rounds[i + 1].at if i + 1 < len(self.rounds) else now
            if i >= first or superseded_at >= horizon:
                best = max(best, r.planned.get(node_id, 0.0))
        return best

    def release(self, now: float) -> Plan:
        """The spike ended: a plan without levels sends every share to 0."""
        self.released = True
        self.stopped = True
        return self._emit(PlanResult(0.0, 0.0, 0.0, (), {}, ()), 0, 0, b"", b"", now)

    def yield_to(self, key: PlanKey) -> bool:
        """Another proposer's plan for this scope: stop if it outranks ours."""
        if key > self.key:
            self.stopped = True
        return self.stopped

    def report(self) -> list[RoundReport]:
        out = []
        for r in self.rounds:
            acks = self.acks.get(r.seq, {})
            applied = {n: a.applied_w for n, a in acks.items()}
            total = math.fsum(applied.values())
            out.append(
                RoundReport(
                    r.seq, r.deficit_w, r.planned_w, total,
                    max(0.0, self._target_w_at(r) - total), len(acks),
                    max(0, len(r.planned) - len(acks)), applied, r.base_seq,
                )
            )
        return out

    def _target_w_at(self, r: Round) -> float:
        idx = self.rounds.index(r)
        for prev in reversed(self.rounds[: idx + 1]):
            if prev.base_seq == 0:
                return prev.deficit_w
        return 0.0
