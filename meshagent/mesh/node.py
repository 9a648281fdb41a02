"""The mesh node: drives the membership core with the trio clock over a secure endpoint.

Theory of operation
-------------------
``MeshNode`` owns one ``SecureEndpoint`` (transport + signatures) and one
``protocol.swim.Membership`` (the sans-IO core). It is the facade the layers above call:
joining and leaving, state records, urgent broadcasts, routes for their own message types
(``on_message``), delegates (``add_delegate``), events (``subscribe``) and ``statistics()``.
Moving the bytes is the job of its ``DatagramPipeline`` (``meshagent.mesh.pipeline``, as
memberlist keeps ``net.go`` apart from ``memberlist.go``), whose three tasks run in the node's
nursery:

* **receive**: each verified datagram goes to the core (``receive``), then the core's
  outputs are flushed; probes are handled as they are read, ahead of a bounded backlog;
* **timers**: sleep until the core's ``next_deadline()`` (or until an input changed it),
  ``tick``, flush;
* **streams**: ``transport.serve`` reads framed packets from incoming TCP streams (push-pull
  and TCP probes) and hands them to the core as ``reliable``.

Every facade call that feeds a core ends with the pipeline's ``flush``; the pipeline hands
membership events back to the node (``_on_event``: peers to forget, subscribers) and revoked
node ids (``_on_revocation``), in one direction.

Trust: the endpoint's ``TrustCore`` (``protocol.trust``) holds every certificate and
revocation rule; the node only feeds it and takes its outputs, in one direction. Rumors
refused for an unknown author are reported to it (``rumor_authors_missing``) with the gossip
to replay; it asks the relay and hands the gossip back (``unblocked``) once an author is
known. When it applies a revocation (from a ``Revoke`` message, an urgent broadcast carrying
one, or ``revoke``), ``endpoint.revoked()`` names the node: in the flush the membership
core forgets it everywhere, and a revocation new to us is broadcast urgently to every member
so the whole mesh learns it in one round.

Everything takes the trio clock for ``now`` and an injected wall clock for the wire, so the
same node runs on real UDP and on the in-memory network under ``MockClock``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from meshagent.mesh.pipeline import (
    MAX_RELIABLE_INFLIGHT,
    RECEIVE_BURST,
    RECEIVE_DRAIN,
    WAITING_LIMIT,
    DatagramPipeline,
    _TrackingAuthenticator,
)
from meshagent.mesh.stats import LatenessRecorder, NodeStatistics
from meshagent.transport.base import Address, Transport, drop_reasons
from meshagent.trust.endpoint import SecureEndpoint, WallClockMs, system_wall_clock_ms
from protocol.identity import NodeIdentity, TrustStore
from protocol.messages import TYPE_OF, CertificateRequest, Certificates, Revoke
from protocol.state import Capacity, Scope, StateRecord
from protocol.swim import (
    HANDLED_MESSAGES,
    Delegate,
    Delivered,
    ItemAuthenticator,
    LocalNode,
    Member,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    Membership,
    StateRecords,
    SwimConfig,
    UrgentBroadcasts,
)
from protocol.wire import Sealer, WireLimits

RECENT_EVENTS = 256

# the pipeline's tuning, importable from here as before the split
__all__ = ["MAX_RELIABLE_INFLIGHT", "RECEIVE_BURST", "RECEIVE_DRAIN", "RECENT_EVENTS", "WAITING_LIMIT", "MeshNode"]


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
    ) -> None:
        self.identity = identity
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
        self._nursery: trio.Nursery | None = None
        self._subscribers: list[trio.MemorySendChannel[Any]] = []
        self.recent_events: deque[tuple[float, Any]] = deque(maxlen=RECENT_EVENTS)
        self._events_dropped = 0
        self._stopped = trio.Event()
        self._spread: set[bytes] = set()  # revocations we have broadcast
        self._revocation_hook = on_revocation
        self._pipeline = DatagramPipeline(
            self.endpoint, swim_config, self._tracker,
            on_event=self._on_event, on_revoked=self._on_revocation, stopped=self._stopped,
        )
        # the pipeline's flush, under the name every facade call that feeds a core ends with
        self._flush = self._pipeline.flush

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

    @property
    def lateness(self) -> LatenessRecorder:
        """How late the timer task's ticks ran behind the core's deadlines."""
        return self._pipeline.lateness

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or until ``leave`` has finished."""
        self.membership = Membership(
            self.config, self.local, self.rng, trio.current_time(),
            authenticator=self._authenticator, delegates=self._delegates,
        )
        pipeline = self._pipeline
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                pipeline.attach(self.membership, nursery)
                await nursery.start(self.endpoint.transport.serve, pipeline.serve_stream)
                nursery.start_soon(pipeline.receive_loop)
                nursery.start_soon(pipeline.timer_loop)
                if self.seeds:
                    self.core.join(self.seeds, trio.current_time())
                    self._flush()
                task_status.started()
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            pipeline.attach(self.membership, None)
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
            await self._pipeline.leave_flushed.wait()
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
            if (cls in self._pipeline.handlers or cls in claimed or cls in HANDLED_MESSAGES
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
        self._pipeline.handlers[cls] = handler
        if first:
            self._pipeline.first_types.add(TYPE_OF[cls])

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
        pipeline = self._pipeline
        return NodeStatistics(
            membership=self.core.statistics(),
            datagrams_sent=ep.sent,
            datagrams_received=ep.received,
            dropped={**ep.dropped, **drop_reasons(self.endpoint.transport.statistics()),
                     "receive_backlog_full": pipeline.waiting_dropped},
            reliable_sent=pipeline.reliable_sent,
            reliable_failed=pipeline.reliable_failed,
            ignored_messages=pipeline.ignored,
            late_wakeups=pipeline.late_wakeups,
            subscriber_events_dropped=self._events_dropped,
            certificates_refused=ep.certificates_refused,
            tick_lateness_p99_s=pipeline.lateness.quantile(0.99),
            tick_lateness_max_s=pipeline.lateness.max_s,
        )

    # --- what the pipeline hands back ---------------------------------------------------------

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
