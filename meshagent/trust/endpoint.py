"""A node's secure endpoint: the trio shell of ``protocol.trust.TrustCore`` over a transport.

Theory of operation
-------------------
Everything a node sends is sealed here (``send`` for a datagram, ``seal`` for a packet the
node writes on a TCP stream itself); everything it receives comes out of ``receive`` (or
``open`` for a packet read from a stream) as a verified
``protocol.wire.Envelope`` with the address it came from. Bad packets never get out: they
are dropped and counted by reason (``statistics()``), and the loop goes on.

Certificate exchange, held packets, rate limits and revocations are the sans-IO
``TrustCore``'s (see its docstring): this shell feeds it each datagram with the clocks and
sends the packets it asks for, in one direction; nothing calls back. Revocations applied by
the core come out of ``revoked()`` for the node to act on.

Certificates: a peer can only verify us if it has our certificate. Rather than attach it
to every packet (about 160 bytes each), the endpoint attaches it to the first few
datagrams it sends to an address in each refresh period (default: 3 per 30 s), and to
every packet written on a stream.

The wall clock (for ``issued_at_ms`` and certificate validity) and the monotonic clock (for
rate limits) are injected, so the endpoint runs unchanged in virtual time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import attrs
import trio

from meshagent.transport.base import Address, Transport
from protocol.identity import TrustStore
from protocol.trust import MAX_CERTIFICATES_PER_MESSAGE, TABLE_LIMIT, BoundedTable, TrustCore
from protocol.wire import Envelope, Opener, Sealer, WireLimits

__all__ = [
    "MAX_CERTIFICATES_PER_MESSAGE",
    "EndpointStatistics",
    "Received",
    "SecureEndpoint",
    "WallClockMs",
    "system_wall_clock_ms",
]

WallClockMs = Callable[[], int]
ATTACHED_MEMORY = 4096


def system_wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.frozen
class EndpointStatistics:
    sent: int
    received: int
    dropped: dict[str, int]
    certificate_requests_sent: int
    certificates_attached: int
    revocations_applied: int
    certificates_refused: int  # passed on by peers, but did not parse or verify
    held_released: int  # packets from then-unknown signers opened once their certificate came
    amplification_refused: int  # certificate requests not sent: larger than the unverified packet


@attrs.frozen
class Received:
    envelope: Envelope
    source: Address


class SecureEndpoint:
    """Signs what a node sends and verifies what it receives, over one transport."""

    def __init__(
        self,
        transport: Transport,
        sealer: Sealer,
        trust: TrustStore,
        *,
        limits: WireLimits | None = None,
        wall_clock_ms: WallClockMs = system_wall_clock_ms,
        certificate_refresh_s: float = 30.0,
        certificate_sends: int = 3,
        certificate_request_interval_s: float = 1.0,
        not_before_ms: int = 0,
        table_limit: int = TABLE_LIMIT,
    ) -> None:
        self.transport = transport
        self.core = TrustCore(
            sealer,
            trust,
            limits=limits,
            max_datagram_bytes=transport.max_datagram_bytes,
            request_interval_s=certificate_request_interval_s,
            not_before_ms=not_before_ms,
            table_limit=table_limit,
        )
        self.trust = trust
        self.wall_clock_ms = wall_clock_ms
        self._refresh_s = certificate_refresh_s
        self._cert_sends = certificate_sends
        # address -> (period start, certificates attached in that period)
        self._attached: BoundedTable[Address, tuple[float, int]] = BoundedTable(ATTACHED_MEMORY, certificate_refresh_s)
        self._ready: deque[Received] = deque()
        self._revoked: list[str] = []
        self._sent = 0

    @property
    def sealer(self) -> Sealer:
        return self.core.sealer

    @property
    def opener(self) -> Opener:
        return self.core.opener

    @property
    def node_id(self) -> str:
        return self.core.node_id

    @property
    def address(self) -> Address:
        return self.transport.address

    def statistics(self) -> EndpointStatistics:
        opened = self.opener.statistics()
        core = self.core.statistics()
        return EndpointStatistics(
            sent=self._sent,
            received=opened.accepted,
            dropped=opened.dropped,
            certificate_requests_sent=core.certificate_requests_sent,
            certificates_attached=core.certificates_attached,
            revocations_applied=core.revocations_applied,
            certificates_refused=core.certificates_refused,
            held_released=core.held_released,
            amplification_refused=core.amplification_refused,
        )

    def should_attach(self, destination: Address) -> bool:
        """Whether the next packet to ``destination`` should carry our certificate (counts it)."""
        now = trio.current_time()
        start, count = self._attached.get(destination, now) or (now, 0)
        if now - start >= self._refresh_s:
            start, count = now, 0
        if count < self._cert_sends:
            self._attached.put(destination, (start, count + 1), start)
            return True
        return False

    def forget_peer(self, destination: Address, node_id: str | None = None) -> None:
        """A peer restarted or left: attach our certificate again next time."""
        self._attached.pop(destination)
        if node_id is not None:
            self.opener.forget(node_id)

    def seal(self, message: object, *, attach_certificate: bool = False) -> bytes:
        return self.core.seal(message, self.wall_clock_ms(), attach_certificate=attach_certificate)

    async def send(self, destination: Address, message: object, *, attach_certificate: bool | None = None) -> None:
        """Sign ``message`` and send it as one datagram (best effort)."""
        if attach_certificate is None:
            packet = self.sealed_for(destination, message)
        else:
            packet = self.seal(message, attach_certificate=attach_certificate)
            if attach_certificate and len(packet) > self.transport.max_datagram_bytes:
                packet = self.seal(message)  # no room for the certificate: send it bare
        await self.transport.send_datagram(destination, packet)
        self._sent += 1

    def sealed_for(self, destination: Address, message: object) -> bytes:
        """``message`` sealed as ``send`` would seal it for ``destination`` (counts the
        certificate attachment as ``send`` does), for a caller that sends the bytes itself."""
        attach = self.should_attach(destination)
        packet = self.seal(message, attach_certificate=attach)
        if attach and len(packet) > self.transport.max_datagram_bytes:
            packet = self.seal(message)  # no room for the certificate: send it bare
        return packet

    async def send_packet(self, destination: Address, packet: bytes) -> None:
        """Send bytes already sealed (the same urgent packet to many members)."""
        await self.transport.send_datagram(destination, packet)
        self._sent += 1

    def send_packet_nowait(self, destination: Address, packet: bytes) -> bool:
        """``send_packet`` if the transport takes it without waiting (see
        ``Transport.send_datagram_nowait``); ``False``: nothing done, await ``send_packet``."""
        if self.transport.send_datagram_nowait(destination, packet):
            self._sent += 1
            return True
        return False

    def open(self, packet: bytes, source: Address, *, stream: bool = False) -> Envelope | None:
        """Verify one packet; ``None`` if it was dropped (counted) or consumed by the core.

        A datagram from a signer we have no certificate for is held by the core while it
        asks for the certificate; once it arrives the packet comes out of ``receive``.
        """
        now, now_ms = trio.current_time(), self.wall_clock_ms()
        if stream:
            env = self.core.open_stream(packet, source if source[0] else None, now, now_ms)
        else:
            env = self.core.open_datagram(packet, source, now, now_ms)
        self._collect()
        return env

    def _collect(self) -> None:
        for env, source in self.core.released():
            self._ready.append(Received(env, source))
        self._revoked.extend(self.core.revoked())

    def take_ready(self) -> list[Received]:
        """Held datagrams released by the core since the last call (for a caller that reads
        the transport itself instead of ``receive``)."""
        self._collect()
        out = list(self._ready)
        self._ready.clear()
        return out

    def revoked(self) -> list[str]:
        """Node ids newly revoked since the last call (to forget and spread)."""
        self._collect()
        out, self._revoked = self._revoked, []
        return out

    def pending_outgoing(self) -> list[tuple[Address, bytes]]:
        """Packets the trust core wants sent (certificate requests and answers)."""
        return self.core.outgoing()

    async def flush(self) -> None:
        """Send what the trust core asked for."""
        for destination, packet in self.core.outgoing():
            await self.send_packet(destination, packet)

    async def receive(self) -> Received:
        """The next verified datagram. The core handles certificate exchange and revocations."""
        while True:
            await self.flush()
            if self._ready:
                return self._ready.popleft()
            datagram = await self.transport.receive_datagram()
            env = self.open(datagram.packet, datagram.source)
            if env is not None:
                self._ready.append(Received(env, datagram.source))

    def certificates_for(self, node_ids: Iterable[str], *, budget_bytes: int) -> tuple[bytes, ...]:
        """Known certificates of ``node_ids``, as many as fit in ``budget_bytes``."""
        return self.core.certificates_for(node_ids, budget_bytes=budget_bytes)

    def learn_certificates(self, certificates: Iterable[bytes]) -> int:
        """Verify and keep certificates passed on by a peer; returns how many were usable."""
        learned = self.core.learn_certificates(certificates, trio.current_time(), self.wall_clock_ms())
        self._collect()
        return learned

    def apply_revocation(self, record: bytes) -> str | None:
        """Apply a CA-signed revocation; returns the revoked node id if it was new."""
        got = self.core.apply_revocation(record, trio.current_time(), self.wall_clock_ms())
        self._collect()
        return got


