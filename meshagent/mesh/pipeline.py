"""The mesh node's datagram pipeline: packets in, through the cores, packets out.

Theory of operation
-------------------
``MeshNode`` (``meshagent.mesh.node``) is the facade the layers above call; this module is
the part that moves bytes, kept apart as memberlist keeps ``net.go`` apart from
``memberlist.go``. ``DatagramPipeline`` owns, for one running node:

* the **receive** task: it reads what is already waiting on the socket (at most
  ``RECEIVE_DRAIN``), opens probes and the other first types at once and keeps the rest in a
  bounded backlog (``WAITING_LIMIT``), of which it handles ``RECEIVE_BURST`` per flush;
* **opening**: each verified message goes to the membership core (``receive``), the trust core
  (revocations) or the handler a client registered for its type (``handlers``);
* the **timer** task: it sleeps until the core's ``next_deadline()`` (or until an input brought
  it forward), ``tick``s and flushes, recording how late each tick ran;
* **streams**: framed packets read from incoming TCP streams (push-pull, TCP probes) go to the
  core as ``reliable``; reliable sends each open a stream in a task of their own;
* **flush**: take every output of the membership and trust cores until neither has more;
  datagrams are sealed (once for a message sent to many) and sent at once when the socket
  takes them, the rest in a task.

The seam is one-directional. The facade builds the pipeline, registers handlers and first
types, attaches the core and the nursery on ``run`` and calls ``flush`` after it feeds the
cores; the pipeline hands each membership event to ``on_event`` and each revoked node id to
``on_revoked``. Those sinks may feed the cores (the next round of ``flush`` takes what they
produced) but never call back into the pipeline. The pipeline owns its counters; the facade
reads them for ``statistics()``.
"""

from __future__ import annotations

import collections
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from meshagent.mesh.stats import LATE_WAKEUP_FRACTION, LatenessRecorder
from meshagent.transport.base import Address, Datagram, FramedStream
from meshagent.trust.endpoint import MAX_CERTIFICATES_PER_MESSAGE, SecureEndpoint
from protocol.errors import BadPacket
from protocol.identity import NodeIdentity, TrustStore
from protocol.messages import TYPE_OF, Certificates, Revoke
from protocol.swim import (
    Ack,
    Ed25519Items,
    Gossip,
    Membership,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Rumors,
    Send,
    SwimConfig,
    Urgent,
)

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

Handler = Callable[[str, Address, Any], None]


def _rumors_of(message: Any) -> Rumors | None:
    if isinstance(message, Urgent):
        return Rumors(broadcasts=(message.broadcast,))
    rumors = getattr(message, "rumors", None)
    return rumors if isinstance(rumors, Rumors) else None


class _TrackingAuthenticator:
    """Rumor signatures with the node's key, noting authors whose certificate we lack.

    A rumor by an author we have no certificate for is refused by the core; the pipeline then
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


class DatagramPipeline:
    """Moves one node's packets between the endpoint and its cores (see the module doc)."""

    def __init__(
        self,
        endpoint: SecureEndpoint,
        config: SwimConfig,
        tracker: _TrackingAuthenticator | None,
        *,
        on_event: Callable[[Any], None],
        on_revoked: Callable[[str], None],
        stopped: trio.Event,
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self._tracker = tracker
        self._on_event = on_event
        self._on_revoked = on_revoked
        self._stopped = stopped  # set when the transport closes under the receive task
        self.core: Membership | None = None  # set by ``attach`` while the node runs
        self.nursery: trio.Nursery | None = None
        # routes of verified messages that are neither membership's nor trust's, by type
        self.handlers: dict[type, Handler] = {}
        self.first_types = set(_FIRST_TYPES)
        self.leave_flushed = trio.Event()
        self._wake = trio.Event()
        # the deadline the timer task sleeps until (-inf while it runs: it will look anyway)
        self._sleeping_until = -math.inf
        self._waiting: deque[Datagram] = deque()  # read, not yet handled (see receive_loop)
        self._reliable_limit = trio.CapacityLimiter(MAX_RELIABLE_INFLIGHT)
        self.lateness = LatenessRecorder()
        self._late_wakeup_s = config.probe_timeout_s * LATE_WAKEUP_FRACTION
        # counters, read by ``MeshNode.statistics``
        self.waiting_dropped = 0
        self.reliable_sent = 0
        self.reliable_failed = 0
        self.ignored = 0
        self.late_wakeups = 0

    def attach(self, core: Membership, nursery: trio.Nursery | None) -> None:
        """The running node's core and the nursery its send tasks start in (``None``: stopped)."""
        self.core = core
        self.nursery = nursery

    def _core(self) -> Membership:
        if self.core is None:
            raise RuntimeError("the node is not running")
        return self.core

    # --- tasks ----------------------------------------------------------------------------------

    async def receive_loop(self) -> None:
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
            self.flush()

    def _take(self, datagram: Datagram) -> None:
        """A datagram read from the socket: a probe now, anything else to ``_waiting``."""
        packet = datagram.packet
        # the type byte, unverified, only orders the work: the packet is verified either way
        if len(packet) > 1 and packet[1] in self.first_types:
            self._open_datagram(datagram)
            return
        if len(self._waiting) >= WAITING_LIMIT:
            self.waiting_dropped += 1  # as a full socket buffer would: the protocol copes
            return
        self._waiting.append(datagram)

    def _open_datagram(self, datagram: Datagram) -> None:
        endpoint = self.endpoint
        env = endpoint.open(datagram.packet, datagram.source)
        for got in endpoint.take_ready():  # held packets whose signer is now known
            self.to_core(got.envelope.sender_id, got.source, got.envelope.message, reliable=False)
        if env is not None:
            self.to_core(env.sender_id, datagram.source, env.message, reliable=False)

    async def timer_loop(self) -> None:
        core = self._core()
        while True:
            deadline = core.next_deadline()
            if deadline > trio.current_time():
                self._sleeping_until = deadline
                with trio.move_on_at(deadline if math.isfinite(deadline) else math.inf):
                    await self._wake.wait()
                self._sleeping_until = -math.inf
                self._wake = trio.Event()
            now = trio.current_time()
            due = core.next_deadline()
            if now >= due:
                self.lateness.add(now - due)
                if now - due > self._late_wakeup_s:
                    self.late_wakeups += 1
                core.tick(now)
                self.flush()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
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
                        self.to_core(got.envelope.sender_id, got.source, got.envelope.message, reliable=False)
                    if env is not None:
                        member = self._core().member(env.sender_id)
                        source = member.address if member is not None else ("", 0)
                        self.to_core(env.sender_id, source, env.message, reliable=True)
                    self.flush()

    # --- plumbing -------------------------------------------------------------------------------

    def to_core(self, sender_id: str, source: Address, message: Any, *, reliable: bool) -> None:
        """Hand one verified message to the core that takes it, or to its handler."""
        core = self._core()
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
            pass  # already applied by the trust core; spread by flush if new
        else:
            handler = self.handlers.get(type(message))
            if handler is None:
                self.ignored += 1
                return
            handler(sender_id, source, message)

    def flush(self) -> None:
        """Take every output of the membership and trust cores, until neither has more.

        One loop, never nested: a revocation or a replay only feeds the cores, and the next
        round of the loop takes what that produced.
        """
        core = self._core()
        nursery = self.nursery
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
                self._on_revoked(node_id)
            replays = self.endpoint.core.unblocked()
            for sender_id, source, gossip in replays:
                # rumors by authors we now know get in; the rest are reported again
                self.to_core(sender_id, source, gossip, reliable=False)
            if not revoked and not replays:
                break
        if core.has_left and core.leave_flushed:
            self.leave_flushed.set()
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
                if self.nursery is not None:
                    self.nursery.start_soon(self._send_packets, packets[i:])
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
                if self.nursery is not None:
                    self.nursery.start_soon(self._send_reliable, s)
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
                    self.reliable_sent += 1
                    return
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self.reliable_failed += 1  # refused, broken or timed out
            core = self.core
            if core is not None:
                core.reliable_failed(send.address, send.message, trio.current_time())
                self._wake.set()

    def _certificate_chunks(self) -> list[tuple[bytes, ...]]:
        ids = [m.node_id for m in self._core().members()]
        raws = [r for r in (self.endpoint.trust.raw_certificate(n) for n in ids) if r is not None]
        return [tuple(raws[i : i + MAX_CERTIFICATES_PER_MESSAGE]) for i in range(0, len(raws), MAX_CERTIFICATES_PER_MESSAGE)]
