"""A node's secure endpoint: transport + signing + verification + certificate exchange.

Theory of operation
-------------------
Everything a node sends is sealed here (``send`` for a datagram, ``seal`` for a packet the
node writes on a TCP stream itself); everything it receives comes out of ``receive`` (or
``open`` for a packet read from a stream) as a verified
``protocol.wire.Envelope`` with the address it came from. Bad packets never get out: they
are dropped and counted by reason (``statistics()``), and the loop goes on.

Certificates: a peer can only verify us if it has our certificate. Rather than attach it
to every packet (about 160 bytes each), the endpoint attaches it to the first few
datagrams it sends to an address in each refresh period (default: 3 per 30 s), and to
every packet written on a stream. If a peer still drops us as an unknown signer, we cannot know; but
the other direction heals itself: when *we* drop a packet from an unknown signer, we send
that address (rate-limited) a ``CertificateRequest`` with our certificate attached, and a
peer that receives a ``CertificateRequest`` naming itself answers with ``Certificates``
carrying its own, attached. Revocations arriving in ``Revoke`` messages are applied to the
trust store here, before any layer above sees a packet from the revoked node again.

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
from protocol.errors import BadPacket, DropReason
from protocol.identity import TrustStore
from protocol.messages import CertificateRequest, Certificates, Revoke
from protocol.wire import Envelope, Opener, Sealer, SequenceExhausted, WireLimits

WallClockMs = Callable[[], int]
MAX_CERTIFICATES_PER_MESSAGE = 64  # protocol.messages.Certificates' item limit
HELD_PACKETS = 256
ANSWERED_MEMORY = 4096
ANSWER_BURST = 16
ANSWER_RATE_PER_S = 8.0
HOLD_S = 5.0


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
        on_revocation: Callable[[str], None] | None = None,
        on_certificates: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self.sealer = sealer
        self.trust = trust
        self.opener = Opener(trust, limits)
        self.wall_clock_ms = wall_clock_ms
        self._refresh_s = certificate_refresh_s
        self._cert_sends = certificate_sends
        self._request_interval_s = certificate_request_interval_s
        self._on_revocation = on_revocation
        self._on_certificates = on_certificates
        # address -> (period start, certificates attached in that period)
        self._attached: dict[Address, tuple[float, int]] = {}
        self._requested: dict[Address, float] = {}
        self._answered: dict[Address, tuple[float, float]] = {}  # address -> (tokens, at)
        self._pending_requests: list[tuple[Address, str]] = []
        # datagrams from unknown signers, held while their certificate is fetched
        self._held: deque[tuple[str, bytes, Address, float]] = deque(maxlen=HELD_PACKETS)
        self._ready: deque[Received] = deque()
        self._held_released = 0
        self._sent = 0
        self._certs_attached = 0
        self._requests_sent = 0
        self._revocations = 0
        self._certs_refused = 0

    @property
    def node_id(self) -> str:
        return self.sealer.identity.node_id

    @property
    def address(self) -> Address:
        return self.transport.address

    def statistics(self) -> EndpointStatistics:
        opened = self.opener.statistics()
        return EndpointStatistics(
            sent=self._sent,
            received=opened.accepted,
            dropped=opened.dropped,
            certificate_requests_sent=self._requests_sent,
            certificates_attached=self._certs_attached,
            revocations_applied=self._revocations,
            certificates_refused=self._certs_refused,
            held_released=self._held_released,
        )

    def should_attach(self, destination: Address) -> bool:
        """Whether the next packet to ``destination`` should carry our certificate (counts it)."""
        now = trio.current_time()
        start, count = self._attached.get(destination, (now, 0))
        if now - start >= self._refresh_s:
            start, count = now, 0
        if count < self._cert_sends:
            self._attached[destination] = (start, count + 1)
            return True
        return False

    def forget_peer(self, destination: Address, node_id: str | None = None) -> None:
        """A peer restarted or left: attach our certificate again next time."""
        self._attached.pop(destination, None)
        if node_id is not None:
            self.opener.forget(node_id)

    def seal(self, message: object, *, attach_certificate: bool = False) -> bytes:
        try:
            packet = self.sealer.seal(message, self.wall_clock_ms(), attach_certificate=attach_certificate)
        except SequenceExhausted:
            # 2**32 packets in one boot epoch: move to the next epoch (persisted by the node)
            self.sealer = Sealer(self.sealer.identity, self.sealer.boot_epoch + 1)
            packet = self.sealer.seal(message, self.wall_clock_ms(), attach_certificate=attach_certificate)
        if attach_certificate:
            self._certs_attached += 1
        return packet

    async def send(self, destination: Address, message: object, *, attach_certificate: bool | None = None) -> None:
        """Sign ``message`` and send it as one datagram (best effort)."""
        attach = self.should_attach(destination) if attach_certificate is None else attach_certificate
        packet = self.seal(message, attach_certificate=attach)
        if attach and len(packet) > self.transport.max_datagram_bytes:
            packet = self.seal(message)  # no room for the certificate: send it bare
        await self.transport.send_datagram(destination, packet)
        self._sent += 1

    async def send_packet(self, destination: Address, packet: bytes) -> None:
        """Send bytes already sealed (the same urgent packet to many members)."""
        await self.transport.send_datagram(destination, packet)
        self._sent += 1

    def open(self, packet: bytes, source: Address, *, stream: bool = False) -> Envelope | None:
        """Verify one packet; ``None`` (counted) if it must be dropped.

        A datagram from a signer we have no certificate for is also held (a few seconds, a
        bounded number) while we ask for the certificate: when it arrives the packet is
        opened again, so the rumors it carried are not lost.
        """
        try:
            env = self.opener.open_untrusted(packet, self.wall_clock_ms(), stream=stream)
        except BadPacket as exc:
            if exc.reason is DropReason.UNKNOWN_SIGNER and not stream:
                self._want_certificate(source, exc.detail)
                self._held.append((exc.detail, packet, source, trio.current_time()))
            return None
        return env

    def _release_held(self) -> None:
        now = trio.current_time()
        held = list(self._held)
        self._held.clear()
        for sender_id, packet, source, at in held:
            if now - at > HOLD_S:
                continue
            if self.trust.certificate(sender_id) is None:
                self._held.append((sender_id, packet, source, at))
                continue
            try:
                env = self.opener.open_untrusted(packet, self.wall_clock_ms())
            except BadPacket:
                continue
            self._held_released += 1
            self._ready.append(Received(env, source))

    def _want_certificate(self, source: Address, claimed_id: str) -> None:
        now = trio.current_time()
        if now - self._requested.get(source, -1e18) < self._request_interval_s:
            return
        self._requested[source] = now
        self._pending_requests.append((source, claimed_id))

    async def receive(self) -> Received:
        """The next verified datagram. Handles certificate exchange and revocations itself."""
        while True:
            if self._ready:
                got = self._ready.popleft()
                if await self._handle_trust_message(got.envelope, got.source):
                    continue
                return got
            await self._flush_certificate_requests()
            datagram = await self.transport.receive_datagram()
            env = self.open(datagram.packet, datagram.source)
            if env is None:
                continue
            if await self._handle_trust_message(env, datagram.source):
                continue
            return Received(env, datagram.source)

    async def _flush_certificate_requests(self) -> None:
        pending, self._pending_requests = self._pending_requests, []
        for source, claimed in pending:
            self._requests_sent += 1
            await self.send(source, CertificateRequest(node_ids=(claimed[:256],)), attach_certificate=True)

    async def _handle_trust_message(self, env: Envelope, source: Address) -> bool:
        """Certificate exchange and revocations are the endpoint's business. True if consumed."""
        msg = env.message
        if isinstance(msg, CertificateRequest):
            # An answer is several times the request: a token bucket per address (a burst
            # of ANSWER_BURST, then ANSWER_RATE_PER_S) keeps a spoofed source from using us
            # as an amplifier, while a joining node can still fetch many certificates.
            # (The request itself must verify, so only a certified key can ask at all.)
            now = trio.current_time()
            tokens, at = self._answered.get(source, (float(ANSWER_BURST), now))
            tokens = min(float(ANSWER_BURST), tokens + (now - at) * ANSWER_RATE_PER_S)
            if tokens < 1.0:
                return True
            if len(self._answered) >= ANSWERED_MEMORY:
                self._answered.clear()
            self._answered[source] = (tokens - 1.0, now)
            if self.node_id in msg.node_ids:
                await self.send(source, Certificates(certificates=(self.sealer.identity.certificate_bytes,)), attach_certificate=True)
            else:
                found = self.certificates_for(msg.node_ids, budget_bytes=self.transport.max_datagram_bytes - 200)
                if found:
                    await self.send(source, Certificates(certificates=found), attach_certificate=False)
            return True
        if isinstance(msg, Certificates):
            self.learn_certificates(msg.certificates)
            if self._on_certificates is not None:
                self._on_certificates()
            return True
        if isinstance(msg, Revoke):
            self.apply_revocation(msg.revocation)
            return False  # the layers above forward it (gossip) and act on it
        return False

    def certificates_for(self, node_ids: Iterable[str], *, budget_bytes: int) -> tuple[bytes, ...]:
        """Known certificates of ``node_ids``, as many as fit in ``budget_bytes``."""
        out: list[bytes] = []
        used = 0
        for node_id in node_ids:
            raw = self.trust.raw_certificate(node_id)
            if raw is None:
                continue
            if used + len(raw) + 3 > budget_bytes or len(out) == MAX_CERTIFICATES_PER_MESSAGE:
                break
            out.append(raw)
            used += len(raw) + 3
        return tuple(out)

    def learn_certificates(self, certificates: Iterable[bytes]) -> int:
        """Verify and keep certificates passed on by a peer; returns how many were usable."""
        learned = 0
        for raw in certificates:
            try:
                self.trust.add_certificate_untrusted(raw, self.wall_clock_ms())
                learned += 1
            except BadPacket:
                self._certs_refused += 1
        if learned and self._held:
            self._release_held()
        return learned

    def apply_revocation(self, record: bytes) -> str | None:
        """Apply a CA-signed revocation; returns the revoked node id if it was new."""
        try:
            already = len(self.trust.revocations())
            rev = self.trust.add_revocation_untrusted(record)
        except BadPacket:
            return None
        if len(self.trust.revocations()) == already:
            return None
        self._revocations += 1
        self.opener.forget(rev.node_id)
        if self._on_revocation is not None:
            self._on_revocation(rev.node_id)
        return rev.node_id
