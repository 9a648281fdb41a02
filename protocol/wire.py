"""The signed envelope every meshagent packet travels in.

Theory of operation
-------------------
A packet is a short binary header, an optional certificate, a msgpack body and an Ed25519
signature by the sender over every byte before it:

    offset  size  field
    0       1     magic_version   0xA1 (magic 0xA, version 1)
    1       1     type            message type byte (protocol.messages registry)
    2       1     flags           bit 0: certificate attached; other bits must be 0
    3       1     sender_len      L, 1..32
    4       L     sender_id       ASCII node id
    4+L     4     boot_epoch      u32, big-endian
    8+L     4     seq             u32, big-endian
    12+L    6     issued_at_ms    u48, big-endian, ms since the Unix epoch (caller's clock)
    18+L    2     cert_len        C, only when flags bit 0 is set
    20+L    C     certificate     only when flags bit 0 is set (protocol.identity)
    ...     N     body            msgpack array of the message's fields (protocol.codec)
    end-64  64    signature       Ed25519 over bytes [0, end-64)

Overhead without a certificate is 82 + L bytes (94 for a 12-character node id).

Opening a packet checks, cheapest first, and stops at the first failure: size, header,
version, type, skew of ``issued_at_ms`` against ``now_ms``, the signer's certificate
(known or attached, CA-verified, not revoked, valid now), replay (``seq`` already seen in
that sender's ``boot_epoch``, or an older epoch), the signature over the raw bytes, and
only then the body. Nothing is remembered about a packet until all of that passed, so a
forged packet cannot poison the replay window.

Replay protection keeps, per sender, the newest boot epoch, the highest sequence number
and a 1,024-wide bitmap below it (the IPsec/DTLS anti-replay window): reordering within the
window is accepted once, anything older is refused. A sender must never reuse a
(boot_epoch, seq) pair: the agent shell persists the boot epoch and bumps it at every start
and when ``seq`` runs out (``SequenceExhausted``).

Streams (TCP) carry the same packets, each prefixed with a u32 big-endian length
(``frame`` / ``FrameReader``), with a larger, configurable size limit.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import nacl.bindings as sodium

from protocol import codec
from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.identity import NODE_ID_MAX, SIGNATURE_BYTES, Certificate, NodeIdentity, TrustStore
from protocol.messages import MESSAGE_TYPES, type_byte_of

MAGIC_VERSION = 0xA1
FLAG_CERTIFICATE = 0x01
KNOWN_FLAGS = FLAG_CERTIFICATE

MAX_UDP_BYTES = 1400
MAX_STREAM_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_SKEW_MS = 30_000
REPLAY_WINDOW = 1024
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
U32_MAX = 2**32 - 1
U48_MAX = 2**48 - 1

_COUNTERS = struct.Struct(">IIHI")  # boot_epoch, seq, issued_at high 16 bits, low 32 bits
_CERT_LEN = struct.Struct(">H")
_FRAME_LEN = struct.Struct(">I")


def overhead_bytes(sender_id_len: int, certificate_len: int | None = None) -> int:
    """Envelope bytes around a body of any size."""
    cert = 0 if certificate_len is None else 2 + certificate_len
    return 4 + sender_id_len + _COUNTERS.size + cert + SIGNATURE_BYTES


@attrs.frozen
class WireLimits:
    max_datagram_bytes: int = MAX_UDP_BYTES
    max_stream_bytes: int = MAX_STREAM_BYTES
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS


@attrs.frozen
class Envelope:
    """An opened, verified packet."""

    sender_id: str
    boot_epoch: int
    seq: int
    issued_at_ms: int
    message: Any
    certificate: Certificate  # the sender's: site, transformer and roles for policy checks
    size: int


class SequenceExhausted(LocalProtocolError):
    """The u32 sequence space of this boot epoch is used up: start a new epoch."""


class Sealer:
    """Signs outgoing messages as one node in one boot epoch."""

    def __init__(self, identity: NodeIdentity, boot_epoch: int, first_seq: int = 0) -> None:
        if not 0 <= boot_epoch <= U32_MAX:
            raise LocalProtocolError("boot_epoch must fit in 32 bits")
        sender = identity.node_id.encode("ascii")
        if not 1 <= len(sender) <= NODE_ID_MAX:
            raise LocalProtocolError("node id must be 1 to 32 ASCII bytes")
        self.identity = identity
        self.boot_epoch = boot_epoch
        self._next_seq = first_seq
        self._secret = identity.key.secret
        self._sender_part = bytes([len(sender)]) + sender
        self._cert_part = _CERT_LEN.pack(len(identity.certificate_bytes)) + identity.certificate_bytes

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def seal(self, msg: Any, issued_at_ms: int, *, attach_certificate: bool = False) -> bytes:
        """Encode and sign ``msg``; returns the packet bytes."""
        seq = self._next_seq
        if seq > U32_MAX:
            raise SequenceExhausted("sequence numbers of this boot epoch are used up")
        if not 0 <= issued_at_ms <= U48_MAX:
            raise LocalProtocolError("issued_at_ms must fit in 48 bits")
        self._next_seq = seq + 1
        body = codec.encode(msg)
        flags = FLAG_CERTIFICATE if attach_certificate else 0
        signed = b"".join(
            (
                bytes((MAGIC_VERSION, type_byte_of(msg), flags)),
                self._sender_part,
                _COUNTERS.pack(self.boot_epoch, seq, issued_at_ms >> 32, issued_at_ms & 0xFFFFFFFF),
                self._cert_part if attach_certificate else b"",
                body,
            )
        )
        sig_and_msg: bytes = sodium.crypto_sign(signed, self._secret)
        return signed + sig_and_msg[:SIGNATURE_BYTES]


@attrs.frozen
class WireStatistics:
    accepted: int
    dropped: dict[str, int]  # DropReason.value -> count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class Opener:
    """Verifies incoming packets for one node: signatures, certificates and replays."""

    def __init__(self, trust: TrustStore, limits: WireLimits | None = None, *, not_before_ms: int = 0) -> None:
        self.trust = trust
        self.limits = limits or WireLimits()
        # packets issued before this (the node's start, plus the clock error allowed between
        # peers) are refused: they may have been accepted by this node before a restart
        self.not_before_ms = not_before_ms
        # sender -> [boot_epoch, highest seq, bitmap of seen seqs (bit 0 = highest)]
        self._windows: dict[str, list[int]] = {}
        self._accepted = 0
        self._dropped: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    def statistics(self) -> WireStatistics:
        return WireStatistics(
            accepted=self._accepted,
            dropped={r.value: n for r, n in self._dropped.items()},
        )

    def forget(self, sender_id: str) -> None:
        """Drop replay state of a sender that left (its next boot starts a new epoch)."""
        self._windows.pop(sender_id, None)

    def open_untrusted(self, data: bytes, now_ms: int, *, stream: bool = False) -> Envelope:
        """Verify and decode one packet. Raises only ``BadPacket``, counted by reason."""
        try:
            env = self._open(data, now_ms, stream)
        except BadPacket as exc:
            self._dropped[exc.reason] += 1
            raise
        self._accepted += 1
        return env

    def _open(self, data: bytes, now_ms: int, stream: bool) -> Envelope:
        if type(data) is not bytes:
            if not isinstance(data, bytearray | memoryview):
                raise BadPacket(DropReason.MALFORMED_BODY, "not bytes")
            data = bytes(data)
        size = len(data)
        limit = self.limits.max_stream_bytes if stream else self.limits.max_datagram_bytes
        if size > limit:
            raise BadPacket(DropReason.TOO_LARGE, f"{size} bytes > {limit}")
        if size < 4 + 1 + _COUNTERS.size + 1 + SIGNATURE_BYTES:
            raise BadPacket(DropReason.TRUNCATED, f"{size} bytes")
        if data[0] != MAGIC_VERSION:
            raise BadPacket(DropReason.BAD_VERSION, f"magic/version byte {data[0]:#04x}")
        cls = MESSAGE_TYPES.get(data[1])
        if cls is None:
            raise BadPacket(DropReason.UNKNOWN_TYPE, f"type {data[1]:#04x}")
        flags = data[2]
        if flags & ~KNOWN_FLAGS:
            raise BadPacket(DropReason.BAD_HEADER, f"unknown flags {flags:#04x}")
        sender_len = data[3]
        if not 1 <= sender_len <= NODE_ID_MAX:
            raise BadPacket(DropReason.BAD_HEADER, "sender id length")
        pos = 4 + sender_len
        body_end = size - SIGNATURE_BYTES
        if pos + _COUNTERS.size > body_end:
            raise BadPacket(DropReason.TRUNCATED, "header")
        try:
            sender_id = data[4:pos].decode("ascii")
        except UnicodeDecodeError:
            raise BadPacket(DropReason.BAD_HEADER, "sender id is not ASCII") from None
        epoch, seq, t_hi, t_lo = _COUNTERS.unpack_from(data, pos)
        pos += _COUNTERS.size
        issued_at_ms = (t_hi << 32) | t_lo
        if abs(now_ms - issued_at_ms) > self.limits.max_skew_ms:
            raise BadPacket(
                DropReason.OUTSIDE_SKEW, f"issued {issued_at_ms - now_ms:+d} ms from now"
            )
        if issued_at_ms < self.not_before_ms:
            raise BadPacket(
                DropReason.BEFORE_START, f"issued {self.not_before_ms - issued_at_ms} ms before this node started"
            )

        trust = self.trust
        if flags & FLAG_CERTIFICATE:
            if pos + 2 > body_end:
                raise BadPacket(DropReason.TRUNCATED, "certificate length")
            (cert_len,) = _CERT_LEN.unpack_from(data, pos)
            pos += 2
            if pos + cert_len > body_end:
                raise BadPacket(DropReason.TRUNCATED, "certificate")
            cert = trust.add_certificate_untrusted(data[pos : pos + cert_len], now_ms)
            pos += cert_len
            if cert.node_id != sender_id:
                raise BadPacket(DropReason.BAD_CERTIFICATE, "certificate names another node")
            cert = trust.signer(sender_id, now_ms)  # a newer certificate may already be known
        else:
            cert = trust.signer(sender_id, now_ms)

        window = self._windows.get(sender_id)
        if window is not None and not _fresh(window, epoch, seq):
            raise BadPacket(DropReason.REPLAY, f"{sender_id} epoch {epoch} seq {seq}")

        signature = data[body_end:]
        try:
            sodium.crypto_sign_open(signature + data[:body_end], cert.public_key)
        except Exception:  # BadSignatureError
            raise BadPacket(DropReason.BAD_SIGNATURE, sender_id) from None

        body = codec.unpack_untrusted(data[pos:body_end])
        message = codec.codec_for(cls).check_untrusted(body)

        if window is None:
            self._windows[sender_id] = [epoch, seq, 1]
        else:
            _mark(window, epoch, seq)
        return Envelope(sender_id, epoch, seq, issued_at_ms, message, cert, size)


def _fresh(window: list[int], epoch: int, seq: int) -> bool:
    cur_epoch, top, bits = window
    if epoch != cur_epoch:
        return epoch > cur_epoch
    if seq > top:
        return True
    offset = top - seq
    return offset < REPLAY_WINDOW and not (bits >> offset) & 1


def _mark(window: list[int], epoch: int, seq: int) -> None:
    cur_epoch, top, bits = window
    if epoch != cur_epoch:
        window[:] = [epoch, seq, 1]
    elif seq > top:
        window[1] = seq
        window[2] = ((bits << (seq - top)) | 1) & _WINDOW_MASK
    else:
        window[2] = bits | (1 << (top - seq))


# --- streams ---------------------------------------------------------------------------------


def frame(packet: bytes) -> bytes:
    """Length-prefix one packet for a byte stream."""
    return _FRAME_LEN.pack(len(packet)) + packet


class FrameReader:
    """Splits a byte stream back into packets (sans-IO: feed bytes, take frames)."""

    def __init__(self, max_frame_bytes: int = MAX_STREAM_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame_untrusted(self) -> bytes | None:
        """The next complete frame, or None if more bytes are needed. Raises ``BadPacket``.

        After a ``BadPacket`` the stream is out of step and must be closed.
        """
        if len(self._buf) < _FRAME_LEN.size:
            return None
        (length,) = _FRAME_LEN.unpack_from(self._buf, 0)
        if length > self.max_frame_bytes:
            raise BadPacket(DropReason.TOO_LARGE, f"frame of {length} bytes")
        end = _FRAME_LEN.size + length
        if len(self._buf) < end:
            return None
        packet = bytes(self._buf[_FRAME_LEN.size : end])
        del self._buf[:end]
        return packet

    @property
    def buffered(self) -> int:
        return len(self._buf)
