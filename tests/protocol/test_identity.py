"""Certificates, revocations and the trust store."""

from __future__ import annotations

import pytest

from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.identity import VERIFIED as PROCESS_VERIFIED
from protocol.identity import (
    Certificate,
    NodeIdentity,
    Revocation,
    SigningKey,
    TrustStore,
    VerifiedSignatures,
    check_id,
    decode_certificate_untrusted,
    issuer_id_of,
    sign_certificate,
    sign_revocation,
    verify_detached,
)
from tests.conftest import NOW_MS, Pki


def test_certificate_round_trip_and_fields(pki):
    a = pki.identity("charger-a", roles=("detector", "utility-reader"), site_id="s9", transformer_id="t3")
    cert = decode_certificate_untrusted(a.certificate_bytes, {pki.issuer_id: pki.ca.public_key})
    assert cert == a.certificate
    assert (cert.site_id, cert.transformer_id) == ("s9", "t3")
    assert cert.has_role("detector") and not cert.has_role("operator")
    assert cert.valid_at(NOW_MS) and not cert.valid_at(cert.not_after_ms + 1)


def test_identity_refuses_certificate_for_another_key(pki):
    a = pki.identity("charger-a")
    other = SigningKey.generate(b"\x01" * 32)
    with pytest.raises(ValueError, match="different key"):
        NodeIdentity.from_parts(other, a.certificate_bytes, pki.ca.public_key)
    with pytest.raises(ValueError, match="not valid for this CA"):
        NodeIdentity.from_parts(a.key, a.certificate_bytes, Pki(seed=42).ca.public_key)


def test_ca_refuses_to_sign_for_another_issuer(pki):
    cert = Certificate(1, b"\x00" * 8, "n", b"\x00" * 32, "s", "t", (), 0, 1)
    with pytest.raises(LocalProtocolError):
        sign_certificate(cert, pki.ca)


def test_newer_certificate_replaces_older_and_not_back(pki):
    store = pki.trust()
    key = SigningKey.generate(b"\x02" * 32)
    old = pki.identity("n1", key=key, not_before_ms=NOW_MS - 1000)
    new = pki.identity("n1", key=key, not_before_ms=NOW_MS - 10)
    store.add_certificate_untrusted(new.certificate_bytes, NOW_MS)
    store.add_certificate_untrusted(old.certificate_bytes, NOW_MS)  # a replayed old one
    assert store.certificate("n1") == new.certificate


def test_revocation_is_idempotent_and_forwardable(pki):
    a = pki.identity("charger-a")
    store = pki.trust(a)
    rev = sign_revocation(Revocation(pki.issuer_id, "charger-a", a.certificate.serial, NOW_MS), pki.ca)
    assert store.add_revocation_untrusted(rev).node_id == "charger-a"
    store.add_revocation_untrusted(rev)
    assert store.statistics().revocations == 1
    assert store.revocation_records() == [rev]
    assert store.is_revoked(a.certificate)
    with pytest.raises(BadPacket) as info:
        store.signer("charger-a", NOW_MS)
    assert info.value.reason is DropReason.SIGNER_REVOKED
    # a fresh store learns the same from the forwarded record
    other = pki.trust(a)
    other.add_revocation_untrusted(store.revocation_records()[0])
    assert other.is_revoked(a.certificate)


def test_signer_reasons(pki):
    store = pki.trust()
    with pytest.raises(BadPacket) as info:
        store.signer("nobody", NOW_MS)
    assert info.value.reason is DropReason.UNKNOWN_SIGNER


def test_trust_store_needs_a_ca():
    with pytest.raises(LocalProtocolError):
        TrustStore([])


def test_detached_signatures():
    k = SigningKey.generate(b"\x03" * 32)
    sig = k.sign(b"hello")
    assert verify_detached(k.public_key, b"hello", sig)
    assert not verify_detached(k.public_key, b"hellO", sig)
    assert not verify_detached(b"short", b"hello", sig)
    assert "seed" not in repr(k) and k.seed.hex() not in repr(k)


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "x" * 33, "ünï"])
def test_node_id_rules(bad):
    with pytest.raises(ValueError, match="node id"):
        check_id("node id", bad, 32)


def test_issuer_id_is_stable():
    assert issuer_id_of(b"\x00" * 32) == issuer_id_of(b"\x00" * 32) != issuer_id_of(b"\x01" * 32)
    assert len(issuer_id_of(b"\x00" * 32)) == 8


def test_verified_signatures_remember_only_what_verified():
    memo = VerifiedSignatures(capacity=4)
    k, other = SigningKey.generate(b"\x05" * 32), SigningKey.generate(b"\x06" * 32)
    sig = k.sign(b"rumor")
    assert memo.verify(k.public_key, b"rumor", sig)  # computed
    assert memo.verify(k.public_key, b"rumor", sig)  # remembered
    assert (memo.statistics().hits, memo.statistics().misses) == (1, 1)
    # tampered bytes, another key, a flipped signature bit: computed, refused, never kept
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    for args in [(k.public_key, b"rumoR", sig), (other.public_key, b"rumor", sig), (k.public_key, b"rumor", forged)]:
        assert not memo.verify(*args)
        assert not memo.verify(*args)
    assert (memo.statistics().hits, memo.statistics().misses, memo.statistics().entries) == (1, 7, 1)
    # the same bytes split differently between message and signature are other bytes
    assert not memo.verify(k.public_key, b"rumo", b"r" + sig)


def test_verified_signatures_are_a_bounded_lru():
    memo = VerifiedSignatures(capacity=2)
    k = SigningKey.generate(b"\x07" * 32)
    msgs = [b"a", b"b", b"c"]
    sigs = [k.sign(m) for m in msgs]
    memo.verify(k.public_key, msgs[0], sigs[0])
    memo.verify(k.public_key, msgs[1], sigs[1])
    memo.verify(k.public_key, msgs[0], sigs[0])  # a hit: "a" is now the newest
    memo.verify(k.public_key, msgs[2], sigs[2])  # full: "b", the oldest, goes
    assert memo.statistics().entries == 2
    hits = memo.statistics().hits
    assert memo.verify(k.public_key, msgs[0], sigs[0]) and memo.statistics().hits == hits + 1
    assert memo.verify(k.public_key, msgs[1], sigs[1]) and memo.statistics().hits == hits + 1  # recomputed
    off = VerifiedSignatures(capacity=0)
    assert off.verify(k.public_key, b"a", sigs[0]) and off.verify(k.public_key, b"a", sigs[0])
    assert (off.statistics().hits, off.statistics().entries) == (0, 0)
    with pytest.raises(LocalProtocolError):
        VerifiedSignatures(capacity=-1)


def test_certificates_and_rumors_share_the_process_memo(pki):
    """Every agent of one process checks the same certificate: the CA signature once."""
    ident = pki.identity("memo-node")
    before = PROCESS_VERIFIED.statistics()
    for _ in range(3):  # three agents' trust stores learn the same certificate
        TrustStore([pki.ca.public_key]).add_certificate_untrusted(ident.certificate_bytes, NOW_MS)
    after = PROCESS_VERIFIED.statistics()
    assert after.hits - before.hits >= 2
    # a tampered copy of that certificate still meets the real check and is refused
    raw = bytearray(ident.certificate_bytes)
    raw[-70] ^= 0x01  # a byte of the signed body
    with pytest.raises(BadPacket) as info:
        TrustStore([pki.ca.public_key]).add_certificate_untrusted(bytes(raw), NOW_MS)
    assert info.value.reason is DropReason.BAD_CERTIFICATE
    # rumors: a relayed rumor verified by one agent is a hit for the next; a tampered one is not
    from protocol.swim import Ed25519Items

    reader = pki.identity("memo-reader")
    store = TrustStore([pki.ca.public_key])
    store.add_certificate_untrusted(ident.certificate_bytes, NOW_MS)
    items = Ed25519Items(reader, store)
    sig = ident.key.sign(b"alive 7")
    assert items.verify("memo-node", b"alive 7", sig)
    hits = PROCESS_VERIFIED.statistics().hits
    assert items.verify("memo-node", b"alive 7", sig)
    assert PROCESS_VERIFIED.statistics().hits == hits + 1
    assert not items.verify("memo-node", b"alive 8", sig)
    assert not items.verify("memo-reader", b"alive 7", sig)  # the same bytes, another author
