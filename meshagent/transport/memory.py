"""A simulated network in one process: many transports, faults from a seeded RNG, trio time.

Theory of operation
-------------------
``MemoryNetwork`` holds endpoints by address (``net.endpoint(addr)`` returns a
``MemoryTransport``) and one scheduler task (``await nursery.start(net.run)``, or
``async with open_memory_network(rng) as net``). Sending a datagram decides its fate at
once, drawing from the network's ``random.Random`` in a fixed order: lost or not, its delay
(``delay_s`` plus uniform jitter), whether a duplicate follows (with its own delay), whether
it is held back to arrive out of order. Each surviving copy goes on one heap keyed by
(delivery time, send sequence); the scheduler sleeps until the earliest time, then hands
every due datagram to its destination's bounded inbox. One task and one heap serve the
whole network, so ten thousand endpoints cost ten thousand memory channels, not tasks, and
a datagram costs one heap push and pop (memberlist's ``mock_transport.go`` has no faults
and no time; trio's DTLS tests' "terrible network" inspired the fault set).

A large simulation can set ``delivery_quantum_s`` (say 1 ms): delivery times round up to a
multiple of it, so the scheduler wakes once per quantum instead of once per datagram.

Time is ``trio.current_time()``, so under ``trio.testing.MockClock(autojump_threshold=0)``
a simulated hour passes in as long as the work takes. Given the same seed and the same
sequence of sends, the delivery trace (see ``on_deliver``) is the same. Trio itself
shuffles tasks that wake at the same instant, so a simulation with many sending tasks is
only reproducible run to run if it also fixes that order.

Faults:
* per-link ``LinkConditions`` (directional; ``set_link(a, b, c)`` sets both ways unless told
  otherwise), falling back to the network's default;
* partitions: ``partition(side_a, side_b)`` cuts every link between the two sets (both
  directions; ``side_b=None`` means "everyone not in side_a") until ``heal(cut)``.
  A cut also drops datagrams already in flight across it, as a real partition would.

Streams are ``trio.testing.memory_stream_pair`` halves: reliable and immediate once
connected. Connecting takes one round trip of link delay, is refused when nothing serves
at the address, and across a partition waits ``connect_timeout_s`` (like an unanswered
SYN) and then raises ``TimeoutError``. An established stream ignores later loss and
partitions; the protocol's own timeouts cover a peer that stops answering on it.
"""

from __future__ import annotations

import errno
import heapq
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio
import trio.testing

from meshagent.transport.base import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    DEFAULT_PORT,
    DEFAULT_RECEIVE_QUEUE,
    Address,
    Counters,
    Datagram,
    StreamHandler,
    Transport,
    check_datagram_size,
    run_stream_handler,
)
from protocol.errors import LocalProtocolError

DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_STREAM_BACKLOG = 128

DeliveryObserver = Callable[[float, Address, Address, bytes], None]
"""``(time, source, destination, packet)`` for each datagram handed to an inbox."""


def _probability(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise LocalProtocolError(f"{attribute.name} must be a probability in [0, 1], got {value}")


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0.0 and math.isfinite(value)):
        raise LocalProtocolError(f"{attribute.name} must be a finite number >= 0, got {value}")


@attrs.frozen
class LinkConditions:
    """How one direction of a link treats datagrams."""

    loss: float = attrs.field(default=0.0, validator=_probability)
    delay_s: float = attrs.field(default=0.0, validator=_non_negative)
    jitter_s: float = attrs.field(default=0.0, validator=_non_negative)  # + uniform [0, jitter)
    duplicate: float = attrs.field(default=0.0, validator=_probability)  # one extra copy
    reorder: float = attrs.field(default=0.0, validator=_probability)  # held back...
    reorder_delay_s: float = attrs.field(default=0.01, validator=_non_negative)  # ...this long


PERFECT = LinkConditions()


@attrs.frozen
class Cut:
    """A partition made by ``MemoryNetwork.partition``; pass it to ``heal``."""

    side_a: frozenset[Address]
    side_b: frozenset[Address] | None  # None: everyone not in side_a

    def separates(self, x: Address, y: Address) -> bool:
        a = self.side_a
        if self.side_b is None:
            return (x in a) != (y in a)
        b = self.side_b
        return (x in a and y in b) or (x in b and y in a)


@attrs.frozen
class NetworkStatistics:
    sent: int  # datagrams handed to the network
    delivered: int  # copies handed to an endpoint (which may still drop them: full/oversize)
    lost: int  # dropped by link loss
    duplicated: int  # extra copies made
    reordered: int  # datagrams held back
    cut: int  # dropped by a partition (at send or in flight)
    undeliverable: int  # no endpoint at the destination when it arrived
    in_flight: int  # copies waiting on the heap now
    endpoints: int


@attrs.define
class _NetCounters:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    cut: int = 0
    undeliverable: int = 0


class MemoryNetwork:
    """Endpoints, links, partitions and the delivery scheduler. See the module docstring."""

    def __init__(
        self,
        rng: random.Random,
        *,
        default: LinkConditions = PERFECT,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        receive_queue: int = DEFAULT_RECEIVE_QUEUE,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        delivery_quantum_s: float = 0.0,
        on_deliver: DeliveryObserver | None = None,
    ) -> None:
        if not (delivery_quantum_s >= 0.0 and math.isfinite(delivery_quantum_s)):
            raise LocalProtocolError("delivery_quantum_s must be a finite number >= 0")
        self.rng = rng
        self.delivery_quantum_s = delivery_quantum_s
        self.default = default
        self.max_datagram_bytes = max_datagram_bytes
        self.receive_queue = receive_queue
        self.connect_timeout_s = connect_timeout_s
        self.on_deliver = on_deliver
        self._endpoints: dict[Address, MemoryTransport] = {}
        self._links: dict[tuple[Address, Address], LinkConditions] = {}
        self._cuts: list[Cut] = []
        # (deliver_at, seq, source, destination, packet)
        self._heap: list[tuple[float, int, Address, Address, bytes]] = []
        self._seq = 0
        self._counters = _NetCounters()
        self._state = "new"  # -> "running" -> "stopped"
        self._wait_scope: trio.CancelScope | None = None
        self._next_host = 0

    # --- endpoints and conditions -------------------------------------------------------

    def endpoint(
        self,
        address: Address | None = None,
        *,
        max_datagram_bytes: int | None = None,
        receive_queue: int | None = None,
    ) -> MemoryTransport:
        """A new transport at ``address`` (default: the next free 10.x.y.z:7946).

        Raises ``OSError(EADDRINUSE)`` if an open endpoint holds the address, as bind would.
        """
        if address is None:
            address = self._next_free_address()
        if address in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"address {address} is in use")
        ep = MemoryTransport(
            self,
            address,
            max_datagram_bytes or self.max_datagram_bytes,
            receive_queue or self.receive_queue,
        )
        self._endpoints[address] = ep
        return ep

    def _next_free_address(self) -> Address:
        while True:  # bounded by the 2**24 hosts of 10.0.0.0/8
            self._next_host += 1
            n = self._next_host
            if n >= 2**24 - 1:
                raise LocalProtocolError("no free addresses left in 10.0.0.0/8")
            address = (f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", DEFAULT_PORT)
            if address not in self._endpoints:
                return address

    @property
    def addresses(self) -> list[Address]:
        return list(self._endpoints)

    def set_link(
        self,
        source: Address,
        destination: Address,
        conditions: LinkConditions,
        *,
        both_ways: bool = True,
    ) -> None:
        self._links[source, destination] = conditions
        if both_ways:
            self._links[destination, source] = conditions

    def clear_link(self, source: Address, destination: Address, *, both_ways: bool = True) -> None:
        self._links.pop((source, destination), None)
        if both_ways:
            self._links.pop((destination, source), None)

    def conditions(self, source: Address, destination: Address) -> LinkConditions:
        return self._links.get((source, destination), self.default)

    def partition(self, side_a: Iterable[Address], side_b: Iterable[Address] | None = None) -> Cut:
        """Cut every link between ``side_a`` and ``side_b`` (default: all others), both ways."""
        a = frozenset(side_a)
        b = None if side_b is None else frozenset(side_b)
        if b is not None and a & b:
            raise LocalProtocolError("the two sides of a partition overlap")
        cut = Cut(a, b)
        self._cuts.append(cut)
        return cut

    def heal(self, cut: Cut) -> None:
        """Lift one partition (other cuts stay)."""
        try:
            self._cuts.remove(cut)
        except ValueError:
            raise LocalProtocolError("that partition is not in place") from None

    def heal_all(self) -> None:
        self._cuts.clear()

    def reachable(self, source: Address, destination: Address) -> bool:
        """False if a partition separates the two addresses."""
        return not any(cut.separates(source, destination) for cut in self._cuts)

    def statistics(self) -> NetworkStatistics:
        c = self._counters
        return NetworkStatistics(
            sent=c.sent,
            delivered=c.delivered,
            lost=c.lost,
            duplicated=c.duplicated,
            reordered=c.reordered,
            cut=c.cut,
            undeliverable=c.undeliverable,
            in_flight=len(self._heap),
            endpoints=len(self._endpoints),
        )

    # --- datagrams ------------------------------------------------------------------------

    def _send(self, source: Address, destination: Address, packet: bytes) -> None:
        if self._state == "new":
            raise LocalProtocolError("the memory network is not running: start MemoryNetwork.run")
        c = self._counters
        c.sent += 1
        # the common case (no partition, no per-link conditions) skips both look-ups: at a few
        # thousand datagrams per simulated second they showed in the profile of ``bench sim``
        if self._cuts and not self.reachable(source, destination):
            c.cut += 1
            return
        link = self._links.get((source, destination), self.default) if self._links else self.default
        rng = self.rng
        if link.loss and rng.random() < link.loss:
            c.lost += 1
            return
        now = trio.current_time()
        self._schedule(now + self._delay_s(link, rng), source, destination, packet)
        if link.duplicate and rng.random() < link.duplicate:
            c.duplicated += 1
            self._schedule(now + self._delay_s(link, rng), source, destination, packet)

    def _delay_s(self, link: LinkConditions, rng: random.Random) -> float:
        delay = link.delay_s
        if link.jitter_s:
            delay += rng.random() * link.jitter_s
        if link.reorder and rng.random() < link.reorder:
            self._counters.reordered += 1
            delay += link.reorder_delay_s
        return delay

    def _schedule(self, at: float, source: Address, destination: Address, packet: bytes) -> None:
        quantum = self.delivery_quantum_s
        if quantum:
            at = math.ceil(at / quantum) * quantum
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, source, destination, packet))
        scope = self._wait_scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The delivery scheduler; runs until cancelled. Start with ``nursery.start``."""
        if self._state != "new":
            raise LocalProtocolError("MemoryNetwork.run may only run once")
        self._state = "running"
        heap = self._heap
        try:
            task_status.started()
            while True:  # ends by cancellation
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, source, destination, packet = heapq.heappop(heap)
                    self._deliver(now, source, destination, packet)
                with trio.move_on_at(heap[0][0] if heap else math.inf) as scope:
                    self._wait_scope = scope
                    await trio.sleep_forever()
                self._wait_scope = None
        finally:
            self._wait_scope = None
            self._state = "stopped"

    def _deliver(self, now: float, source: Address, destination: Address, packet: bytes) -> None:
        c = self._counters
        if self._cuts and not self.reachable(source, destination):
            c.cut += 1
            return
        ep = self._endpoints.get(destination)
        if ep is None:
            c.undeliverable += 1
            return
        c.delivered += 1
        if self.on_deliver is not None:
            self.on_deliver(now, source, destination, packet)
        ep._arrive(packet, source)

    def _release(self, ep: MemoryTransport) -> None:
        if self._endpoints.get(ep.address) is ep:
            del self._endpoints[ep.address]


@asynccontextmanager
async def open_memory_network(rng: random.Random, **kwargs: object) -> AsyncIterator[MemoryNetwork]:
    """A running ``MemoryNetwork`` (keyword arguments as its constructor) for a block."""
    net = MemoryNetwork(rng, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()


class MemoryTransport(Transport):
    """One endpoint of a ``MemoryNetwork``; made by ``MemoryNetwork.endpoint``."""

    def __init__(
        self,
        network: MemoryNetwork,
        address: Address,
        max_datagram_bytes: int,
        receive_queue: int,
    ) -> None:
        self.network = network
        self.max_datagram_bytes = max_datagram_bytes
        self._address = address
        self._inbox_send, self._inbox = trio.open_memory_channel[Datagram](receive_queue)
        self._accept_send: trio.MemorySendChannel[trio.abc.Stream] | None = None
        self._counters = Counters()
        self._closed = False

    @property
    def address(self) -> Address:
        return self._address

    @property
    def bind_address(self) -> Address:
        return self._address

    async def send_datagram(self, destination: Address, packet: bytes) -> None:
        self._check_open()
        check_datagram_size(packet, self.max_datagram_bytes)
        await trio.lowlevel.checkpoint()
        self._check_open()
        self.network._send(self._address, destination, bytes(packet))
        self._counters.sent(len(packet))

    def send_datagram_nowait(self, destination: Address, packet: bytes) -> bool:
        self._check_open()
        check_datagram_size(packet, self.max_datagram_bytes)
        self.network._send(self._address, destination, bytes(packet))
        self._counters.sent(len(packet))
        return True

    def receive_datagram_nowait(self) -> Datagram | None:
        self._check_open()
        try:
            return self._inbox.receive_nowait()
        except trio.WouldBlock:
            return None

    def _arrive(self, packet: bytes, source: Address) -> None:
        if len(packet) > self.max_datagram_bytes:
            self._counters.dropped_oversize += 1
            return
        try:
            self._inbox_send.send_nowait(Datagram(packet, source))
        except trio.WouldBlock:
            self._counters.dropped_overflow += 1
            return
        self._counters.received(len(packet))

    async def receive_datagram(self) -> Datagram:
        self._check_open()
        return await self._inbox.receive()

    async def open_stream(self, destination: Address) -> trio.abc.Stream:
        self._check_open()
        net = self.network
        source = self._address
        if not (net.reachable(source, destination) and net.reachable(destination, source)):
            await trio.sleep(net.connect_timeout_s)
            raise TimeoutError(errno.ETIMEDOUT, f"connecting to {destination} timed out")
        round_trip_s = (
            net.conditions(source, destination).delay_s
            + net.conditions(destination, source).delay_s
        )
        await trio.sleep(round_trip_s)
        self._check_open()
        peer = net._endpoints.get(destination)
        if peer is None or peer._accept_send is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing serves at {destination}")
        ours, theirs = trio.testing.memory_stream_pair()
        try:
            peer._accept_send.send_nowait(theirs)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"{destination} is not accepting"
            ) from None
        self._counters.streams_opened += 1
        return ours

    async def serve(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._check_open()
        if self._accept_send is not None:
            raise LocalProtocolError("serve() is already running on this transport")
        accept_send, accept_receive = trio.open_memory_channel[trio.abc.Stream](
            DEFAULT_STREAM_BACKLOG
        )
        self._accept_send = accept_send
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for stream in accept_receive:  # ends when the transport closes
                    self._counters.streams_accepted += 1
                    nursery.start_soon(run_stream_handler, handler, stream, self._counters)
        finally:
            if self._accept_send is accept_send:
                self._accept_send = None
            accept_send.close()
            # connections that were queued but never accepted: close them, peer sees EOF
            while True:  # bounded by the backlog
                try:
                    pending = accept_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                await trio.aclose_forcefully(pending)
            accept_receive.close()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.network._release(self)
            self._inbox.close()
            self._inbox_send.close()
            if self._accept_send is not None:
                self._accept_send.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<MemoryTransport {self._address[0]}:{self._address[1]}>"
