"""The mesh node: drives the membership core with the trio clock over a secure endpoint.

Theory of operation
-------------------
``MeshNode`` owns one ``SecureEndpoint`` (transport + signatures) and one
``protocol.swim.Membership`` (the sans-IO core), and runs three tasks in its nursery:

* **receive**: each verified datagram goes to the core (``receive``), then the core's
  outputs are flushed;
* **timers**: sleep until the core's ``next_deadline()`` (or until an input changed it),
  ``tick``, flush;
* **streams**: ``transport.serve`` reads framed packets from incoming TCP streams (push-pull
  and TCP probes) and hands them to the core as ``reliable``.

Flushing sends the core's ``Send``s: datagrams through the endpoint, at once and with no task
switch when the socket takes them (``send_datagram_nowait``; only what would wait goes to a
task); ``reliable`` ones each on a new TCP stream in a task of its own, bounded by
``reliable_timeout_s``. The receive task drains a burst already waiting on the socket
(``receive_datagram_nowait``, at most ``RECEIVE_BURST``) before it flushes once. The same message
object sent to many members (an urgent broadcast) is sealed once. Events go to subscribers
(``subscribe()``), which is how the allocation will hear urgent messages (``Delivered``).

Trust: the endpoint's ``TrustCore`` (``protocol.trust``) holds every certificate and
revocation rule; the node only feeds it and takes its outputs, in one direction. Rumors
refused for an unknown author are reported to it (``rumor_authors_missing``) with the gossip
to replay; it asks the relay and hands the gossip back (``unblocked``) once an author is
known. When it applies a revocation (from a ``Revoke`` message, an urgent broadcast carrying
one, or ``revoke``), ``endpoint.revoked()`` names the node: after the flush the membership
core forgets it everywhere, and a revocation new to us is broadcast urgently to every member
so the whole mesh learns it in one round.

Everything takes the trio clock for ``now`` and an injected wall clock for the wire, so the
same node runs on real UDP and on the in-memory network under ``MockClock``.
"""

from __future__ import annotations

import collections
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from meshagent.mesh.stats import LATE_WAKEUP_FRACTION, LatenessRecorder, NodeStatistics
from meshagent.transport.base import Address, Datagram, FramedStream, Transport, drop_reasons
from meshagent.trust.endpoint import (
    MAX_CERTIFICATES_PER_MESSAGE,
    SecureEndpoint,
    WallClockMs,
    system_wall_clock_ms,
)
from protocol.errors import BadPacket
from protocol.identity import NodeIdentity, TrustStore
from protocol.messages import TYPE_OF, CertificateRequest, Certificates, Revoke
from protocol.state import Capacity, Scope, StateRecord
from protocol.swim import (
    HANDLED_MESSAGES,
    Ack,
    Delegate,
    Delivered,
    Ed25519Items,
    Gossip,
    ItemAuthenticator,
    LocalNode,
    Member,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    Membership,
    MemberSnapshot,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Rumors,
    Send,
    StateRecords,
    SwimConfig,
    Urgent,
    UrgentBroadcasts,
)
from protocol.wire import Sealer, WireLimits

RECENT_EVENTS = 256
MAX_RELIABLE_INFLIGHT = 64
# datagrams read off the socket per wake-up (probes among them are answered at once), and
# datagrams of the rest handled per flush (bounded, so one busy node still lets the others
# and its own timer run); datagrams read but not yet handled are at most WAITING_LIMIT
RECEIVE_DRAIN = 64
RECEIVE_BURST = 8
WAITING_LIMIT = 128
# handled as they are read, ahead of the backlog: the probes, and urgent broadcasts (a spike's
# PLAN); a client adds its own time-critical unicast type with ``on_message(..., first=True)``
_FIRST_TYPES = frozenset(TYPE_OF[cls] for cls in (Ping, Ack, Nack, PingReq, Urgent))


def _rumors_of(message: Any) -> Rumors | None:
    if isinstance(message, Urgent):
        return Rumors(broadcasts=(message.broadcast,))
    rumors = getattr(message, "rumors", None)
    return rumors if isinstance(rumors, Rumors) else None


class _TrackingAuthenticator:
    """Rumor signatures with the node's key, noting authors whose certificate we lack.

    A rumor by an author we have no certificate for is refused by the core; the node then
    reports the authors to the trust core, which asks the relay and replays the rumors.
    """

    def __init__(self, identity: NodeIdentity, trust: TrustStore) -> None:
        self._inner = Ed25519Items(identity, trust)
        self._trust = trust
        self.missing: set[str] = set()

    def sign(self, payload: bytes) -> bytes:
        return self._inner.sign(payload)

    def verify(self, author_id: str, payload: bytes, signature: bytes) -> bool:
        if self._trust.certificate(author_id) is None:
            self.missing.add(author_id)
            return False
        return self._inner.verify(author_id, payload, signature)


class MeshNode:
    """One agent's membership in the mesh. Start with ``await nursery.start(node.run)``."""

    def __init__(
        self,
        identity: NodeIdentity,
        trust: TrustStore,
        transport: Transport,
        swim_config: SwimConfig,
        *,
        boot_epoch: int,
        seeds: Iterable[Address] = (),
        wall_clock_ms: WallClockMs = system_wall_clock_ms,
        rng: random.Random | None = None,
        limits: WireLimits | None = None,
        authenticator: ItemAuthenticator | None = None,
        on_revocation: Callable[[str], None] | None = None,
        not_before_ms: int = 0,
        snapshot: MemberSnapshot | None = None,
    ) -> None:
        self.identity = identity
        self._snapshot = snapshot  # a known membership to start from (Membership's snapshot)
        self.config = swim_config
        self.seeds = list(seeds)
        self.rng = rng or random.Random()
        trust.add_certificate(identity.certificate, identity.certificate_bytes)
        self.endpoint = SecureEndpoint(
            transport,
            Sealer(identity, boot_epoch),
            trust,
            limits=limits,
            wall_clock_ms=wall_clock_ms,
            not_before_ms=not_before_ms,
        )
        cert = identity.certificate
        self.local = LocalNode(cert.node_id, transport.address, cert.site_id, cert.transformer_id)
        self._tracker = _TrackingAuthenticator(identity, trust) if authenticator is None else None
        self._authenticator: ItemAuthenticator = authenticator or self._tracker  # type: ignore[assignment]
        self.membership: Membership | None = None
        # the clients of the membership core's delegate seam: the chargers' state records,
        # the urgent broadcast, and whatever the layers above add (``add_delegate``)
        self.records = StateRecords(swim_config.record_reap_s)
        self.urgent_broadcasts = UrgentBroadcasts(swim_config.urgent_seen_s)
        self._delegates: list[Delegate] = [self.records, self.urgent_broadcasts]
        self._wake = trio.Event()
        # the deadline the timer task sleeps until (-inf while it runs: it will look anyway)
        self._sleeping_until = -math.inf
        self._nursery: trio.Nursery | None = None
        self._subscribers: list[trio.MemorySendChannel[Any]] = []
        self.recent_events: deque[tuple[float, Any]] = deque(maxlen=RECENT_EVENTS)
        self._reliable_limit = trio.CapacityLimiter(MAX_RELIABLE_INFLIGHT)
        self._reliable_sent = 0
        self._reliable_failed = 0
        self._ignored = 0
        self._late_wakeups = 0
        self._late_wakeup_s = swim_config.probe_timeout_s * LATE_WAKEUP_FRACTION
        self._events_dropped = 0
        self._waiting: deque[Datagram] = deque()  # read, not yet handled (see _receive_loop)
        self._waiting_dropped = 0
        self._first_types = set(_FIRST_TYPES)
        self.lateness = LatenessRecorder()
        self._stopped = trio.Event()
        self._spread: set[bytes] = set()  # revocations we have broadcast
        self._revocation_hook = on_revocation
        self._handlers: dict[type, Callable[[str, Address, Any], None]] = {}
        self._leave_flushed = trio.Event()

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def address(self) -> Address:
        return self.endpoint.address

    @property
    def core(self) -> Membership:
        if self.membership is None:
            raise RuntimeError("the node is not running")
        return self.membership

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or until ``leave`` has finished."""
        self.membership = Membership(
            self.config, self.local, self.rng, trio.current_time(),
            authenticator=self._authenticator, delegates=self._delegates, snapshot=self._snapshot,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.endpoint.transport.serve, self._serve_stream)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                if self.seeds:
                    self.core.join(self.seeds, trio.current_time())
                    self._flush()
                task_status.started()
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for ch in self._subscribers:
                ch.close()

    def join(self, seeds: Iterable[Address]) -> None:
        """Join (more) seeds now; the core keeps retrying them while this node is isolated."""
        self.seeds = list(dict.fromkeys([*self.seeds, *seeds]))
        self.core.join(self.seeds, trio.current_time())
        self._flush()

    async def leave(self, timeout_s: float | None = None) -> None:
        """Leave gracefully: spread ``Left`` for a few gossip rounds, then stop ``run``.

        Bounded by the core's ``leave_timeout_s`` (about 1 s on the LAN preset); the
        ``timeout_s`` guard (default: that plus one probe interval) only covers a core that
        is not driven.
        """
        core = self.core
        core.leave(trio.current_time())
        self._flush()
        if timeout_s is None:
            timeout_s = self.config.leave_timeout_s + self.config.probe_interval_s
        with trio.move_on_after(timeout_s):
            await self._leave_flushed.wait()
        self._stopped.set()

    def stop(self) -> None:
        """Stop at once (a crash, as far as the mesh can tell)."""
        self._stopped.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def subscribe(self, buffer: int = 1024) -> trio.MemoryReceiveChannel[Any]:
        """Membership events as they happen (``Delivered`` urgent messages among them)."""
        send, receive = trio.open_memory_channel[Any](buffer)
        self._subscribers.append(send)
        return receive

    # --- what the layers above use --------------------------------------------------------------

    def add_delegate(self, delegate: Delegate) -> None:
        """Let a client ride on the membership (see ``protocol.swim.delegate``).

        Its ``message_types`` are then routed to it, its ``rumor_types`` merged by it, its
        broadcasts piggybacked and its local state pushed and pulled. Before or while
        running. Its messages are ordinary wire messages (``protocol.messages.message``);
        the allocation's use type bytes 0x40-0x4F.
        """
        claimed = {c for d in self._delegates for c in d.message_types}
        for cls in delegate.message_types:
            if cls not in TYPE_OF:
                raise ValueError(f"{cls.__name__} is not a registered message type")
            if (cls in self._handlers or cls in claimed or cls in HANDLED_MESSAGES
                    or cls in (Certificates, CertificateRequest, Revoke)):
                raise ValueError(f"{cls.__name__} already has a handler")
        self._delegates.append(delegate)
        if self.membership is not None:
            self.membership.add_delegate(delegate)
            self._flush()

    def publish_record(self, **fields: Any) -> StateRecord:
        """Publish this node's state record (see ``StateRecords.publish``)."""
        fields.setdefault("updated_at_ms", self.endpoint.wall_clock_ms())
        record = self.records.publish(trio.current_time(), **fields)
        self._flush()
        return record

    def record(self, node_id: str) -> StateRecord | None:
        """The newest state record of ``node_id`` (``None``: none, or reaped)."""
        return self.records.record(node_id)

    def member(self, node_id: str) -> Member | None:
        return self.core.member(node_id)

    def urgent(self, message: Any, scope: Scope) -> int:
        """Send ``message`` to every live member of ``scope`` now (and gossip it)."""
        sent = self.urgent_broadcasts.send(message, scope, trio.current_time())
        self._flush()
        return sent

    def on_message(self, cls: type, handler: Callable[[str, Address, Any], None], *, first: bool = False) -> None:
        """Route verified messages of ``cls`` (not membership ones) to ``handler``.

        ``handler(sender_id, source_address, message)`` runs in the receive task: it must not
        block; start work with ``spawn``. This is how other layers (authorization lists, the
        allocation) get their unicast messages. ``first``: handle them as they are read, with
        the probes, not after the backlog of gossip (a spike's ACKs).
        """
        claimed = {c for d in self._delegates for c in d.message_types}
        if cls in HANDLED_MESSAGES or cls in claimed or cls in (Certificates, CertificateRequest, Revoke):
            raise ValueError(f"{cls.__name__} is handled by the node itself")
        if cls not in TYPE_OF:
            raise ValueError(f"{cls.__name__} is not a registered message type")
        self._handlers[cls] = handler
        if first:
            self._first_types.add(TYPE_OF[cls])

    async def send(self, address: Address, message: Any) -> None:
        """Sign and send one datagram to ``address`` (best effort)."""
        await self.endpoint.send(address, message)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the node's nursery (ends with the node)."""
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(fn, *args)

    def capacity(self, scope: Scope | None = None) -> Capacity:
        return self.records.capacity(scope)

    def members(self) -> list[Member]:
        return self.core.members()

    def revoke(self, record: bytes) -> str | None:
        """Apply a CA-signed revocation here and spread it; returns the revoked node id."""
        revoked = self.endpoint.apply_revocation(record)
        if self.membership is not None:
            self._flush()
        return revoked

    def statistics(self) -> NodeStatistics:
        ep = self.endpoint.statistics()
        return NodeStatistics(
            membership=self.core.statistics(),
            datagrams_sent=ep.sent,
            datagrams_received=ep.received,
            dropped={**ep.dropped, **drop_reasons(self.endpoint.transport.statistics()),
                     "receive_backlog_full": self._waiting_dropped},
            reliable_sent=self._reliable_sent,
            reliable_failed=self._reliable_failed,
            ignored_messages=self._ignored,
            late_wakeups=self._late_wakeups,
            subscriber_events_dropped=self._events_dropped,
            certificates_refused=ep.certificates_refused,
            tick_lateness_p99_s=self.lateness.quantile(0.99),
            tick_lateness_max_s=self.lateness.max_s,
        )

    # --- tasks ----------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        endpoint = self.endpoint
        transport = endpoint.transport
        waiting = self._waiting
        while True:
            try:
                if not waiting:
                    self._take(await transport.receive_datagram())
                else:
                    await trio.lowlevel.checkpoint()  # let the timers and the others run
                # Read what is already on the socket (cheap), answer probes at once and keep
                # the rest in order (memberlist's packet handler does the same: pings and
                # acks inline, gossip handed off to a queue). When one core is short, a ping
                # then waits behind at most the probes, not behind a backlog of gossip whose
                # signatures must all be checked first, and its sender does not suspect us.
                for _ in range(RECEIVE_DRAIN):
                    more = transport.receive_datagram_nowait()
                    if more is None:
                        break
                    self._take(more)
            except trio.ClosedResourceError:  # the transport was closed under us: stop
                self._stopped.set()
                return
            for _ in range(min(RECEIVE_BURST, len(waiting))):
                self._open_datagram(waiting.popleft())
            self._flush()

    def _take(self, datagram: Datagram) -> None:
        """A datagram read from the socket: a probe now, anything else to ``_waiting``."""
        packet = datagram.packet
        # the type byte, unverified, only orders the work: the packet is verified either way
        if len(packet) > 1 and packet[1] in self._first_types:
            self._open_datagram(datagram)
            return
        if len(self._waiting) >= WAITING_LIMIT:
            self._waiting_dropped += 1  # as a full socket buffer would: the protocol copes
            return
        self._waiting.append(datagram)

    def _open_datagram(self, datagram: Datagram) -> None:
        endpoint = self.endpoint
        env = endpoint.open(datagram.packet, datagram.source)
        for got in endpoint.take_ready():  # held packets whose signer is now known
            self._to_core(got.envelope.sender_id, got.source, got.envelope.message, reliable=False)
        if env is not None:
            self._to_core(env.sender_id, datagram.source, env.message, reliable=False)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            if deadline > trio.current_time():
                self._sleeping_until = deadline
                with trio.move_on_at(deadline if math.isfinite(deadline) else math.inf):
                    await self._wake.wait()
                self._sleeping_until = -math.inf
                self._wake = trio.Event()
            now = trio.current_time()
            due = self.core.next_deadline()
            if now >= due:
                self.lateness.add(now - due)
                if now - due > self._late_wakeup_s:
                    self._late_wakeups += 1
                self.core.tick(now)
                self._flush()

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        limit = self.endpoint.opener.limits.max_stream_bytes
        async with FramedStream(stream, max_frame_bytes=limit) as framed:
            with trio.move_on_after(self.config.reliable_timeout_s):
                while True:
                    try:
                        packet = await framed.receive_untrusted()
                    except BadPacket:  # the stream is out of step: close it
                        return
                    if packet is None:
                        return
                    env = self.endpoint.open(packet, ("", 0), stream=True)
                    for got in self.endpoint.take_ready():
                        self._to_core(got.envelope.sender_id, got.source, got.envelope.message, reliable=False)
                    if env is not None:
                        member = self.core.member(env.sender_id)
                        source = member.address if member is not None else ("", 0)
                        self._to_core(env.sender_id, source, env.message, reliable=True)
                    self._flush()

    # --- plumbing -------------------------------------------------------------------------------

    def _deliver(self, sender_id: str, source: Address, message: Any, *, reliable: bool) -> None:
        self._to_core(sender_id, source, message, reliable=reliable)
        self._flush()

    def _to_core(self, sender_id: str, source: Address, message: Any, *, reliable: bool) -> None:
        core = self.core
        if type(message) in core.handled_messages:
            core.receive(sender_id, source, message, trio.current_time(), reliable=reliable)
            tracker = self._tracker
            if tracker is not None and tracker.missing:
                if not source[0]:
                    member = core.member(sender_id)
                    source = member.address if member is not None else source
                rumors = _rumors_of(message)
                # replay these rumors once the certificates are here, rather than wait
                # for a retransmission that may already have been spent
                item = None if rumors is None else (sender_id, source, Gossip(rumors))
                self.endpoint.core.rumor_authors_missing(
                    tracker.missing, source, item, trio.current_time(), self.endpoint.wall_clock_ms()
                )
                tracker.missing = set()
        elif isinstance(message, Revoke):
            pass  # already applied by the trust core; spread by _flush if new
        else:
            handler = self._handlers.get(type(message))
            if handler is None:
                self._ignored += 1
                return
            handler(sender_id, source, message)

    def _flush(self) -> None:
        """Take every output of the membership and trust cores, until neither has more.

        One loop, never nested: a revocation or a replay only feeds the cores, and the next
        round of the loop takes what that produced.
        """
        core = self.core
        nursery = self._nursery
        while True:
            sends = core.outgoing()
            if sends and nursery is not None:
                self._send_all(sends)
            for event in core.events():
                self._on_event(event)
            trust_sends = self.endpoint.pending_outgoing()
            if trust_sends and nursery is not None:
                self._send_packets_now(trust_sends)
            revoked = self.endpoint.revoked()
            for node_id in revoked:
                self._on_revocation(node_id)
            replays = self.endpoint.core.unblocked()
            for sender_id, source, gossip in replays:
                # rumors by authors we now know get in; the rest are reported again
                self._to_core(sender_id, source, gossip, reliable=False)
            if not revoked and not replays:
                break
        if core.has_left and core.leave_flushed:
            self._leave_flushed.set()
        # Wake the timer task only if what happened brought its deadline forward: most packets
        # do not, and a wake-up per packet was over half the timer task's work at 60 agents.
        if core.next_deadline() < self._sleeping_until:
            self._wake.set()

    def _send_packets_now(self, packets: list[tuple[Address, bytes]]) -> None:
        """Send what the socket takes at once; the rest (a full send buffer) in a task."""
        endpoint = self.endpoint
        for i, (destination, packet) in enumerate(packets):
            try:
                sent = endpoint.send_packet_nowait(destination, packet)
            except trio.ClosedResourceError:  # the transport was closed under us
                return
            if not sent:
                if self._nursery is not None:
                    self._nursery.start_soon(self._send_packets, packets[i:])
                return

    async def _send_packets(self, packets: list[tuple[Address, bytes]]) -> None:
        for destination, packet in packets:
            await self.endpoint.send_packet(destination, packet)

    def _send_all(self, sends: list[Send]) -> None:
        """Seal the core's datagrams and send them now; reliable ones each in a task."""
        sealed: dict[tuple[int, bool], bytes] = {}
        counts = collections.Counter(id(s.message) for s in sends)
        shared = {key for key, n in counts.items() if n > 1}
        packets: list[tuple[Address, bytes]] = []
        endpoint = self.endpoint
        for s in sends:
            if s.reliable:
                if self._nursery is not None:
                    self._nursery.start_soon(self._send_reliable, s)
                continue
            key = id(s.message)
            if key in shared:
                # one message to many members: seal it once, or twice when some of them
                # are due our certificate (so a gossip round still introduces us)
                attach = endpoint.should_attach(s.address)
                packet = sealed.get((key, attach))
                if packet is None:
                    packet = sealed[(key, attach)] = endpoint.seal(s.message, attach_certificate=attach)
                    if len(packet) > endpoint.transport.max_datagram_bytes:
                        packet = sealed[(key, attach)] = endpoint.seal(s.message)
            else:
                packet = endpoint.sealed_for(s.address, s.message)
            packets.append((s.address, packet))
        if packets:
            self._send_packets_now(packets)

    async def _send_reliable(self, send: Send) -> None:
        async with self._reliable_limit:
            with trio.move_on_after(self.config.reliable_timeout_s):
                try:
                    stream = await self.endpoint.transport.open_stream(send.address)
                    async with FramedStream(stream, max_frame_bytes=self.endpoint.opener.limits.max_stream_bytes) as framed:
                        if isinstance(send.message, PushPull):
                            # the full state names members the peer may never have met:
                            # their certificates go first, so their rumors verify
                            for chunk in self._certificate_chunks():
                                await framed.send(self.endpoint.seal(Certificates(certificates=chunk), attach_certificate=True))
                        await framed.send(self.endpoint.seal(send.message, attach_certificate=True))
                        await framed.send_eof()
                    self._reliable_sent += 1
                    return
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._reliable_failed += 1  # refused, broken or timed out
            core = self.membership
            if core is not None:
                core.reliable_failed(send.address, send.message, trio.current_time())
                self._wake.set()

    def _certificate_chunks(self) -> list[tuple[bytes, ...]]:
        ids = [m.node_id for m in self.core.members()]
        raws = [r for r in (self.endpoint.trust.raw_certificate(n) for n in ids) if r is not None]
        return [tuple(raws[i : i + MAX_CERTIFICATES_PER_MESSAGE]) for i in range(0, len(raws), MAX_CERTIFICATES_PER_MESSAGE)]

    def _on_event(self, event: Any) -> None:
        now = trio.current_time()
        self.recent_events.append((now, event))
        if isinstance(event, MemberJoined):
            self.endpoint.forget_peer(event.member.address)  # (re)introduce ourselves
        elif isinstance(event, MemberDead | MemberLeft):
            self.endpoint.forget_peer(event.member.address)
        elif isinstance(event, MemberRemoved):
            self.endpoint.opener.forget(event.node_id)
        elif isinstance(event, Delivered) and isinstance(event.message, Revoke):
            self.endpoint.apply_revocation(event.message.revocation)
        for ch in list(self._subscribers):
            try:
                ch.send_nowait(event)
            except trio.WouldBlock:
                self._events_dropped += 1  # a slow subscriber loses events rather than stalling the mesh
            except trio.ClosedResourceError:
                self._subscribers.remove(ch)

    def _on_revocation(self, node_id: str) -> None:
        if self._revocation_hook is not None:
            self._revocation_hook(node_id)
        core = self.core
        core.revoke(node_id, trio.current_time())
        # spread every revocation we have not spread yet
        for record in self.endpoint.trust.revocation_records():
            if record not in self._spread:
                self._spread.add(record)
                self.urgent_broadcasts.send(Revoke(revocation=record), Scope.everyone(), trio.current_time())
