"""The membership core: SWIM with Lifeguard, as a sans-IO state machine.

Theory of operation
-------------------
``Membership`` is driven from outside. The shell feeds it verified packets with
``receive(sender_id, source_address, message, now)`` and wakes it with ``tick(now)`` at
``next_deadline()``; it drains ``outgoing()`` (``Send``: address, message, reliable) and
``events()`` (members joined, suspected, dead, left; and whatever its delegates emit).
Time is the caller's monotonic clock in float seconds; the core never reads a clock, opens
a socket or sleeps, so the same code runs over UDP in real time and in a discrete-event
simulation of ten thousand nodes.

The work is split the way memberlist splits ``state.go``, one job per module:

* ``protocol.swim.probing``: failure detection (probe, ping-req, nack, suspicions);
* ``protocol.swim.sync``: push-pull, join, rejoin;
* ``protocol.swim.transitions``: the rules, as one table, for how a rumor changes a member,
  and ``Rules``, which carries out its moves;
* ``protocol.swim.gossip``: what rides on each datagram, and the gossip round;
* ``protocol.swim.timers``: the timer heap;
* ``protocol.swim.delegate``: the seam for what rides on the mesh (state records in
  ``protocol.swim.records``, urgent broadcasts in ``protocol.swim.urgent``, the
  authorization-list sync and the allocation in the shell).

This module wires them: it owns the member table, our incarnation and the outputs, routes
each message to its handler with everything the handler needs (no per-message state is
kept between ``receive`` and a handler), owns our identity (incarnation, refutation, leave,
revocation), and offers the delegates their ``Host``.

Rumors written by someone other than the relay must carry their author's signature
(``protocol.swim.auth``); only a node can raise its own incarnation, leave, or publish its
own record. Messages from revoked members, and rumors about or by them, are ignored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import attrs

from protocol.errors import LocalProtocolError
from protocol.state import StateRecord
from protocol.swim.auth import ItemAuthenticator, Unsigned
from protocol.swim.awareness import Awareness
from protocol.swim.config import SwimConfig
from protocol.swim.delegate import Delegate
from protocol.swim.events import (
    Address,
    MemberRemoved,
    Refuted,
    Send,
)
from protocol.swim.gossip import Piggyback
from protocol.swim.members import (
    DOWN,
    Member,
    MemberSnapshot,
    MemberStatus,
    MemberTable,
)
from protocol.swim.messages import (
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
    author_of,
    signing_payload,
)
from protocol.swim.probing import T_RELAY, T_SUSPICION, Prober
from protocol.swim.sync import Synchroniser, push_pull_scale
from protocol.swim.timers import Entry, Timers
from protocol.swim.transitions import Rules
from protocol.wire import overhead_bytes

ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
DEAD = MemberStatus.DEAD
LEFT = MemberStatus.LEFT


__all__ = ["HANDLED_MESSAGES", "LocalNode", "Membership", "MembershipStatistics", "push_pull_scale"]


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


# A handler gets the sender, the address to answer, the message, the time and whether it
# came over TCP; it returns True when the message carried a stale accusation of us that it
# did not answer itself (``receive`` then re-tells the relay our current ``Alive``).
_Handler = Callable[[str, Address, Any, float, bool], bool]

_MEMBERSHIP_MESSAGES = (Ping, Ack, Nack, PingReq, Gossip, PushPull)
# the rumor kinds a ``Rumors`` bundle carries for delegates (its last two lists)
_DELEGATE_RUMOR_SLOTS = (StateRecord, Broadcast)


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
        delegates: Sequence[Delegate] = (),
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
        ``delegates``: the clients riding on the mesh (``add_delegate``).
        """
        self.config = config
        self.me = me
        self._node_id = me.node_id
        self.rng = rng
        self._auth: ItemAuthenticator = authenticator or Unsigned()
        self._signed = authenticator is not None
        overhead = (
            overhead_bytes(len(me.node_id.encode()))
            if envelope_overhead_bytes is None
            else envelope_overhead_bytes
        )
        body_budget = config.max_packet_bytes - overhead
        if body_budget < 256:
            raise LocalProtocolError("max_packet_bytes leaves no room for a message body")
        self._incarnation = incarnation
        self.members_table = MemberTable(snapshot)
        self.members_table.remove(me.node_id)  # a snapshot may include us; we are not our own member
        self.delegates: list[Delegate] = []
        self._piggyback = Piggyback(body_budget, config.retransmit_mult, self.delegates)
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.timers = Timers(self._timer_valid)
        self._out: list[Send] = []
        self._events: list[Any] = []
        self._retold: dict[Address, float] = {}
        self.revoked: set[str] = set()
        self._left = False
        self._left_item: Left | None = None
        self._leave_deadline = math.inf  # after ``leave``: stop spreading ``Left`` by then
        self.stats = _Counters()
        # Stagger the periodic work so a mesh started at once does not beat in step.
        self.probing = Prober(self, now)
        self._next_gossip_at = now + rng.uniform(0, config.gossip_interval_s)
        self.sync = Synchroniser(self, now)
        self.rules = Rules(self)
        self._handlers: dict[type, _Handler] = {
            Ping: self.probing.handle_ping,
            Ack: self.probing.handle_ack,
            Nack: self.probing.handle_nack,
            PingReq: self.probing.handle_ping_req,
            Gossip: self._handle_gossip,
            PushPull: self.sync.handle_push_pull,
        }
        self.rumor_delegates: dict[type, Delegate] = {}
        # the message classes the shell should hand to ``receive``
        self.handled_messages: frozenset[type] = frozenset(self._handlers)
        self.alive_item: Alive = self.sign(self.make_alive())
        known = snapshot.by_id.get(me.node_id) if snapshot is not None else None
        if known is not None and known.incarnation == incarnation:
            self.alive_item = known.alive  # restored: the mesh already knows us as we are
        else:
            self.enqueue(("m", self.node_id), self.alive_item)
        for d in delegates:
            self.add_delegate(d)

    def add_delegate(self, delegate: Delegate) -> None:
        """Let ``delegate`` ride on the mesh: its rumors, messages, state and events.

        Raises ``LocalProtocolError`` if it claims a message or rumor type that the core or
        another delegate already handles.
        """
        for cls in delegate.message_types:
            if cls in self._handlers:
                raise LocalProtocolError(f"{cls.__name__} is already handled")
        for cls in delegate.rumor_types:
            if cls not in _DELEGATE_RUMOR_SLOTS:
                raise LocalProtocolError(f"a Rumors bundle has no slot for {cls.__name__}")
            if cls in self.rumor_delegates:
                raise LocalProtocolError(f"{cls.__name__} rumors already have a delegate")
        delegate.attach(self)
        self.delegates.append(delegate)
        for cls in delegate.rumor_types:
            self.rumor_delegates[cls] = delegate
        for cls in delegate.message_types:
            self._handlers[cls] = _message_handler(self, delegate)
        self.handled_messages = frozenset(self._handlers)

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
        core does not handle (route only ``handled_messages`` here).
        """
        handler = self._handlers.get(type(message))
        if handler is None:
            raise LocalProtocolError(f"{type(message).__name__} is not a membership message")
        if sender_id == self.node_id or sender_id in self.revoked:
            return
        if reliable:  # a TCP peer's source port is ephemeral: answer its advertised address
            known = self.members_table.get(sender_id)
            if known is not None:
                source_address = known.address
        if handler(sender_id, source_address, message, now, reliable):
            self._retell(source_address, now)

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``. Call at (or after) ``next_deadline()``."""
        due = self.next_deadline()
        if now - due > self.config.probe_interval_s:
            self._woke_late(now)
        self.probing.tick_probe(now)
        for entry in self.timers.due(now):
            self._timer_fire(entry, now)
        for d in self.delegates:
            if d.next_deadline() <= now:
                d.tick(now)
        if not self._left:
            self.probing.tick_next(now)
            self.sync.tick(now)
        if now >= self._next_gossip_at and self._piggyback.pending():
            self._next_gossip_at = now + self.config.gossip_interval_s
            self._gossip(now)
        if now >= self._leave_deadline:
            self._leave_deadline = math.inf
            self._piggyback.queue.remove(("m", self.node_id))  # spread long enough

    def next_deadline(self) -> float:
        """When ``tick`` must next run (``math.inf`` when nothing is scheduled)."""
        d = self.timers.next_deadline()
        # the gossip round only when there is something to tell: an idle member does not
        # wake five times a second for nothing (a rumor queued after an idle round goes at
        # its next tick, at once if that round's time has passed)
        if self._next_gossip_at < d and self._piggyback.pending():
            d = self._next_gossip_at
        if self._leave_deadline < d:
            d = self._leave_deadline
        for dg in self.delegates:
            t = dg.next_deadline()
            if t < d:
                d = t
        if not self._left:
            sync = self.sync
            for t in (self.probing.next_probe_at, sync.next_push_pull_at, sync.next_rejoin_at):
                if t < d:
                    d = t
        probe = self.probing.probe
        if probe is not None:
            t = probe.end if probe.indirect else probe.direct_deadline
            if t < d:
                d = t
        return d

    def reliable_failed(self, address: Address, message: Any, now: float) -> None:
        """The shell could not deliver a reliable send (refused, broken or timed out).

        A push-pull to ``address`` is then no longer in flight, so the next join retry
        goes out on time instead of waiting out ``reliable_timeout_s``.
        """
        self.sync.reliable_failed(address, message, now)

    # --- outputs ------------------------------------------------------------------------------

    def outgoing(self) -> list[Send]:
        """Take the packets to send, in order."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Any]:
        """Take the events (membership and delegates'), in order."""
        ev, self._events = self._events, []
        return ev

    # --- commands -----------------------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Push-pull with every seed now, and again while this node has no live peer."""
        self.sync.join(seeds, now)

    def leave(self, now: float) -> None:
        """Leave gracefully: tell a few peers at once and gossip ``Left`` until it is spread.

        Keep driving the core (``tick``/``receive``) until ``leave_flushed`` is true (at
        most ``leave_timeout_s``), then stop.
        """
        if self._left:
            return
        self._incarnation += 1
        item = self.sign(Left(self.node_id, self._incarnation))
        self._left = True
        self._left_item = item
        self._leave_deadline = now + self.config.leave_timeout_s
        self.probing.stop()
        self.enqueue(("m", self.node_id), item)
        message = Gossip(Rumors(left=(item,)))
        for m in self.members_table.sample(3 * max(1, self.config.gossip_nodes), self.rng, _is_live):
            self.send(Send(m.address, message))

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
            self._piggyback.queue.get(("m", self.node_id)) is None
            or self.members_table.live_count == 0
        )

    def revoke(self, node_id: str, now: float) -> None:
        """Forget ``node_id`` for good: its certificate was revoked."""
        if node_id in self.revoked:
            return
        self.revoked.add(node_id)
        if node_id == self.node_id:
            self._left = True
            self.probing.stop()
            self.emit(MemberRemoved(node_id, "revoked"), now)
            return
        self.probing.forget(node_id)
        self._piggyback.queue.remove(("m", node_id))
        if self.members_table.remove(node_id) is not None:
            self.emit(MemberRemoved(node_id, "revoked"), now)

    # --- views --------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def site_id(self) -> str:
        return self.me.site_id

    @property
    def transformer_id(self) -> str:
        return self.me.transformer_id

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def body_budget(self) -> int:
        return self._piggyback.body_budget

    def member(self, node_id: str) -> Member | None:
        return self.members_table.get(node_id)

    def members(self) -> list[Member]:
        return list(self.members_table)

    def live_members(self) -> list[Member]:
        return [m for m in self.members_table if m.live]

    @property
    def num_live(self) -> int:
        """Live members including this node."""
        return self.members_table.live_count + (0 if self._left else 1)

    def is_live(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return not self._left
        m = self.members_table.get(node_id)
        return m is not None and m.live

    @property
    def health_score(self) -> int:
        return self.awareness.score

    @property
    def own_rumor(self) -> Alive | Left:
        """What we say about ourselves: ``Alive``, or ``Left`` once we left."""
        return self._left_item if self._left_item is not None else self.alive_item

    def statistics(self) -> MembershipStatistics:
        counts = dict.fromkeys(MemberStatus, 0)
        for m in self.members_table:
            counts[m.status] += 1
        c = self.stats
        return MembershipStatistics(
            alive=counts[ALIVE], suspect=counts[SUSPECT], dead=counts[DEAD], left=counts[LEFT],
            incarnation=self._incarnation, health_score=self.awareness.score,
            queued_rumors=len(self._piggyback.queue), probes=c.probes,
            probe_failures=c.probe_failures, indirect_probes=c.indirect_probes,
            suspicions=c.suspicions, deaths_declared=c.deaths_declared,
            refutations=c.refutations, push_pulls_sent=c.push_pulls_sent,
            push_pulls_refused=c.push_pulls_refused, rumors_rejected=c.rumors_rejected,
            late_ticks=c.late_ticks,
        )

    # --- the Host offered to delegates (and used by the modules) ------------------------------

    def sign(self, item: Any) -> Any:
        if not self._signed:
            return item
        return attrs.evolve(item, signature=self._auth.sign(signing_payload(item)))

    def authentic(self, item: Any, sender_id: str) -> bool:
        author = author_of(item)
        if author in self.revoked:
            self.stats.rumors_rejected += 1
            return False
        if not self._signed or author == sender_id:
            return True
        if self._auth.verify(author, signing_payload(item), item.signature):
            return True
        self.stats.rumors_rejected += 1
        return False

    def rejected(self) -> None:
        self.stats.rumors_rejected += 1

    def send(self, send: Send) -> None:
        self._out.append(send)

    def emit(self, event: Any, now: float | None = None) -> None:
        """Emit ``event``; membership events (``now`` given) go to the delegates too."""
        self._events.append(event)
        if now is not None:
            for d in self.delegates:
                d.member_event(event, now)

    def enqueue(self, key: Hashable, item: Any) -> None:
        self._piggyback.enqueue(key, item)

    def rumors(self, base: int, forced: list[Any] | None = None) -> Rumors:
        return self._piggyback.rumors(base, self.num_live, forced)

    # --- rumors: the transition table (``protocol.swim.transitions``) -------------------------

    def apply(self, rumors: Rumors, sender: str, now: float, *, join: bool = False) -> bool:
        """Apply a bundle relayed by ``sender``; True if it held a stale accusation of us."""
        return self.rules.apply(rumors, sender, now, join=join)

    def apply_one(self, item: Alive | Suspect | Dead | Left, sender: str, now: float) -> bool:
        return self.rules.apply_one(item, sender, now)

    def refute(self, accused_incarnation: int, accuser: str, now: float) -> None:
        self._incarnation = max(self._incarnation, accused_incarnation) + 1
        self.alive_item = self.sign(self.make_alive())
        self.enqueue(("m", self.node_id), self.alive_item)
        self.awareness.apply_delta(1)
        self.stats.refutations += 1
        self.emit(Refuted(self._incarnation, accuser), now)

    def _retell(self, address: Address, now: float) -> None:
        """A relay is behind on a refutation of ours: tell it our ``Alive`` directly.

        At most once per probe interval per relay: stale rumors echo for a while.
        """
        last = self._retold.get(address)
        if last is None or now - last >= self.config.probe_interval_s:
            if len(self._retold) > 1024:
                self._retold.clear()
            self._retold[address] = now
            self.send(Send(address, Gossip(Rumors(alive=(self.alive_item,)))))

    # --- helpers ------------------------------------------------------------------------------

    def _handle_gossip(self, sender: str, source: Address, msg: Gossip, now: float, reliable: bool) -> bool:
        return self.apply(msg.rumors, sender, now)

    def make_alive(self) -> Alive:
        host, port = self.me.address
        return Alive(
            self.node_id, self._incarnation, host, port, self.me.site_id, self.me.transformer_id
        )

    def _gossip(self, now: float) -> None:
        if not self._piggyback.pending():
            return
        to_dead_s = self.config.gossip_to_dead_s

        def accept(m: Member) -> bool:
            return m.live or (m.status is DEAD and now - m.changed_at < to_dead_s)

        targets = self.members_table.sample(self.config.gossip_nodes, self.rng, accept)
        bundles = self._piggyback.gossip_bundles(len(targets), self.num_live)
        for m, rumors in zip(targets, bundles, strict=False):  # fewer bundles: nothing left
            self.send(Send(m.address, Gossip(rumors)))

    def _timer_valid(self, entry: Entry) -> bool:
        when, _, kind, key, token = entry
        if kind in (T_SUSPICION, T_RELAY):
            return self.probing.timer_valid(kind, key, token, when)
        m = self.members_table.get(key)
        return m is not None and m.status in DOWN and m.changed_at == token

    def _timer_fire(self, entry: Entry, now: float) -> None:
        _, _, kind, key, _token = entry
        if kind in (T_SUSPICION, T_RELAY):
            self.probing.timer_fire(kind, key, now)
            return
        self.members_table.remove(key)
        self._piggyback.queue.remove(("m", key))
        self.emit(MemberRemoved(key, "reaped"), now)

    def _woke_late(self, now: float) -> None:
        """The caller ran us long after our deadline: assume we, not our peers, were stuck."""
        self.stats.late_ticks += 1
        self.awareness.apply_delta(1)
        self.probing.woke_late(now)


def _is_live(m: Member) -> bool:
    return m.live


def _message_handler(core: Membership, delegate: Delegate) -> _Handler:
    def handle(sender: str, source: Address, message: Any, now: float, reliable: bool) -> bool:
        delegate.receive_message(sender, message, now)
        return False

    return handle


# The membership's own message classes; ``Membership.handled_messages`` adds its delegates'.
HANDLED_MESSAGES: frozenset[type] = frozenset(_MEMBERSHIP_MESSAGES)
