"""The membership core: SWIM with Lifeguard, as a sans-IO state machine.

Theory of operation
-------------------
``Membership`` is driven from outside. The shell feeds it verified packets with
``receive(sender_id, source_address, message, now)`` and wakes it with ``tick(now)`` at
``next_deadline()``; it drains ``outgoing()`` (``Send``: address, message, reliable) and
``events()`` (members joined, suspected, dead, left, records updated, urgent messages
delivered). Time is the caller's monotonic clock in float seconds; the core never reads a
clock, opens a socket or sleeps, so the same code runs over UDP in real time and in a
discrete-event simulation of ten thousand nodes.

Failure detection (SWIM, with Lifeguard):

* every ``probe_interval`` (scaled by the health score) the next member of a shuffled
  round-robin order gets a ``Ping``; a suspect target also gets the accusation (buddy
  system) so it can refute at once;
* no ``Ack`` within ``probe_timeout``: ``PingReq`` to ``indirect_checks`` random members,
  which ping the target for us and answer ``Ack`` or, Lifeguard, ``Nack``; plus a TCP ping
  (a ``Send`` with ``reliable=True``);
* no ack by the end of the interval: the target is suspected. Missing nacks raise our own
  health score (we may be the sick one); an ack lowers it;
* a suspicion expires after a timeout that shrinks with independent confirmations
  (``protocol.swim.suspicion``); we then probe the suspect ourselves, out of turn (a last
  chance: its refutation may have missed us), and declare it dead only if
  ``last_chance_probes`` such probes in a row fail; if it answers, we wait another minimum
  timeout and check again.
  A member that hears it is suspected or dead raises its incarnation and says it is alive
  (refutation); one that hears a stale accusation re-tells the relay its current ``Alive``
  (on the ack when the accusation came in a buddy ping);
* a tick that arrives much later than asked (the process was paused) is treated as our own
  fault: the current probe is dropped without accusing anyone, due suspicions get one more
  probe interval for refutations already waiting in our socket, and the health score rises.

Dissemination: every state change this node accepts is queued (``protocol.swim.queue``) and
piggybacked on pings, acks and ping-reqs, and sent to ``gossip_nodes`` random members every
``gossip_interval``. Push-pull (a ``PushPull`` over TCP) exchanges full state with one random
member at an interval that grows with N, and with one dead member to heal partitions; an
isolated node keeps pushing to its seeds.

The transition rules live in ``_on_alive``, ``_on_suspect``, ``_on_dead``, ``_on_left`` (and
``_on_record``, ``_on_broadcast``): a rumor that is not newer than what we know changes nothing.
Rumors written by someone other than the relay must carry their author's signature
(``protocol.swim.auth``); only a node can raise its own incarnation, leave, or publish its
own record. Messages from revoked members, and rumors about or by them, are ignored.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs

from protocol import codec
from protocol.errors import BadPacket, LocalProtocolError
from protocol.messages import MESSAGE_TYPES, type_byte_of
from protocol.state import Capacity, Scope, StateRecord, capacity_sum, newer
from protocol.swim.auth import ItemAuthenticator, Unsigned
from protocol.swim.awareness import Awareness
from protocol.swim.config import SwimConfig
from protocol.swim.events import (
    Address,
    Delivered,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    MemberSuspect,
    MemberUpdated,
    RecordRemoved,
    RecordUpdated,
    Refuted,
    Send,
)
from protocol.swim.members import (
    DOWN,
    Member,
    MemberSnapshot,
    MemberStatus,
    MemberTable,
    ProbeOrder,
)
from protocol.swim.messages import (
    NO_RUMORS,
    Ack,
    Alive,
    Broadcast,
    Dead,
    Gossip,
    Left,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Rumors,
    Suspect,
    Urgent,
    author_of,
    bundle,
    signing_payload,
)
from protocol.swim.queue import BroadcastQueue, retransmit_limit
from protocol.swim.suspicion import Suspicion, suspicion_timeout
from protocol.wire import overhead_bytes

ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
DEAD = MemberStatus.DEAD
LEFT = MemberStatus.LEFT

PUSH_PULL_SCALE_THRESHOLD = 32
POST_JOIN_SYNC_PERIODS = 3  # probe periods after a join until one extra full sync
SEQ_MOD = 2**32
MAX_SEEN_BROADCASTS = 8192
# msgpack bytes of a message around its rumors, beyond the variable-length strings:
# array header, u32 seq, and a Rumors array of six lists whose headers may grow to 3 bytes.
_RUMORS_EMPTY_MAX = 1 + 6 * 3
_PING_BASE = 1 + 5 + 2 + _RUMORS_EMPTY_MAX
_ACK_BASE = 1 + 5 + _RUMORS_EMPTY_MAX
_PING_REQ_BASE = 1 + 5 + 2 + 2 + 3 + 1 + _RUMORS_EMPTY_MAX
_GOSSIP_BASE = 1 + _RUMORS_EMPTY_MAX
_URGENT_BASE = 1

# timer kinds in the heap
_T_SUSPICION = 0
_T_RELAY = 1
_T_REAP_RECORD = 2
_T_REAP_MEMBER = 3


@attrs.frozen
class LocalNode:
    """Who this core speaks for."""

    node_id: str
    address: Address  # advertised (host, port)
    site_id: str = ""
    transformer_id: str = ""


@attrs.frozen
class MembershipStatistics:
    alive: int
    suspect: int
    dead: int
    left: int
    incarnation: int
    health_score: int
    queued_rumors: int
    probes: int
    probe_failures: int
    indirect_probes: int
    suspicions: int
    deaths_declared: int
    refutations: int
    push_pulls_sent: int
    push_pulls_refused: int
    rumors_rejected: int  # bad signature, about/by a revoked member, undecodable body
    late_ticks: int


@attrs.define(slots=True)
class _Probe:
    target_id: str
    seq: int
    start: float
    direct_deadline: float
    end: float
    indirect: bool = False
    relays: set[str] = attrs.Factory(set)
    nacks: set[str] = attrs.Factory(set)


@attrs.define(slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    target_id: str
    deadline: float
    want_nack: bool


@attrs.define
class _Counters:
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    deaths_declared: int = 0
    refutations: int = 0
    push_pulls_sent: int = 0
    push_pulls_refused: int = 0
    rumors_rejected: int = 0
    late_ticks: int = 0


def push_pull_scale(interval_s: float, n: int) -> float:
    """Push-pull interval for ``n`` members: doubles for every doubling beyond 32."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval_s
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval_s


def _rumor_size(item: Any) -> int:
    return len(codec.encode(item))


class Membership:
    """SWIM + Lifeguard membership of one node. See the module docstring."""

    def __init__(
        self,
        config: SwimConfig,
        me: LocalNode,
        rng: random.Random,
        now: float,
        *,
        authenticator: ItemAuthenticator | None = None,
        incarnation: int = 0,
        envelope_overhead_bytes: int | None = None,
        snapshot: MemberSnapshot | None = None,
    ) -> None:
        """A node's membership, alone until ``join`` (or a peer's push-pull) finds others.

        ``rng`` makes every random choice (seed it in tests and simulations). ``now`` is the
        caller's monotonic clock in seconds. ``authenticator`` signs the rumors this node
        writes and checks relayed ones; leave it ``None`` only in simulations (rumors are
        then unsigned and trusted). ``incarnation`` is where this life starts: a restarted
        node that remembers nothing may start at 0, it will refute its previous life's
        numbers as it learns them. ``envelope_overhead_bytes`` is what the shell's envelope
        adds to each datagram (default: ``protocol.wire.overhead_bytes`` for this node id,
        without an attached certificate). ``snapshot`` starts from a known membership.
        """
        self.config = config
        self.me = me
        self.node_id = me.node_id
        self._rng = rng
        self._auth: ItemAuthenticator = authenticator or Unsigned()
        self._signed = authenticator is not None
        overhead = (
            overhead_bytes(len(me.node_id.encode()))
            if envelope_overhead_bytes is None
            else envelope_overhead_bytes
        )
        self._body_budget = config.max_packet_bytes - overhead
        if self._body_budget < 256:
            raise LocalProtocolError("max_packet_bytes leaves no room for a message body")
        self.incarnation = incarnation
        self._members = MemberTable(snapshot)
        self._members.remove(me.node_id)  # a snapshot may include us; we are not our own member
        self._records: dict[str, StateRecord] = {}
        self._my_record: StateRecord | None = None
        self._record_floor: tuple[int, int] = (-1, -1)  # newest own record of a previous life
        self._queue = BroadcastQueue()
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, int, Any, Any]] = []
        self._timer_counter = 0
        self._out: list[Send] = []
        self._events: list[Any] = []
        self._seq = rng.randrange(SEQ_MOD)
        self._probe: _Probe | None = None
        self._order = ProbeOrder()
        self._source: Address = me.address  # where the message being handled came from
        self._retold: dict[Address, float] = {}
        self._retell = False  # the message being handled carried a stale accusation of us
        self._probe_soon: dict[str, None] = {}  # suspects to probe out of turn (ordered set)
        self._relays: dict[int, _Relay] = {}
        self._seeds: list[Address] = []
        self._push_inflight: dict[Address, float] = {}
        self._inbound_push_pulls: deque[float] = deque()
        self._revoked: set[str] = set()
        self._seen_broadcasts: dict[tuple[str, int], float] = {}
        self._urgent_serial = 0
        self._left = False
        self._left_item: Left | None = None
        self._leave_deadline = math.inf  # after ``leave``: stop spreading ``Left`` by then
        self._stats = _Counters()
        # Stagger the periodic work so a mesh started at once does not beat in step.
        self._next_probe_at = now + rng.uniform(0, config.probe_interval_s)
        self._next_gossip_at = now + rng.uniform(0, config.gossip_interval_s)
        self._next_push_pull_at = now + rng.uniform(
            0, push_pull_scale(config.push_pull_interval_s, self._members.live_count + 1)
        )
        self._next_rejoin_at = math.inf
        self._synced = True  # no join pending
        self._stranger_syncs: dict[Address, float] = {}
        self._rejoin_delay = config.rejoin_interval_s
        self._alive_item = self._sign(self._make_alive())
        known = snapshot.by_id.get(me.node_id) if snapshot is not None else None
        if known is not None and known.incarnation == incarnation:
            self._alive_item = known.alive  # restored: the mesh already knows us as we are
        else:
            self._enqueue(("m", self.node_id), self._alive_item)

    # --- inputs ------------------------------------------------------------------------------

    def receive(
        self,
        sender_id: str,
        source_address: Address,
        message: Any,
        now: float,
        *,
        reliable: bool = False,
    ) -> None:
        """Handle one verified message from ``sender_id`` (the envelope's signer).

        ``reliable`` says it came over TCP: replies to it then go over TCP too, to the
        sender's advertised address. Raises ``LocalProtocolError`` for a message type this
        core does not handle (route only ``HANDLED_MESSAGES`` here).
        """
        handler = _HANDLERS.get(type(message))
        if handler is None:
            raise LocalProtocolError(f"{type(message).__name__} is not a membership message")
        if sender_id == self.node_id or sender_id in self._revoked:
            return
        if reliable:  # a TCP peer's source port is ephemeral: answer its advertised address
            known = self._members.get(sender_id)
            if known is not None:
                source_address = known.address
        self._source = source_address
        self._retell = False
        handler(self, sender_id, source_address, message, now, reliable)
        if self._retell:
            self._retell = False
            # at most once per probe interval per relay: stale rumors echo for a while
            last = self._retold.get(source_address)
            if last is None or now - last >= self.config.probe_interval_s:
                if len(self._retold) > 1024:
                    self._retold.clear()
                self._retold[source_address] = now
                self._out.append(Send(source_address, Gossip(Rumors(alive=(self._alive_item,)))))

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``. Call at (or after) ``next_deadline()``."""
        due = self.next_deadline()
        if now - due > self.config.probe_interval_s:
            self._woke_late(now)
        cfg = self.config
        probe = self._probe
        if probe is not None and not probe.indirect and now >= probe.direct_deadline:
            self._probe_indirect(probe, now)
        probe = self._probe
        if probe is not None and now >= probe.end:
            self._probe_end(probe, now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if self._timer_valid(entry):
                self._timer_fire(entry, now)
        if not self._left:
            if now >= self._next_probe_at:
                self._probe_start(now)
            if now >= self._next_push_pull_at:
                self._push_pull_tick(now)
            if now >= self._next_rejoin_at:
                self._rejoin_tick(now)
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + cfg.gossip_interval_s
            self._gossip(now)
        if now >= self._leave_deadline:
            self._leave_deadline = math.inf
            self._queue.remove(("m", self.node_id))  # spread long enough: ``leave_flushed``

    def next_deadline(self) -> float:
        """When ``tick`` must next run (``math.inf`` when nothing is scheduled)."""
        timers = self._timers
        while timers and not self._timer_valid(timers[0]):
            heapq.heappop(timers)
        d = timers[0][0] if timers else math.inf
        if self._next_gossip_at < d:
            d = self._next_gossip_at
        if self._leave_deadline < d:
            d = self._leave_deadline
        if not self._left:
            d = min(d, self._next_probe_at, self._next_push_pull_at, self._next_rejoin_at)
        probe = self._probe
        if probe is not None:
            d = min(d, probe.end if probe.indirect else probe.direct_deadline)
        return d

    # --- outputs ------------------------------------------------------------------------------

    def outgoing(self) -> list[Send]:
        """Take the packets to send, in order."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Any]:
        """Take the membership events, in order."""
        ev, self._events = self._events, []
        return ev

    # --- commands -----------------------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Push-pull with every seed now, and again while this node has no live peer."""
        self._seeds = [(str(host), int(port)) for host, port in seeds]
        for address in self._seeds:
            self._push_pull_to(address, now, join=True, force=True)
        # Until a full state has come back, retry soon with backoff: a seed busy with a
        # join storm refuses push-pulls beyond its inbound limit, and waiting the whole
        # rejoin interval would leave the refused joiners half-informed for that long.
        self._synced = False
        self._rejoin_delay = self.config.probe_interval_s
        self._next_rejoin_at = self._rejoin_at(now) if self._seeds else math.inf

    def leave(self, now: float) -> None:
        """Leave gracefully: tell a few peers at once and gossip ``Left`` until it is spread.

        Keep driving the core (``tick``/``receive``) until ``leave_flushed`` is true (a few
        gossip intervals), then stop.
        """
        if self._left:
            return
        self.incarnation += 1
        item = self._sign(Left(self.node_id, self.incarnation))
        self._left = True
        self._left_item = item
        self._leave_deadline = now + self.config.leave_timeout_s
        self._probe = None
        self._enqueue(("m", self.node_id), item)
        message = Gossip(Rumors(left=(item,)))
        for m in self._members.sample(3 * max(1, self.config.gossip_nodes), self._rng, _is_live):
            self._out.append(Send(m.address, message))

    @property
    def has_left(self) -> bool:
        return self._left

    @property
    def leave_flushed(self) -> bool:
        """After ``leave``: ``Left`` is spread, the node may stop.

        True once the rumor has used up its retransmissions, or no live member is left to
        tell (the last members leaving together), or ``leave_timeout_s`` has passed.
        """
        return self._left and (
            self._queue.get(("m", self.node_id)) is None or self._members.live_count == 0
        )

    def reliable_failed(self, address: Address, message: Any, now: float) -> None:
        """The shell could not deliver a reliable send (refused, broken or timed out).

        A push-pull to ``address`` is then no longer in flight, so the next join retry
        goes out on time instead of waiting out ``reliable_timeout_s``.
        """
        if isinstance(message, PushPull):
            self._push_inflight.pop(address, None)

    def publish_record(
        self,
        now: float,
        *,
        discharge_available_w: float,
        energy_above_min_soc_wh: float,
        soc: float,
        thermal_derating: float = 0.0,
        faults: tuple[str, ...] = (),
        updated_at_ms: int,
        auth_list_version: int = 0,
        auth_list_hash: bytes = b"",
    ) -> StateRecord:
        """Publish this node's new state record (``updated_at_ms``: the shell's wall clock).

        ``auth_list_version``/``auth_list_hash``: the summary of this node's local
        authorization list (0 and empty: none), which peers replicate by.
        """
        version = 1
        if self._my_record is not None:
            version = self._my_record.version + 1
        if (self.incarnation, version) <= self._record_floor:
            version = self._record_floor[1] + 1
        record = StateRecord(
            node_id=self.node_id,
            incarnation=self.incarnation,
            version=version,
            site_id=self.me.site_id,
            transformer_id=self.me.transformer_id,
            discharge_available_w=float(discharge_available_w),
            energy_above_min_soc_wh=float(energy_above_min_soc_wh),
            soc=float(soc),
            thermal_derating=float(thermal_derating),
            faults=tuple(faults),
            updated_at_ms=updated_at_ms,
            auth_list_version=auth_list_version,
            auth_list_hash=bytes(auth_list_hash),
        )
        return self._set_my_record(record)

    def urgent(self, message: Any, scope: Scope, now: float) -> int:
        """Send ``message`` to every live member of ``scope`` now, and queue it for gossip.

        Members deliver it once (a ``Delivered`` event) whichever way it reaches them first.
        Returns the number of direct sends. A message too large for one datagram goes over
        TCP and is not piggybacked.
        """
        self._urgent_serial += 1
        item = self._sign(
            Broadcast(
                self.node_id, self._urgent_serial, scope, type_byte_of(message),
                codec.encode(message),
            )
        )
        self._remember_broadcast((self.node_id, item.serial), now)
        size = _rumor_size(item)
        fits = _URGENT_BASE + size <= self._body_budget
        wrapped = Urgent(item)
        sent = 0
        for m in self._members:
            if m.live and scope.contains(m.site_id, m.transformer_id):
                self._out.append(Send(m.address, wrapped, not fits))
                sent += 1
        if fits:
            self._queue.put(("u", self.node_id, item.serial), item, size)
        return sent

    def revoke(self, node_id: str, now: float) -> None:
        """Forget ``node_id`` for good: its certificate was revoked."""
        if node_id in self._revoked:
            return
        self._revoked.add(node_id)
        if node_id == self.node_id:
            self._left = True
            self._probe = None
            self._events.append(MemberRemoved(node_id, "revoked"))
            return
        self._suspicions.pop(node_id, None)
        self._queue.remove(("m", node_id))
        self._queue.remove(("r", node_id))
        if self._records.pop(node_id, None) is not None:
            self._events.append(RecordRemoved(node_id))
        if self._members.remove(node_id) is not None:
            self._events.append(MemberRemoved(node_id, "revoked"))

    # --- views --------------------------------------------------------------------------------

    def member(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def members(self) -> list[Member]:
        return list(self._members)

    def live_members(self) -> list[Member]:
        return [m for m in self._members if m.live]

    @property
    def num_live(self) -> int:
        """Live members including this node."""
        return self._members.live_count + (0 if self._left else 1)

    def record(self, node_id: str) -> StateRecord | None:
        return self._records.get(node_id)

    def records(self) -> list[StateRecord]:
        return list(self._records.values())

    def is_live(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return not self._left
        m = self._members.get(node_id)
        return m is not None and m.live

    def capacity(self, scope: Scope | None = None) -> Capacity:
        """Sum of live members' (and this node's) offers in ``scope``."""
        return capacity_sum(self._records.values(), self.is_live, scope)

    @property
    def health_score(self) -> int:
        return self._awareness.score

    def statistics(self) -> MembershipStatistics:
        counts = dict.fromkeys(MemberStatus, 0)
        for m in self._members:
            counts[m.status] += 1
        c = self._stats
        return MembershipStatistics(
            alive=counts[ALIVE], suspect=counts[SUSPECT], dead=counts[DEAD], left=counts[LEFT],
            incarnation=self.incarnation, health_score=self._awareness.score,
            queued_rumors=len(self._queue), probes=c.probes, probe_failures=c.probe_failures,
            indirect_probes=c.indirect_probes, suspicions=c.suspicions,
            deaths_declared=c.deaths_declared, refutations=c.refutations,
            push_pulls_sent=c.push_pulls_sent, push_pulls_refused=c.push_pulls_refused,
            rumors_rejected=c.rumors_rejected, late_ticks=c.late_ticks,
        )

    # --- helpers ------------------------------------------------------------------------------

    def _make_alive(self) -> Alive:
        host, port = self.me.address
        return Alive(
            self.node_id, self.incarnation, host, port, self.me.site_id, self.me.transformer_id
        )

    def _sign(self, item: Any) -> Any:
        if not self._signed:
            return item
        return attrs.evolve(item, signature=self._auth.sign(signing_payload(item)))

    def _authentic(self, item: Any, sender_id: str) -> bool:
        author = author_of(item)
        if author in self._revoked:
            self._stats.rumors_rejected += 1
            return False
        if not self._signed or author == sender_id:
            return True
        if self._auth.verify(author, signing_payload(item), item.signature):
            return True
        self._stats.rumors_rejected += 1
        return False

    def _enqueue(self, key: Hashable, item: Any) -> None:
        self._queue.put(key, item, _rumor_size(item))

    def _limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, self.num_live)

    def _rumors(self, base: int, forced: list[Any] | None = None) -> Rumors:
        budget = self._body_budget - base
        items: list[Any] = []
        if forced:
            for item in forced:
                budget -= _rumor_size(item)
            items.extend(forced)
        if self._queue:
            taken, _ = self._queue.take(budget, self._limit())
            if forced:
                taken = [t for t in taken if not any(t is f for f in forced)]
            items.extend(taken)
        return bundle(items) if items else NO_RUMORS

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MOD
        return self._seq

    def _push_timer(self, when: float, kind: int, key: Any, token: Any) -> None:
        self._timer_counter += 1
        heapq.heappush(self._timers, (when, self._timer_counter, kind, key, token))

    def _timer_valid(self, entry: tuple[float, int, int, Any, Any]) -> bool:
        when, _, kind, key, token = entry
        if kind == _T_SUSPICION:
            s = self._suspicions.get(key)
            return s is token and s.deadline == when
        if kind == _T_RELAY:
            r = self._relays.get(key)
            return r is not None and r.deadline == when
        m = self._members.get(key)
        if m is None or m.status not in DOWN or m.changed_at != token:
            return False
        return kind == _T_REAP_MEMBER or key in self._records

    def _timer_fire(self, entry: tuple[float, int, int, Any, Any], now: float) -> None:
        _, _, kind, key, _token = entry
        if kind == _T_SUSPICION:
            self._suspicion_expired(key, now)
        elif kind == _T_RELAY:
            relay = self._relays.pop(key)
            if relay.want_nack:
                self._out.append(Send(relay.requester, Nack(relay.requester_seq)))
        elif kind == _T_REAP_RECORD:
            del self._records[key]
            self._events.append(RecordRemoved(key))
        else:
            self._members.remove(key)
            self._queue.remove(("m", key))
            if self._records.pop(key, None) is not None:
                self._events.append(RecordRemoved(key))
            self._events.append(MemberRemoved(key, "reaped"))

    def _woke_late(self, now: float) -> None:
        """The caller ran us long after our deadline: assume we, not our peers, were stuck."""
        self._stats.late_ticks += 1
        self._awareness.apply_delta(1)
        self._probe = None
        grace = now + self.config.probe_interval_s
        for node_id, s in self._suspicions.items():
            if s.deadline <= now:
                s.deadline = grace
                self._push_timer(grace, _T_SUSPICION, node_id, s)
        if self._next_probe_at < now:
            self._next_probe_at = now

    # --- probing ------------------------------------------------------------------------------

    def _probe_target(self) -> Member | None:
        # A suspect whose timer ran out gets one last probe of our own before we declare
        # it dead (see ``_suspicion_expired``): it goes first.
        soon = self._probe_soon
        while soon:
            node_id = next(iter(soon))
            del soon[node_id]
            m = self._members.get(node_id)
            if m is not None and m.status is SUSPECT:
                return m
        table = self._members
        size = table.size
        for _ in range(size + 1):
            index = self._order.next_index(size, self._rng)
            if index < 0:
                return None
            if index >= table.size:
                continue
            m = table.at(index)
            if m is not None and m.live:
                return m
        return None

    def _probe_start(self, now: float) -> None:
        if self._probe is not None:
            self._probe_end(self._probe, now)
        aw = self._awareness
        interval = aw.scale(self.config.probe_interval_s)
        self._next_probe_at = now + interval
        target = self._probe_target()
        if target is None:
            return
        seq = self._next_seq()
        forced: list[Any] = []
        if target.status is SUSPECT and isinstance(target.accusation, Suspect):
            forced.append(target.accusation)  # buddy system: tell the suspect
        rumors = self._rumors(_PING_BASE + len(target.node_id), forced)
        self._out.append(Send(target.address, Ping(seq, target.node_id, rumors)))
        self._stats.probes += 1
        self._probe = _Probe(
            target.node_id, seq, now, now + aw.scale(self.config.probe_timeout_s), now + interval
        )

    def _probe_indirect(self, probe: _Probe, now: float) -> None:
        probe.indirect = True
        target = self._members.get(probe.target_id)
        if target is None or not target.live:
            self._probe = None
            return
        self._stats.indirect_probes += 1
        relays = self._members.sample(
            self.config.indirect_checks,
            self._rng,
            lambda m: m.status is ALIVE and m.node_id != probe.target_id,
        )
        host, port = target.address
        for relay in relays:
            rumors = self._rumors(_PING_REQ_BASE + len(target.node_id) + len(host))
            req = PingReq(probe.seq, target.node_id, host, port, True, rumors)
            self._out.append(Send(relay.address, req))
            probe.relays.add(relay.node_id)
        if self.config.tcp_fallback:
            self._out.append(Send(target.address, Ping(probe.seq, target.node_id), True))

    def _probe_end(self, probe: _Probe, now: float) -> None:
        """The probe interval is over with no ack: suspect the target."""
        self._probe = None
        self._stats.probe_failures += 1
        expected = len(probe.relays)
        missing = expected - len(probe.nacks) if expected else 1
        self._awareness.apply_delta(missing)
        target = self._members.get(probe.target_id)
        if target is None or not target.live:
            return
        self._on_suspect(
            self._sign(Suspect(target.node_id, target.incarnation, self.node_id)),
            self.node_id,
            now,
        )

    def _probe_acked(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self._awareness.apply_delta(-1)
        s = self._suspicions.get(probe.target_id)
        if s is not None and s.checking:
            # It answered our last-chance probe: it is alive (its refutation normally rides
            # the ack). Wait one more minimum timeout, then check again before deciding.
            s.checking = False
            s.checks_failed = 0
            s.deadline = now + s.min_s
            self._push_timer(s.deadline, _T_SUSPICION, probe.target_id, s)

    def _suspicion_expired(self, node_id: str, now: float) -> None:
        m = self._members.get(node_id)
        s = self._suspicions.get(node_id)
        if m is None or m.status is not SUSPECT or s is None:
            self._suspicions.pop(node_id, None)
            return
        if s.checking:  # our last-chance probe got no answer in time
            s.checking = False
            s.checks_failed += 1
        if s.checks_failed < self.config.last_chance_probes and not self._left:
            # Before declaring it dead, probe it ourselves (buddy ping included): if we
            # missed its refutation in the gossip, this brings it back on the ack (or the
            # suspect re-tells us directly). memberlist declares at once.
            s.checking = True
            self._probe_soon[node_id] = None
            interval = self._awareness.scale(self.config.probe_interval_s)
            s.deadline = max(now, self._next_probe_at) + interval + self.config.probe_timeout_s
            self._push_timer(s.deadline, _T_SUSPICION, node_id, s)
            return
        del self._suspicions[node_id]
        self._stats.deaths_declared += 1
        self._on_dead(self._sign(Dead(node_id, m.incarnation, self.node_id)), self.node_id, now)

    # --- periodic dissemination ---------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        if not self._queue:
            return
        to_dead_s = self.config.gossip_to_dead_s

        def accept(m: Member) -> bool:
            return m.live or (m.status is DEAD and now - m.changed_at < to_dead_s)

        budget = self._body_budget - _GOSSIP_BASE
        limit = self._limit()
        for m in self._members.sample(self.config.gossip_nodes, self._rng, accept):
            items, _ = self._queue.take(budget, limit)
            if not items:
                return
            self._out.append(Send(m.address, Gossip(bundle(items))))

    def _full_state(self) -> Rumors:
        """Everything we know, within ``push_pull_max_bytes`` (from a random start if over)."""
        budget = self.config.push_pull_max_bytes - 64
        items: list[Any] = [self._left_item if self._left_item else self._alive_item]
        if self._my_record is not None:
            items.append(self._my_record)
        budget -= sum(_rumor_size(i) for i in items)
        table = self._members
        size = table.size
        start = self._rng.randrange(size) if size else 0
        for i in range(size):
            m = table.at((start + i) % size)
            if m is None:
                continue
            parts: list[Any] = [m.alive]
            if m.accusation is not None:
                parts.append(m.accusation)
            record = self._records.get(m.node_id)
            if record is not None:
                parts.append(record)
            cost = sum(_rumor_size(p) for p in parts)
            if cost > budget:
                break
            budget -= cost
            items.extend(parts)
        return bundle(items)

    def _push_pull_to(self, address: Address, now: float, *, join: bool, force: bool = False) -> bool:
        inflight = self._push_inflight
        for a in [a for a, t in inflight.items() if t <= now]:
            del inflight[a]
        if address in inflight or (
            not force and len(inflight) >= self.config.push_pull_max_inflight
        ):
            return False
        inflight[address] = now + self.config.reliable_timeout_s
        self._stats.push_pulls_sent += 1
        self._out.append(Send(address, PushPull(join, False, self._full_state()), True))
        return True

    def _push_pull_tick(self, now: float) -> None:
        self._next_push_pull_at = now + push_pull_scale(
            self.config.push_pull_interval_s, self.num_live
        )
        peers = self._members.sample(1, self._rng, lambda m: m.status is ALIVE)
        if peers:
            self._push_pull_to(peers[0].address, now, join=False)
        # Reconnect: a member we think dead may be on the far side of a healed partition.
        dead = self._members.sample(1, self._rng, lambda m: m.status is DEAD)
        if dead:
            self._push_pull_to(dead[0].address, now, join=False)

    def _sync_with_stranger(self, address: Address, now: float) -> None:
        """A member probes us whom we do not know: we missed its Alive, and likely more.

        Memberlist waits for the next periodic push-pull (30 s and up); a push-pull with
        the prober now closes the gap at once. At most once per rejoin interval per address.
        """
        last = self._stranger_syncs.get(address)
        if last is not None and now - last < self.config.rejoin_interval_s:
            return
        if len(self._stranger_syncs) > 4096:
            self._stranger_syncs.clear()
        self._stranger_syncs[address] = now
        self._push_pull_to(address, now, join=False)

    def _rejoin_at(self, now: float) -> float:
        """Next join attempt: the backoff delay with jitter (half to all of it)."""
        return now + self._rejoin_delay * self._rng.uniform(0.5, 1.0)

    def _rejoin_tick(self, now: float) -> None:
        if not self._synced:
            cap = min(self.config.join_retry_max_s, self.config.rejoin_interval_s)
            self._rejoin_delay = min(2 * self._rejoin_delay, cap)
        else:
            self._rejoin_delay = self.config.rejoin_interval_s
        self._next_rejoin_at = self._rejoin_at(now)
        if not self._synced or self._members.live_count == 0:
            for address in self._seeds:
                self._push_pull_to(address, now, join=True, force=True)

    # --- message handlers ---------------------------------------------------------------------

    def _apply(self, rumors: Rumors, sender: str, now: float) -> None:
        if rumors is NO_RUMORS:
            return
        for a in rumors.alive:
            self._on_alive(a, sender, now)
        for s in rumors.suspect:
            self._on_suspect(s, sender, now)
        for d in rumors.dead:
            self._on_dead(d, sender, now)
        for lft in rumors.left:
            self._on_left(lft, sender, now)
        for r in rumors.records:
            self._on_record(r, sender, now)
        for b in rumors.broadcasts:
            self._on_broadcast(b, sender, now, direct=False)

    def _handle_ping(self, sender: str, source: Address, msg: Ping, now: float, reliable: bool) -> None:
        if msg.target_id != self.node_id:
            return  # meant for whoever had our address before
        self._apply(msg.rumors, sender, now)
        if self._members.get(sender) is None and not self._left:
            self._sync_with_stranger(source, now)
        rumors = NO_RUMORS
        if not reliable:
            # Buddy system both ways: a suspect that probes us hears that we suspect it.
            known = self._members.get(sender)
            forced: list[Any] = []
            if self._retell:  # the buddy ping accused an old life of ours: answer with this one
                self._retell = False
                forced.append(self._alive_item)
            if known is not None and known.status is SUSPECT and isinstance(known.accusation, Suspect):
                forced.append(known.accusation)
            rumors = self._rumors(_ACK_BASE, forced)
        self._out.append(Send(source, Ack(msg.seq, rumors), reliable))

    def _handle_ack(self, sender: str, source: Address, msg: Ack, now: float, reliable: bool) -> None:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq and (
            sender == probe.target_id or sender in probe.relays
        ):
            self._probe_acked(probe, now)
        else:
            relay = self._relays.get(msg.seq)
            if relay is not None and sender == relay.target_id:
                del self._relays[msg.seq]
                self._out.append(
                    Send(relay.requester, Ack(relay.requester_seq, self._rumors(_ACK_BASE)))
                )
        self._apply(msg.rumors, sender, now)

    def _handle_nack(self, sender: str, source: Address, msg: Nack, now: float, reliable: bool) -> None:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq and sender in probe.relays:
            probe.nacks.add(sender)

    def _handle_ping_req(
        self, sender: str, source: Address, msg: PingReq, now: float, reliable: bool
    ) -> None:
        self._apply(msg.rumors, sender, now)
        if msg.target_id == self.node_id or self._left:
            return
        seq = self._next_seq()
        # Nack before the requester's probe interval ends (Lifeguard: at 80% of the timeout),
        # or it arrives too late to count and the requester blames itself.
        deadline = now + 0.8 * self._awareness.scale(self.config.probe_timeout_s)
        self._relays[seq] = _Relay(source, msg.seq, msg.target_id, deadline, msg.want_nack)
        self._push_timer(deadline, _T_RELAY, seq, None)
        rumors = self._rumors(_PING_BASE + len(msg.target_id))
        self._out.append(
            Send((msg.target_host, msg.target_port), Ping(seq, msg.target_id, rumors))
        )

    def _handle_gossip(self, sender: str, source: Address, msg: Gossip, now: float, reliable: bool) -> None:
        self._apply(msg.rumors, sender, now)

    def _handle_push_pull(
        self, sender: str, source: Address, msg: PushPull, now: float, reliable: bool
    ) -> None:
        self._apply(msg.rumors, sender, now)
        known = self._members.get(sender)
        address = known.address if known is not None else source
        if msg.reply:
            self._push_inflight.pop(address, None)
            if not self._synced:
                # Joined. Members that join after us reach us only as gossip, which a join
                # storm can drop; one more sync with a random member soon catches them.
                self._synced = True
                soon = now + POST_JOIN_SYNC_PERIODS * self.config.probe_interval_s
                self._next_push_pull_at = min(self._next_push_pull_at, soon)
            return
        window = self._inbound_push_pulls
        while window and window[0] <= now - self.config.reliable_timeout_s:
            window.popleft()
        if len(window) >= self.config.push_pull_max_inbound:
            self._stats.push_pulls_refused += 1
            return
        window.append(now)
        self._out.append(Send(address, PushPull(False, True, self._full_state()), True))

    def _handle_urgent(self, sender: str, source: Address, msg: Urgent, now: float, reliable: bool) -> None:
        self._on_broadcast(msg.broadcast, sender, now, direct=sender == msg.broadcast.origin_id)

    def _handle_record(
        self, sender: str, source: Address, msg: StateRecord, now: float, reliable: bool
    ) -> None:
        self._on_record(msg, sender, now)

    # --- the transition rules -----------------------------------------------------------------

    def _refute(self, accused_incarnation: int, accuser: str) -> None:
        self.incarnation = max(self.incarnation, accused_incarnation) + 1
        self._alive_item = self._sign(self._make_alive())
        self._enqueue(("m", self.node_id), self._alive_item)
        self._awareness.apply_delta(1)
        self._stats.refutations += 1
        self._events.append(Refuted(self.incarnation, accuser))
        if self._my_record is not None and self._my_record.incarnation < self.incarnation:
            self._set_my_record(
                attrs.evolve(self._my_record, incarnation=self.incarnation, version=1)
            )

    def _accused(self, item: Suspect | Dead, sender: str, now: float) -> None:
        """Someone says we are suspect or dead: refute, or re-tell a relay that is behind."""
        if self._left:
            return
        if item.incarnation >= self.incarnation:
            if self._authentic(item, sender):
                self._refute(item.incarnation, item.from_id)
            return
        # We refuted this already, but the relay has not heard: tell it directly, on the ack
        # if this is a ping, else in a packet of its own (see ``receive``).
        self._retell = True

    def _on_alive(self, a: Alive, sender: str, now: float) -> None:
        node_id = a.node_id
        if node_id == self.node_id:
            # Only a previous life of ours can have said we are alive at a higher incarnation.
            if not self._left and a.incarnation > self.incarnation and self._authentic(a, sender):
                self._refute(a.incarnation, sender)
            return
        old = self._members.get(node_id)
        if old is not None and a.incarnation <= old.incarnation:
            return
        if node_id in self._revoked or not self._authentic(a, sender):
            return
        member = Member.from_alive(a, now)
        if old is not None and old.status is ALIVE:
            member = attrs.evolve(member, changed_at=old.changed_at)
        self._members.put(member)
        self._suspicions.pop(node_id, None)
        self._enqueue(("m", node_id), a)
        if old is None or old.status in DOWN:
            self._events.append(MemberJoined(member))
        elif (
            old.status is SUSPECT
            or old.address != member.address
            or old.site_id != member.site_id
            or old.transformer_id != member.transformer_id
        ):
            self._events.append(MemberUpdated(member))

    def _on_suspect(self, s: Suspect, sender: str, now: float) -> None:
        node_id = s.node_id
        if node_id == self.node_id:
            self._accused(s, sender, now)
            return
        m = self._members.get(node_id)
        if m is None or s.incarnation < m.incarnation:
            return
        suspicion = self._suspicions.get(node_id)
        if suspicion is not None and s.incarnation == m.incarnation:
            if (
                s.from_id not in suspicion.confirmations
                and self._authentic(s, sender)
                and suspicion.confirm(s.from_id)
            ):
                self._push_timer(suspicion.deadline, _T_SUSPICION, node_id, suspicion)
                self._enqueue(("m", node_id), s)
            return
        # A suspicion at a higher incarnation than ours means the member refuted an older
        # one we have not heard of: the old timer is stale, a new suspicion starts now.
        if m.status in DOWN or (m.status is SUSPECT and s.incarnation == m.incarnation):
            return
        if not self._authentic(s, sender):
            return
        self._stats.suspicions += 1
        member = attrs.evolve(
            m, incarnation=s.incarnation, status=SUSPECT, changed_at=now, accusation=s
        )
        self._members.put(member)
        n = self.num_live
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_s = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval_s)
        max_s = self.config.suspicion_max_timeout_mult * min_s
        suspicion = Suspicion.begin(s.from_id, k, min_s, max_s, now)
        self._suspicions[node_id] = suspicion
        self._push_timer(suspicion.deadline, _T_SUSPICION, node_id, suspicion)
        self._enqueue(("m", node_id), s)
        self._events.append(MemberSuspect(member, s.from_id))

    def _on_dead(self, d: Dead, sender: str, now: float) -> None:
        node_id = d.node_id
        if node_id == self.node_id:
            self._accused(d, sender, now)
            return
        m = self._members.get(node_id)
        if m is None or d.incarnation < m.incarnation or m.status in DOWN:
            return
        if not self._authentic(d, sender):
            return
        self._suspicions.pop(node_id, None)
        member = attrs.evolve(
            m, incarnation=d.incarnation, status=DEAD, changed_at=now, accusation=d
        )
        self._members.put(member)
        self._enqueue(("m", node_id), d)
        self._schedule_reaping(member, self.config.dead_member_reap_s)
        self._events.append(MemberDead(member, d.from_id))

    def _on_left(self, lft: Left, sender: str, now: float) -> None:
        node_id = lft.node_id
        if node_id == self.node_id:
            # A previous life of ours left; we are back, so say so.
            if not self._left and lft.incarnation >= self.incarnation and self._authentic(lft, sender):
                self._refute(lft.incarnation, sender)
            return
        m = self._members.get(node_id)
        if m is None or lft.incarnation < m.incarnation or m.status is LEFT:
            return
        if not self._authentic(lft, sender):
            return
        self._suspicions.pop(node_id, None)
        member = attrs.evolve(
            m, incarnation=lft.incarnation, status=LEFT, changed_at=now, accusation=lft
        )
        self._members.put(member)
        self._enqueue(("m", node_id), lft)
        self._schedule_reaping(member, self.config.left_member_reap_s)
        self._events.append(MemberLeft(member))

    def _schedule_reaping(self, member: Member, member_reap_s: float) -> None:
        t = member.changed_at
        self._push_timer(t + self.config.record_reap_s, _T_REAP_RECORD, member.node_id, t)
        self._push_timer(t + member_reap_s, _T_REAP_MEMBER, member.node_id, t)

    def _set_my_record(self, record: StateRecord) -> StateRecord:
        record = self._sign(record)
        self._my_record = record
        self._records[self.node_id] = record
        self._enqueue(("r", self.node_id), record)
        return record

    def _on_record(self, r: StateRecord, sender: str, now: float) -> None:
        node_id = r.node_id
        if node_id == self.node_id:
            mine = self._my_record
            if (
                r.order > self._record_floor
                and (mine is None or r.order > mine.order)
                and self._authentic(r, sender)  # a record from a previous life of ours
            ):
                self._record_floor = r.order
                if mine is not None:
                    self._set_my_record(
                        attrs.evolve(
                            mine,
                            incarnation=max(self.incarnation, r.incarnation),
                            version=r.version + 1,
                        )
                    )
            return
        m = self._members.get(node_id)
        if m is None or not m.live:
            return
        if not newer(r, self._records.get(node_id)) or not self._authentic(r, sender):
            return
        self._records[node_id] = r
        self._enqueue(("r", node_id), r)
        self._events.append(RecordUpdated(r))

    def _remember_broadcast(self, key: tuple[str, int], now: float) -> None:
        seen = self._seen_broadcasts
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now and len(seen) < MAX_SEEN_BROADCASTS:
                break
            del seen[oldest]
        seen[key] = now + self.config.urgent_seen_s

    def _on_broadcast(self, b: Broadcast, sender: str, now: float, *, direct: bool) -> None:
        key = (b.origin_id, b.serial)
        if b.origin_id == self.node_id or key in self._seen_broadcasts:
            return
        if not self._authentic(b, sender):
            return
        self._remember_broadcast(key, now)
        size = _rumor_size(b)
        if _GOSSIP_BASE + size <= self._body_budget:
            self._queue.put(("u", b.origin_id, b.serial), b, size)
        if not b.scope.contains(self.me.site_id, self.me.transformer_id):
            return
        cls = MESSAGE_TYPES.get(b.type_byte)
        if cls is None:
            self._stats.rumors_rejected += 1
            return
        try:
            message: Any = codec.decode_untrusted(cls, b.body)
        except BadPacket:
            self._stats.rumors_rejected += 1
            return
        self._events.append(Delivered(b.origin_id, message, b.scope, direct))


def _is_live(m: Member) -> bool:
    return m.live


_Handler = Callable[[Membership, str, Address, Any, float, bool], None]

_HANDLERS: dict[type, _Handler] = {
    Ping: Membership._handle_ping,
    Ack: Membership._handle_ack,
    Nack: Membership._handle_nack,
    PingReq: Membership._handle_ping_req,
    Gossip: Membership._handle_gossip,
    PushPull: Membership._handle_push_pull,
    Urgent: Membership._handle_urgent,
    StateRecord: Membership._handle_record,
}

# The message classes the shell should hand to ``Membership.receive``.
HANDLED_MESSAGES: frozenset[type] = frozenset(_HANDLERS)
