"""The signed envelope: round trips, every refusal reason, replay window, streams."""

from __future__ import annotations

import struct

import attrs
import msgpack
import pytest

from protocol import codec
from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.identity import Revocation, sign_revocation
from protocol.messages import CertificateRequest, Certificates, Revoke
from protocol.wire import (
    MAGIC_VERSION,
    REPLAY_WINDOW,
    FrameReader,
    Opener,
    Sealer,
    SequenceExhausted,
    WireLimits,
    frame,
    overhead_bytes,
)
from tests.conftest import NOW_MS


def refused(opener: Opener, packet: bytes, now: int = NOW_MS, **kw: object) -> DropReason:
    with pytest.raises(BadPacket) as info:
        opener.open_untrusted(packet, now, **kw)  # type: ignore[arg-type]
    return info.value.reason


@pytest.fixture
def pair(pki):
    a = pki.identity("charger-a", roles=("detector",))
    b = pki.identity("charger-b")
    return Sealer(a, boot_epoch=5), Opener(pki.trust(a, b)), a, b


@pytest.mark.parametrize(
    "msg",
    [
        Revoke(revocation=b"\x00" * 300),
        CertificateRequest(node_ids=("x", "charger-b")),
        Certificates(certificates=(b"abc", b"")),
        CertificateRequest(node_ids=()),
    ],
)
def test_round_trip_keeps_message_and_header(pair, msg):
    sealer, opener, a, _ = pair
    packet = sealer.seal(msg, NOW_MS - 1234)
    env = opener.open_untrusted(packet, NOW_MS)
    assert env.message == msg
    assert (env.sender_id, env.boot_epoch, env.seq, env.issued_at_ms) == ("charger-a", 5, 0, NOW_MS - 1234)
    assert env.certificate == a.certificate
    assert env.size == len(packet)
    assert len(packet) == overhead_bytes(len("charger-a")) + len(codec.encode(msg))


def test_layout_matches_the_documented_offsets(pair):
    sealer, _, a, _ = pair
    packet = sealer.seal(CertificateRequest(node_ids=()), 0x0123456789AB)
    assert packet[0] == MAGIC_VERSION == 0xA1
    assert packet[1] == 0x02 and packet[2] == 0 and packet[3] == 9
    assert packet[4:13] == b"charger-a"
    assert struct.unpack(">II", packet[13:21]) == (5, 0)
    assert packet[21:27] == bytes.fromhex("0123456789AB")
    assert packet[27:-64] == msgpack.packb([[]])
    assert a.key.sign(packet[:-64]) == packet[-64:]


def test_overhead_meets_target_for_typical_node_id():
    assert overhead_bytes(len("charger-0001")) == 94 <= 100


def test_sequence_numbers_increase_and_exhaust(pair):
    sealer, opener, a, _ = pair
    seqs = [opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS), NOW_MS).seq for _ in range(3)]
    assert seqs == [0, 1, 2]
    last = Sealer(a, boot_epoch=6, first_seq=2**32 - 1)
    last.seal(Revoke(b""), NOW_MS)
    with pytest.raises(SequenceExhausted):
        last.seal(Revoke(b""), NOW_MS)


def test_seal_refuses_unregistered_message(pair):
    @attrs.frozen
    class NotAMessage:
        x: int = 0

    with pytest.raises(LocalProtocolError):
        pair[0].seal(NotAMessage(), NOW_MS)


def test_replay_is_refused_and_window_accepts_reordering(pair):
    sealer, opener, _, _ = pair
    packets = [sealer.seal(Revoke(b""), NOW_MS) for _ in range(10)]
    for p in reversed(packets):  # arrives in reverse order: each is new once
        opener.open_untrusted(p, NOW_MS)
    for p in packets:
        assert refused(opener, p) is DropReason.REPLAY
    assert opener.statistics().dropped["replay"] == 10
    assert opener.statistics().accepted == 10


def test_replay_window_edge(pair):
    sealer, opener, _a, _ = pair
    first = sealer.seal(Revoke(b""), NOW_MS)
    rest = [sealer.seal(Revoke(b""), NOW_MS) for _ in range(REPLAY_WINDOW)]
    opener.open_untrusted(rest[-1], NOW_MS)  # seq 1024: seq 0 is now just outside the window
    assert refused(opener, first) is DropReason.REPLAY
    opener.open_untrusted(rest[0], NOW_MS)  # seq 1, offset 1023: inside


def test_older_boot_epoch_is_replay_newer_resets(pair, pki):
    sealer, opener, a, _ = pair
    old = Sealer(a, boot_epoch=4).seal(Revoke(b""), NOW_MS)
    opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS), NOW_MS)
    assert refused(opener, old) is DropReason.REPLAY
    rebooted = Sealer(a, boot_epoch=6)
    opener.open_untrusted(rebooted.seal(Revoke(b""), NOW_MS), NOW_MS)  # seq 0 again, new epoch
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS)) is DropReason.REPLAY


def test_forged_packet_does_not_poison_replay_window(pair, pki):
    sealer, opener, _a, _ = pair
    genuine = sealer.seal(Revoke(b""), NOW_MS)
    forged = bytearray(genuine)
    forged[-1] ^= 1
    assert refused(opener, bytes(forged)) is DropReason.BAD_SIGNATURE
    opener.open_untrusted(genuine, NOW_MS)  # same seq, still accepted


def test_issued_at_outside_skew_window(pair):
    sealer, opener, _, _ = pair
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS - 30_001)) is DropReason.OUTSIDE_SKEW
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS + 30_001)) is DropReason.OUTSIDE_SKEW
    opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS + 30_000), NOW_MS)
    strict = Opener(opener.trust, WireLimits(max_skew_ms=10))
    assert refused(strict, sealer.seal(Revoke(b""), NOW_MS - 11)) is DropReason.OUTSIDE_SKEW


def test_forged_by_uncertified_key(pki):
    a = pki.identity("charger-a")
    mallory = pki.identity("mallory")  # a real certificate, but for a different node id
    impostor = attrs.evolve(a, key=mallory.key)
    opener = Opener(pki.trust(a))
    assert refused(opener, Sealer(impostor, 1).seal(Revoke(b""), NOW_MS)) is DropReason.BAD_SIGNATURE


def test_unknown_signer_then_learned_from_attached_certificate(pki):
    a = pki.identity("charger-a")
    opener = Opener(pki.trust())
    sealer = Sealer(a, 1)
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS)) is DropReason.UNKNOWN_SIGNER
    env = opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS, attach_certificate=True), NOW_MS)
    assert env.certificate == a.certificate
    opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS), NOW_MS)  # now known


def test_attached_certificate_of_another_node_is_refused(pki):
    a = pki.identity("charger-a")
    b = pki.identity("charger-b")
    liar = attrs.evolve(a, certificate_bytes=b.certificate_bytes)
    opener = Opener(pki.trust())
    packet = Sealer(liar, 1).seal(Revoke(b""), NOW_MS, attach_certificate=True)
    assert refused(opener, packet) is DropReason.BAD_CERTIFICATE


def test_certificate_from_another_ca_is_refused(pki):
    from tests.conftest import Pki

    other = Pki(seed=99)
    stranger = other.identity("charger-a")
    opener = Opener(pki.trust())
    packet = Sealer(stranger, 1).seal(Revoke(b""), NOW_MS, attach_certificate=True)
    assert refused(opener, packet) is DropReason.BAD_CERTIFICATE


def test_expired_and_not_yet_valid_signers(pki):
    old = pki.identity("old", not_before_ms=0, not_after_ms=NOW_MS - 1)
    future = pki.identity("future", not_before_ms=NOW_MS + 1, not_after_ms=NOW_MS + 10**9)
    opener = Opener(pki.trust(old, future))
    assert refused(opener, Sealer(old, 1).seal(Revoke(b""), NOW_MS)) is DropReason.SIGNER_EXPIRED
    assert refused(opener, Sealer(future, 1).seal(Revoke(b""), NOW_MS)) is DropReason.SIGNER_NOT_YET_VALID
    # attached, the same certificates are refused for the same reasons
    fresh = Opener(pki.trust())
    assert refused(fresh, Sealer(old, 2).seal(Revoke(b""), NOW_MS, attach_certificate=True)) is DropReason.SIGNER_EXPIRED


def test_revoked_signer_is_refused_attached_or_not(pki):
    a = pki.identity("charger-a")
    opener = Opener(pki.trust(a))
    sealer = Sealer(a, 1)
    opener.open_untrusted(sealer.seal(Revoke(b""), NOW_MS), NOW_MS)
    rev = sign_revocation(
        Revocation(issuer_id=pki.issuer_id, node_id="charger-a", serial=a.certificate.serial, revoked_at_ms=NOW_MS),
        pki.ca,
    )
    opener.trust.add_revocation_untrusted(rev)
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS)) is DropReason.SIGNER_REVOKED
    assert refused(opener, sealer.seal(Revoke(b""), NOW_MS, attach_certificate=True)) is DropReason.SIGNER_REVOKED


def test_revocation_signed_by_a_node_is_not_a_revocation(pki):
    a = pki.identity("charger-a")
    fake = a.key.sign(b"x")  # any node key, not the CA
    rev = Revocation(issuer_id=pki.issuer_id, node_id="charger-a", serial=a.certificate.serial, revoked_at_ms=0)
    body = codec.encode(rev)
    with pytest.raises(BadPacket):
        pki.trust(a).add_revocation_untrusted(body + fake)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:10], DropReason.TRUNCATED),
        (lambda p: b"", DropReason.TRUNCATED),
        (lambda p: bytes([0xA2]) + p[1:], DropReason.BAD_VERSION),
        (lambda p: p[:1] + bytes([0xEE]) + p[2:], DropReason.UNKNOWN_TYPE),
        (lambda p: p[:2] + bytes([0x80]) + p[3:], DropReason.BAD_HEADER),
        (lambda p: p[:3] + bytes([0]) + p[4:], DropReason.BAD_HEADER),
        (lambda p: p[:3] + bytes([200]) + p[4:], DropReason.BAD_HEADER),
        (lambda p: p[:4] + b"\xff" + p[5:], DropReason.BAD_HEADER),
        (lambda p: p + b"\x00" * 1400, DropReason.TOO_LARGE),
        (lambda p: p[:-1] + bytes([p[-1] ^ 0x80]), DropReason.BAD_SIGNATURE),
        (lambda p: p[:30] + bytes([p[30] ^ 1]) + p[31:], DropReason.BAD_SIGNATURE),
    ],
)
def test_each_malformation_has_its_reason(pair, mutate, reason):
    sealer, opener, _, _ = pair
    packet = sealer.seal(CertificateRequest(node_ids=("charger-b",)), NOW_MS)
    assert refused(opener, mutate(packet)) is reason
    assert opener.statistics().dropped[reason.value] == 1
    assert opener.statistics().dropped_total == 1


def signed_raw(ident, type_byte: int, body: bytes, seq: int = 0) -> bytes:
    """An envelope around arbitrary body bytes, correctly signed (tests what sits behind the signature)."""
    sender = ident.node_id.encode()
    head = bytes([MAGIC_VERSION, type_byte, 0, len(sender)]) + sender
    head += struct.pack(">IIHI", 1, seq, NOW_MS >> 32, NOW_MS & 0xFFFFFFFF)
    signed = head + body
    return signed + ident.key.sign(signed)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1", DropReason.MALFORMED_BODY),  # never-used msgpack byte
        (msgpack.packb([1, 2], use_bin_type=True) + b"\x00", DropReason.MALFORMED_BODY),  # extra data
        (b"\x92\x01", DropReason.MALFORMED_BODY),  # truncated array
        (msgpack.packb(msgpack.ExtType(5, b"boom")), DropReason.MALFORMED_BODY),  # ext refused
        (msgpack.packb({1: 2}), DropReason.MALFORMED_BODY),  # int map key
        (b"\xdd\xff\xff\xff\xff", DropReason.MALFORMED_BODY),  # array32 claiming 4G items: bomb
        (msgpack.packb([]), DropReason.BAD_FIELD),  # required field missing
        (msgpack.packb(["text"]), DropReason.BAD_FIELD),  # wrong type
        (msgpack.packb([b"x" * 1025], use_bin_type=True), DropReason.BAD_FIELD),  # over field limit
        (msgpack.packb({"revocation": b""}, use_bin_type=True), DropReason.BAD_FIELD),  # map not array
        (msgpack.packb([[b"x"]], use_bin_type=True), DropReason.BAD_FIELD),
    ],
)
def test_signed_but_malformed_bodies(pki, body, reason):
    a = pki.identity("charger-a")
    opener = Opener(pki.trust(a))
    assert refused(opener, signed_raw(a, 0x01, body)) is reason


def test_longer_body_from_newer_peer_is_accepted(pki):
    a = pki.identity("charger-a")
    opener = Opener(pki.trust(a))
    body = msgpack.packb([b"rev", "a field from the future", 7], use_bin_type=True)
    env = opener.open_untrusted(signed_raw(a, 0x01, body), NOW_MS)
    assert env.message == Revoke(revocation=b"rev")


def test_stream_limit_is_separate_from_datagram_limit(pair):
    sealer, opener, _, _ = pair
    big = sealer.seal(Certificates(certificates=tuple(b"c" * 1000 for _ in range(10))), NOW_MS)
    assert len(big) > 1400
    assert refused(opener, big) is DropReason.TOO_LARGE
    assert opener.open_untrusted(big, NOW_MS, stream=True).seq == 0


def test_frame_reader_splits_and_limits():
    reader = FrameReader(max_frame_bytes=100)
    data = frame(b"one") + frame(b"") + frame(b"three")
    for i in range(len(data)):  # one byte at a time
        reader.feed(data[i : i + 1])
    out = []
    while (f := reader.next_frame_untrusted()) is not None:
        out.append(f)
    assert out == [b"one", b"", b"three"]
    assert reader.buffered == 0
    reader.feed(struct.pack(">I", 101))
    with pytest.raises(BadPacket) as info:
        reader.next_frame_untrusted()
    assert info.value.reason is DropReason.TOO_LARGE
