"""The trust core: certificate exchange, revocations and held packets, sans-IO.

Theory of operation
-------------------
One ``TrustCore`` per node owns everything about *who* may speak: the ``TrustStore``
(certificates and revocations), the ``Opener`` (signatures and replay windows) and the
``Sealer``. The shell (``meshagent.trust.endpoint``) drives it in one direction: it feeds
what arrived (``open_datagram``, ``open_stream``, ``rumor_authors_missing``,
``apply_revocation``) and takes what the core wants done (``outgoing`` packets to send,
``released`` envelopes that were held, ``revoked`` node ids, ``unblocked`` items). The core
calls nothing back.

* **Revocations first.** A ``Revoke`` is applied to the trust store before the envelope
  carrying it is returned, so no layer above ever sees a packet from a node after learning
  it was revoked.
* **Unknown signers.** A datagram from a signer we hold no certificate for is held (a
  bounded number, ``hold_s`` seconds) and the source is asked for the certificate with a
  ``CertificateRequest``. When the certificate arrives the held packets are opened again and
  come out of ``released``.
* **Anti-amplification.** That request answers a packet nobody has verified yet, from a
  source address anyone can forge. As QUIC does before address validation, the answer is
  never larger than what arrived: our certificate is attached only when the request still
  fits in the unverified packet's size, a bare request only when that fits, else nothing
  (counted as ``amplification_refused``).
* **Answers.** A verified ``CertificateRequest`` naming us is answered with our certificate;
  naming others, with the ones we know that fit in a datagram. A token bucket per source
  (``answer_burst`` then ``answer_rate_per_s``) bounds the work.
* **Rumor authors.** Gossip carries rumors signed by their authors, whom we may not know yet:
  the shell reports them (``rumor_authors_missing``) with an opaque item to replay; the core
  asks the relay for their certificates and hands the item back (``unblocked``) once one of
  them is known.
* **Bounded memory.** Every table keyed by something a stranger chooses (source address,
  claimed node id) is an LRU map capped at ``table_limit`` entries whose stale entries
  (equivalent to absent) are pruned as time passes: a flood from spoofed sources cannot
  grow memory.

Time comes in as arguments: ``now`` (monotonic seconds, for rate limits) and ``now_ms`` (the
wall clock, for the wire and certificate validity).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from typing import Any, Generic, TypeVar

import attrs

from protocol.errors import BadPacket, DropReason
from protocol.identity import TrustStore
from protocol.messages import CertificateRequest, Certificates, Revoke
from protocol.wire import Envelope, Opener, Sealer, SequenceExhausted, WireLimits, overhead_bytes

Address = tuple[str, int]

MAX_CERTIFICATES_PER_MESSAGE = 64  # protocol.messages.Certificates' item limit
MAX_REQUESTED_IDS = 64
HELD_PACKETS = 256
HELD_ITEMS = 256
TABLE_LIMIT = 4096
ANSWER_BURST = 16
ANSWER_RATE_PER_S = 8.0
HOLD_S = 5.0
REQUEST_INTERVAL_S = 1.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedTable(Generic[K, V]):
    """An LRU map of at most ``limit`` entries; entries older than ``stale_s`` are pruned.

    For state about strangers: an evicted or pruned entry must mean the same as an absent one
    (a full token bucket, a request interval that has passed).
    """

    def __init__(self, limit: int, stale_s: float) -> None:
        self.limit = limit
        self.stale_s = stale_s
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        self.prune(now)
        got = self._items.get(key)
        return None if got is None else got[1]

    def put(self, key: K, value: V, now: float) -> None:
        items = self._items
        items[key] = (now, value)
        items.move_to_end(key)
        while len(items) > self.limit:
            items.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def prune(self, now: float) -> None:
        items = self._items
        while items:
            at, _ = next(iter(items.values()))
            if now - at < self.stale_s:
                return
            items.popitem(last=False)


@attrs.frozen
class TrustStatistics:
    certificate_requests_sent: int
    certificate_answers_sent: int
    certificates_attached: int
    revocations_applied: int
    certificates_refused: int  # passed on by peers, but did not parse or verify
    held_released: int  # packets from then-unknown signers opened once their certificate came
    amplification_refused: int  # requests not sent: bigger than the unverified packet
    answers_rate_limited: int
    table_entries: int  # entries in the tables keyed by strangers' choices (bounded)


@attrs.frozen
class _Held:
    sender_id: str
    packet: bytes
    source: Address
    at: float


class TrustCore:
    """Who may speak: sealing, opening, certificate exchange and revocation for one node."""

    def __init__(
        self,
        sealer: Sealer,
        trust: TrustStore,
        *,
        limits: WireLimits | None = None,
        max_datagram_bytes: int | None = None,
        hold_s: float = HOLD_S,
        request_interval_s: float = REQUEST_INTERVAL_S,
        answer_burst: int = ANSWER_BURST,
        answer_rate_per_s: float = ANSWER_RATE_PER_S,
        table_limit: int = TABLE_LIMIT,
        not_before_ms: int = 0,
    ) -> None:
        self.sealer = sealer
        self.trust = trust
        self.opener = Opener(trust, limits, not_before_ms=not_before_ms)
        self.max_datagram_bytes = max_datagram_bytes or self.opener.limits.max_datagram_bytes
        self.hold_s = hold_s
        self.request_interval_s = request_interval_s
        self.answer_burst = float(answer_burst)
        self.answer_rate_per_s = answer_rate_per_s
        self._requested: BoundedTable[Address, float] = BoundedTable(table_limit, request_interval_s)
        self._requested_ids: BoundedTable[str, float] = BoundedTable(table_limit, request_interval_s)
        refill_s = answer_burst / answer_rate_per_s if answer_rate_per_s > 0 else float("inf")
        self._answered: BoundedTable[Address, tuple[float, float]] = BoundedTable(table_limit, refill_s)
        self._held: deque[_Held] = deque(maxlen=HELD_PACKETS)
        self._items: deque[tuple[frozenset[str], Any]] = deque(maxlen=HELD_ITEMS)
        self._outgoing: list[tuple[Address, bytes]] = []
        self._released: list[tuple[Envelope, Address]] = []
        self._revoked: list[str] = []
        self._unblocked: list[Any] = []
        self._requests_sent = 0
        self._answers_sent = 0
        self._certs_attached = 0
        self._revocations = 0
        self._certs_refused = 0
        self._held_released = 0
        self._amplification_refused = 0
        self._rate_limited = 0

    @property
    def node_id(self) -> str:
        return self.sealer.identity.node_id

    # --- outputs ----------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[Address, bytes]]:
        """Packets the core wants sent as datagrams (already sealed and sized)."""
        out, self._outgoing = self._outgoing, []
        return out

    def released(self) -> list[tuple[Envelope, Address]]:
        """Held datagrams that verified once their signer's certificate arrived."""
        out, self._released = self._released, []
        return out

    def revoked(self) -> list[str]:
        """Node ids newly revoked (the layers above forget them and spread the news)."""
        out, self._revoked = self._revoked, []
        return out

    def unblocked(self) -> list[Any]:
        """Items given to ``rumor_authors_missing`` whose authors' certificates arrived."""
        out, self._unblocked = self._unblocked, []
        return out

    def statistics(self) -> TrustStatistics:
        return TrustStatistics(
            certificate_requests_sent=self._requests_sent,
            certificate_answers_sent=self._answers_sent,
            certificates_attached=self._certs_attached,
            revocations_applied=self._revocations,
            certificates_refused=self._certs_refused,
            held_released=self._held_released,
            amplification_refused=self._amplification_refused,
            answers_rate_limited=self._rate_limited,
            table_entries=len(self._requested) + len(self._requested_ids) + len(self._answered),
        )

    # --- sealing ----------------------------------------------------------------------------

    def seal(self, message: object, now_ms: int, *, attach_certificate: bool = False) -> bytes:
        try:
            packet = self.sealer.seal(message, now_ms, attach_certificate=attach_certificate)
        except SequenceExhausted:
            # 2**32 packets in one boot epoch: move to the next epoch (persisted by the node)
            self.sealer = Sealer(self.sealer.identity, self.sealer.boot_epoch + 1)
            packet = self.sealer.seal(message, now_ms, attach_certificate=attach_certificate)
        if attach_certificate:
            self._certs_attached += 1
        return packet

    def seal_datagram(self, message: object, now_ms: int, *, attach_certificate: bool, budget: int) -> bytes | None:
        """Seal for a datagram of at most ``budget`` bytes: without the certificate if it
        does not fit with it, ``None`` if it does not fit at all."""
        if attach_certificate:
            cert_len = len(self.sealer.identity.certificate_bytes)
            own = len(self.sealer.identity.node_id)
            # cheap pre-check, so nothing is signed (nor a sequence number spent) in vain
            if overhead_bytes(own, cert_len) < budget:
                packet = self.seal(message, now_ms, attach_certificate=True)
                if len(packet) <= budget:
                    return packet
        if overhead_bytes(len(self.sealer.identity.node_id)) >= budget:
            return None
        packet = self.seal(message, now_ms)
        return packet if len(packet) <= budget else None

    # --- inputs -----------------------------------------------------------------------------

    def open_datagram(self, packet: bytes, source: Address, now: float, now_ms: int) -> Envelope | None:
        """Verify one datagram. Returns the envelope for the layers above, or ``None`` when it
        was dropped (counted) or consumed here (certificate exchange)."""
        try:
            env = self.opener.open_untrusted(packet, now_ms)
        except BadPacket as exc:
            if exc.reason is DropReason.UNKNOWN_SIGNER:
                self._held.append(_Held(exc.detail, packet, source, now))
                self._request_unverified(source, exc.detail[:32], len(packet), now, now_ms)
            return None
        return self._after_open(env, source, now, now_ms, stream=False)

    def open_stream(self, packet: bytes, source: Address | None, now: float, now_ms: int) -> Envelope | None:
        """Verify one packet read from a stream (never held, never answered on the stream)."""
        try:
            env = self.opener.open_untrusted(packet, now_ms, stream=True)
        except BadPacket:
            return None
        return self._after_open(env, source, now, now_ms, stream=True)

    def _after_open(self, env: Envelope, source: Address | None, now: float, now_ms: int, *, stream: bool) -> Envelope | None:
        msg = env.message
        if isinstance(msg, Revoke):
            self.apply_revocation(msg.revocation, now, now_ms)
            return env  # the layers above forward it (gossip) and act on it
        if isinstance(msg, Certificates):
            self.learn_certificates(msg.certificates, now, now_ms)
            return None
        if isinstance(msg, CertificateRequest):
            if source is not None and not stream:
                self._answer(msg, source, now, now_ms)
            return None
        return env

    def apply_revocation(self, record: bytes, now: float, now_ms: int) -> str | None:
        """Apply a CA-signed revocation; returns the revoked node id if it was new."""
        del now, now_ms
        try:
            already = len(self.trust.revocations())
            rev = self.trust.add_revocation_untrusted(record)
        except BadPacket:
            return None
        if len(self.trust.revocations()) == already:
            return None
        self._revocations += 1
        self.opener.forget(rev.node_id)
        self._revoked.append(rev.node_id)
        return rev.node_id

    def learn_certificates(self, certificates: Iterable[bytes], now: float, now_ms: int) -> int:
        """Verify and keep certificates passed on by a peer; returns how many were usable."""
        learned = 0
        for raw in certificates:
            try:
                self.trust.add_certificate_untrusted(raw, now_ms)
                learned += 1
            except BadPacket:
                self._certs_refused += 1
        if learned:
            self._release(now, now_ms)
        return learned

    def rumor_authors_missing(self, authors: Iterable[str], relay: Address, item: Any, now: float, now_ms: int) -> None:
        """Rumors relayed from ``relay`` were refused for want of these authors' certificates:
        ask the relay (rate-limited per author) and keep ``item`` until one of them is known."""
        missing = frozenset(a for a in authors if self.trust.certificate(a) is None)
        if not missing:
            return
        if item is not None:
            self._items.append((missing, item))
        wanted = sorted(a for a in missing if self._requested_ids.get(a, now) is None)[:MAX_REQUESTED_IDS]
        if not wanted or not relay[0]:
            return
        for a in wanted:
            self._requested_ids.put(a, now, now)
        packet = self.seal_datagram(
            CertificateRequest(node_ids=tuple(wanted)), now_ms, attach_certificate=False, budget=self.max_datagram_bytes
        )
        if packet is not None:
            self._requests_sent += 1
            self._outgoing.append((relay, packet))

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

    # --- internals --------------------------------------------------------------------------

    def _request_unverified(self, source: Address, claimed_id: str, arrived_bytes: int, now: float, now_ms: int) -> None:
        if self._requested.get(source, now) is not None:
            return
        self._requested.put(source, now, now)
        request = CertificateRequest(node_ids=(claimed_id,))
        # anti-amplification: never more bytes back than the unverified packet carried
        packet = self.seal_datagram(request, now_ms, attach_certificate=True, budget=arrived_bytes)
        if packet is None:
            self._amplification_refused += 1
            return
        self._requests_sent += 1
        self._outgoing.append((source, packet))

    def _answer(self, msg: CertificateRequest, source: Address, now: float, now_ms: int) -> None:
        # An answer is several times the request: a token bucket per source (a burst of
        # answer_burst, then answer_rate_per_s) bounds it, while a joining node can still
        # fetch many certificates. The request itself verified, so only a certified key asks.
        bucket = self._answered.get(source, now)
        if bucket is None:
            tokens = self.answer_burst
        else:
            tokens, at = bucket
            tokens = min(self.answer_burst, tokens + (now - at) * self.answer_rate_per_s)
        if tokens < 1.0:
            self._rate_limited += 1
            return
        self._answered.put(source, (tokens - 1.0, now), now)
        if self.node_id in msg.node_ids:
            found: tuple[bytes, ...] = (self.sealer.identity.certificate_bytes,)
            attach = True
        else:
            found = self.certificates_for(msg.node_ids, budget_bytes=self.max_datagram_bytes - 200)
            attach = False
        if not found:
            return
        packet = self.seal_datagram(
            Certificates(certificates=found), now_ms, attach_certificate=attach, budget=self.max_datagram_bytes
        )
        if packet is not None:
            self._answers_sent += 1
            self._outgoing.append((source, packet))

    def _release(self, now: float, now_ms: int) -> None:
        if self._held:
            held = list(self._held)
            self._held.clear()
            for h in held:
                if now - h.at > self.hold_s:
                    continue
                if self.trust.certificate(h.sender_id) is None:
                    self._held.append(h)
                    continue
                try:
                    env = self.opener.open_untrusted(h.packet, now_ms)
                except BadPacket:
                    continue
                self._held_released += 1
                after = self._after_open(env, h.source, now, now_ms, stream=False)
                if after is not None:
                    self._released.append((after, h.source))
        if self._items:
            waiting = list(self._items)
            self._items.clear()
            for missing, item in waiting:
                if any(self.trust.certificate(a) is not None for a in missing):
                    # its authors we now know get in on replay; the rest are reported again
                    for a in missing:
                        self._requested_ids.pop(a)
                    self._unblocked.append(item)
                else:
                    self._items.append((missing, item))
