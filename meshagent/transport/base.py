"""The one interface every meshagent transport implements, and what they share.

Theory of operation
-------------------
The mesh needs two things from a network (as memberlist's ``transport.go`` does):

* **datagrams**, best effort, at most ``max_datagram_bytes`` (1,400 by default, below a
  typical path MTU): probes, acks, gossip. Loss is normal and handled by the protocol, so
  sending never raises for a network failure; it is counted in ``statistics()``. Sending
  more than the limit *is* raised (``DatagramTooLarge``): it is our own caller's bug. A
  datagram over the limit that arrives anyway is dropped and counted, never delivered.
* **streams**, reliable and ordered, for push-pull state sync and the TCP fallback probe.
  A stream carries length-prefixed packets (``protocol.wire.frame``); ``FramedStream`` below
  sends and receives them with a size limit.

A transport is bound (its sockets exist, its address is known) as soon as it is
constructed by its factory; ``serve`` then accepts incoming streams for as long as it runs,
and ``aclose`` releases everything. Timeouts are the caller's: wrap ``open_stream`` or a
frame exchange in ``trio.move_on_after``. Addresses are ``(host, port)`` pairs with a
numeric host; a transport may be reachable at an address (``address``, what peers are told)
other than the one it bound (``bind_address``), e.g. behind NAT or bound to ``0.0.0.0``.

Implementations: ``meshagent.transport.udp`` (UDP and TCP on one port, 7946 by default)
and ``meshagent.transport.memory`` (a simulated network on the trio clock).
"""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self

import attrs
import trio

from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.wire import MAX_STREAM_BYTES, MAX_UDP_BYTES, FrameReader, frame

Address = tuple[str, int]
"""``(numeric host, port)``; IPv6 hosts without brackets, e.g. ``("::1", 7946)``."""

StreamHandler = Callable[[trio.abc.Stream], Awaitable[Any]]

DEFAULT_PORT = 7946
DEFAULT_MAX_DATAGRAM_BYTES = MAX_UDP_BYTES
DEFAULT_RECEIVE_QUEUE = 1024


class DatagramTooLarge(LocalProtocolError):
    """A caller asked to send a datagram over the transport's ``max_datagram_bytes``."""


@attrs.frozen
class Datagram:
    """One received datagram and the address it came from (reply there)."""

    packet: bytes
    source: Address


@attrs.frozen
class TransportStatistics:
    """Counters since the transport was created (trio ``statistics()`` convention)."""

    datagrams_sent: int  # handed to the network (may still be lost on the way)
    datagrams_received: int  # delivered to ``receive_datagram``
    bytes_sent: int
    bytes_received: int
    dropped_oversize: int  # arrived larger than max_datagram_bytes: dropped
    dropped_overflow: int  # arrived while the receive queue was full: dropped
    dropped_kernel: int  # dropped by the kernel: the socket's receive buffer was full
    dropped_not_allowed: int  # datagrams and streams from outside the allowed networks
    send_errors: int  # the network refused a send (unreachable, wrong family, ...)
    receive_errors: int  # transient socket errors while receiving
    streams_opened: int  # outgoing streams connected
    streams_accepted: int  # incoming streams handed to the serve() handler
    stream_errors: int  # accept failures and streams that broke under their handler


@attrs.define
class Counters:
    """The mutable counters behind ``TransportStatistics`` (implementations bump these)."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_oversize: int = 0
    dropped_overflow: int = 0
    dropped_kernel: int = 0
    dropped_not_allowed: int = 0
    send_errors: int = 0
    receive_errors: int = 0
    streams_opened: int = 0
    streams_accepted: int = 0
    stream_errors: int = 0

    def sent(self, size: int) -> None:
        """One datagram of ``size`` bytes handed to the network."""
        self.datagrams_sent += 1
        self.bytes_sent += size

    def received(self, size: int) -> None:
        """One datagram of ``size`` bytes delivered to ``receive_datagram``."""
        self.datagrams_received += 1
        self.bytes_received += size

    def snapshot(self) -> TransportStatistics:
        return TransportStatistics(**attrs.asdict(self))


def drop_reasons(stats: TransportStatistics) -> dict[str, int]:
    """The transport's drops by reason, named as in ``/metrics`` next to the wire's."""
    return {
        "oversize_datagram": stats.dropped_oversize,
        "receive_queue_full": stats.dropped_overflow,
        "kernel_receive_buffer_full": stats.dropped_kernel,
        "not_allowed": stats.dropped_not_allowed,
    }


Allowed = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_allow(cidrs: Iterable[str], key: str = "mesh.allow") -> Allowed:
    """CIDRs from the config; a bad one is a ``LocalProtocolError`` naming ``key``."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise LocalProtocolError(f"{key}: {cidr!r} is not an IP network (CIDR)") from None
    return tuple(out)


def is_allowed(allow: Allowed | None, host: str) -> bool:
    """Whether a peer at ``host`` may talk to us (no list: everyone)."""
    if allow is None:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)


class Transport(abc.ABC):
    """Datagrams and streams between mesh nodes, on trio.

    One task at a time may call ``receive_datagram``; any number may send and open streams.
    After ``aclose`` every method raises ``trio.ClosedResourceError``.
    """

    max_datagram_bytes: int

    @property
    @abc.abstractmethod
    def address(self) -> Address:
        """Where peers reach this transport (the advertised address)."""

    @property
    @abc.abstractmethod
    def bind_address(self) -> Address:
        """The local address the transport is bound to."""

    @abc.abstractmethod
    async def send_datagram(self, destination: Address, packet: bytes) -> None:
        """Send one datagram, best effort.

        Raises ``DatagramTooLarge`` if ``len(packet) > max_datagram_bytes`` (a caller bug).
        Network failures are counted in ``statistics().send_errors``, never raised.
        """

    @abc.abstractmethod
    async def receive_datagram(self) -> Datagram:
        """Wait for the next datagram. Oversize ones are dropped and counted, not returned."""

    def send_datagram_nowait(self, destination: Address, packet: bytes) -> bool:
        """Send one datagram now if the network takes it without waiting.

        ``True``: dealt with (sent, or refused by the network and counted, as
        ``send_datagram`` would); ``False``: it would have to wait, so nothing was done and
        the caller awaits ``send_datagram``. Same size rule as ``send_datagram``. The
        default never sends. A node sends a whole flush this way with no task switch.
        """
        return False

    def receive_datagram_nowait(self) -> Datagram | None:
        """The next datagram if one is already here, else ``None`` (the default: never).

        For draining a burst after ``receive_datagram`` returned, so a node handles several
        datagrams and then flushes once. Same drops and counters as ``receive_datagram``;
        only the task that calls ``receive_datagram`` may call it.
        """
        return None

    @abc.abstractmethod
    async def open_stream(self, destination: Address) -> trio.abc.Stream:
        """Connect a reliable stream to ``destination``'s ``serve`` handler.

        Raises ``OSError`` (``ConnectionRefusedError`` when nothing listens there). It may
        wait as long as a real connect would (a partitioned peer): apply a timeout scope.
        """

    @abc.abstractmethod
    async def serve(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept incoming streams until cancelled; start with ``await nursery.start(...)``.

        Each stream runs ``handler(stream)`` in its own task and is closed when the handler
        returns. A stream that breaks under the handler (``trio.BrokenResourceError``: the
        peer went away) is counted in ``stream_errors``; any other exception from the
        handler propagates and ends ``serve``, as in ``trio.serve_listeners``. At most one
        ``serve`` per transport.
        """

    # Implementations keep their counters and closed flag here; the two methods below use them.
    _counters: Counters
    _closed: bool

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        return self._counters.snapshot()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("transport is closed")

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the address (sockets, or the simulated network's slot). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def check_datagram_size(packet: bytes, max_datagram_bytes: int) -> None:
    """Refuse an oversize datagram on send (shared by the implementations)."""
    if len(packet) > max_datagram_bytes:
        raise DatagramTooLarge(
            f"datagram of {len(packet)} bytes exceeds max_datagram_bytes={max_datagram_bytes}"
        )


async def run_stream_handler(
    handler: StreamHandler, stream: trio.abc.Stream, counters: Counters
) -> None:
    """Run one accepted stream's handler; always close the stream (shared by ``serve``)."""
    try:
        await handler(stream)
    except trio.BrokenResourceError:
        counters.stream_errors += 1
    finally:
        await trio.aclose_forcefully(stream)


# --- framed packets on a stream ---------------------------------------------------------------


class FramedStream:
    """Packets over a byte stream, each prefixed by its u32 length (``protocol.wire.frame``).

    ``receive_untrusted`` returns the next packet, or ``None`` when the peer closed the
    stream cleanly between packets. Bad bytes from the peer (a frame over ``max_frame_bytes``
    or a stream that ends inside a frame) raise ``BadPacket`` and only that; afterwards the
    stream is out of step and must be closed. Broken connections raise what the underlying
    stream raises (``trio.BrokenResourceError``).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_bytes: int = MAX_STREAM_BYTES,
        receive_chunk_bytes: int = 65536,
    ) -> None:
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self._reader = FrameReader(max_frame_bytes)
        self._chunk = receive_chunk_bytes

    async def send(self, packet: bytes) -> None:
        if len(packet) > self.max_frame_bytes:
            raise LocalProtocolError(
                f"packet of {len(packet)} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        await self.stream.send_all(frame(packet))

    async def receive_untrusted(self) -> bytes | None:
        while True:
            packet = self._reader.next_frame_untrusted()
            if packet is not None:
                return packet
            data = await self.stream.receive_some(self._chunk)
            if not data:
                if self._reader.buffered:
                    raise BadPacket(DropReason.TRUNCATED, "stream ended inside a frame")
                return None
            self._reader.feed(bytes(data))

    async def send_eof(self) -> None:
        """Half-close if the stream supports it (TCP does), so the peer sees the end."""
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
