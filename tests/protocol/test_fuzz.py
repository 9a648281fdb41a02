"""Fuzzing every ``*_untrusted`` decoder: anything but ``BadPacket`` is a bug.

Two kinds of input, both from seeded generators so a failure replays exactly:

* mutations of valid packets (bit flips, byte overwrites, truncations, extensions, splices of
  two packets, header-field swaps) and random bytes: 100,000 for ``Opener.open_untrusted``;
* bodies behind a *valid* signature (random and mutated msgpack), so the decoding that only a
  legitimate key holder can reach is fuzzed too; plus certificates, revocations and stream
  frames.

Hypothesis adds structured cases: every valid message round-trips.
"""

from __future__ import annotations

import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import BadPacket
from protocol.identity import (
    Revocation,
    decode_certificate_untrusted,
    decode_revocation_untrusted,
    sign_revocation,
)
from protocol.messages import MESSAGE_TYPES, CertificateRequest, Certificates, Revoke
from protocol.wire import MAGIC_VERSION, FrameReader, Opener, Sealer, frame
from tests.conftest import NOW_MS, Pki

SEED = 20261126


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    op = rng.randrange(9)
    if op == 0 and b:  # flip 1-4 bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:  # overwrite a byte with an interesting value
        b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xC1, 0xDC, 0xDD, 0xDF, 0xFF])
    elif op == 2:  # truncate
        del b[rng.randrange(len(b) + 1) :]
    elif op == 3:  # extend with junk
        b += rng.randbytes(rng.randint(1, 64))
    elif op == 4 and others:  # splice two packets
        other = rng.choice(others)
        cut = rng.randrange(len(b) + 1)
        b = b[:cut] + other[rng.randrange(len(other) + 1) :]
    elif op == 5:  # pure random bytes
        b = bytearray(rng.randbytes(rng.randint(0, 300)))
    elif op == 6 and len(b) > 8:  # delete a run
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 8)]
    elif op == 7 and len(b) > 4:  # header fields: version/type/flags/len
        b[rng.randrange(4)] = rng.randrange(256)
    else:  # insert a byte
        b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
    return bytes(b)


@pytest.fixture(scope="module")
def world():
    pki = Pki(seed=3)
    a = pki.identity("charger-a", roles=("detector",))
    b = pki.identity("charger-b")
    sealer = Sealer(a, 1)
    samples = [
        sealer.seal(Revoke(revocation=b"r" * 40), NOW_MS),
        sealer.seal(CertificateRequest(node_ids=("charger-b", "c")), NOW_MS, attach_certificate=True),
        sealer.seal(Certificates(certificates=(b.certificate_bytes,)), NOW_MS),
        Sealer(b, 9).seal(Revoke(revocation=b""), NOW_MS + 5),
    ]
    return pki, a, b, samples


def test_opener_survives_100k_mutated_packets(world):
    pki, _a, b, samples = world
    rng = random.Random(SEED)
    opener = Opener(pki.trust(b))  # a is unknown: only packets with its attached certificate verify
    accepted = 0
    for _ in range(100_000):
        packet = mutate(rng, rng.choice(samples), samples)
        try:
            opener.open_untrusted(packet, NOW_MS)
            accepted += 1
        except BadPacket:
            pass
    stats = opener.statistics()
    assert stats.accepted + stats.dropped_total == 100_000
    assert stats.accepted == accepted
    # a mutated packet may only be accepted if it is byte-identical to a genuine one
    # (mutations such as 'truncate at the end' or 'splice at the same offset' can reproduce
    # it); each genuine packet can be accepted once at most (replay window).
    assert accepted <= len(samples)


def _signed(ident, type_byte: int, body: bytes, seq: int) -> bytes:
    sender = ident.node_id.encode()
    head = bytes([MAGIC_VERSION, type_byte, 0, len(sender)]) + sender
    head += struct.pack(">IIHI", 1, seq, NOW_MS >> 32, NOW_MS & 0xFFFFFFFF)
    return head + body + ident.key.sign(head + body)


def _random_msgpack(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return rng.choice([0.0, -1.5, float("nan"), float("inf"), 1e308])
    if kind == 2:
        return rng.randbytes(rng.randint(0, 40)).decode("latin-1")
    if kind == 3:
        return rng.randbytes(rng.randint(0, 1100))
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return rng.randint(0, 255)
    if kind in (6, 7):
        return [_random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {str(rng.randint(0, 9)): _random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_signed_random_bodies_only_raise_badpacket(world):
    pki, a, _, _ = world
    rng = random.Random(SEED + 1)
    opener = Opener(pki.trust(a))
    valid = [codec.encode(m) for m in (Revoke(b"x"), CertificateRequest(("a",)), Certificates((b"c",)))]
    accepted = 0
    for seq in range(20_000):
        type_byte = rng.choice([*MESSAGE_TYPES, 0x7E])
        if rng.random() < 0.5:
            body = msgpack.packb(_random_msgpack(rng), use_bin_type=True)
        else:
            body = mutate(rng, rng.choice(valid), valid)
        try:
            env = opener.open_untrusted(_signed(a, type_byte, body, seq), NOW_MS)
        except BadPacket:
            continue
        accepted += 1
        # whatever was accepted is a well-formed message of the announced type
        assert type(env.message) is MESSAGE_TYPES[type_byte]
        codec.encode(env.message)
    assert 0 < accepted < 20_000


def test_certificate_and_revocation_decoders(world):
    pki, a, _, _ = world
    rng = random.Random(SEED + 2)
    keys = {pki.issuer_id: pki.ca.public_key}
    rev = sign_revocation(
        Revocation(issuer_id=pki.issuer_id, node_id="charger-a", serial=a.certificate.serial, revoked_at_ms=NOW_MS),
        pki.ca,
    )
    genuine = [a.certificate_bytes, rev]
    for _ in range(10_000):
        data = mutate(rng, rng.choice(genuine), genuine)
        for decoder in (decode_certificate_untrusted, decode_revocation_untrusted):
            try:
                decoder(data, keys)
            except BadPacket:
                pass
    assert decode_certificate_untrusted(a.certificate_bytes, keys) == a.certificate
    assert decode_revocation_untrusted(rev, keys).serial == a.certificate.serial


def test_frame_reader_on_random_streams():
    rng = random.Random(SEED + 3)
    for _ in range(2_000):
        reader = FrameReader(max_frame_bytes=rng.choice([0, 10, 1000]))
        stream = b"".join(frame(rng.randbytes(rng.randint(0, 30))) for _ in range(3))
        stream = mutate(rng, stream, [])
        try:
            while rng.random() < 0.95:
                reader.feed(stream[: rng.randint(0, 20)])
                stream = stream[20:]
                while reader.next_frame_untrusted() is not None:
                    pass
        except BadPacket:
            pass


# --- structured: every valid message round-trips ---------------------------------------------

node_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
messages = st.one_of(
    st.builds(Revoke, revocation=st.binary(max_size=1024)),
    st.builds(CertificateRequest, node_ids=st.lists(st.text(max_size=256), max_size=64).map(tuple)),
    st.builds(Certificates, certificates=st.lists(st.binary(max_size=1024), max_size=4).map(tuple)),
)


@settings(max_examples=300, deadline=None)
@given(msg=messages, issued=st.integers(NOW_MS - 30_000, NOW_MS + 30_000), epoch=st.integers(0, 2**32 - 1))
def test_every_valid_message_round_trips(msg, issued, epoch):
    pki = Pki(seed=5)
    a = pki.identity("charger-a")
    packet = Sealer(a, epoch).seal(msg, issued)
    env = Opener(pki.trust(a)).open_untrusted(packet, NOW_MS, stream=len(packet) > 1400)
    assert env.message == msg
    assert env.issued_at_ms == issued and env.boot_epoch == epoch


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes(data):
    pki = Pki(seed=6)
    with pytest.raises(BadPacket):
        Opener(pki.trust()).open_untrusted(data, NOW_MS)
