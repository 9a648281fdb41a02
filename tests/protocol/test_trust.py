"""The sans-IO trust core: held packets, certificate exchange, rate limits, revocations."""

from __future__ import annotations

import tracemalloc

from protocol.identity import Revocation, sign_revocation
from protocol.messages import CertificateRequest, Certificates, Revoke
from protocol.trust import BoundedTable, TrustCore
from protocol.wire import Opener, Sealer
from tests.conftest import NOW_MS

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)


def core(pki, ident, *known, **kw) -> TrustCore:
    trust = pki.trust(ident, *known)
    trust.add_certificate(ident.certificate, ident.certificate_bytes)
    return TrustCore(Sealer(ident, 1), trust, **kw)


def opened(pki, ident, packet: bytes, *known):
    """What a peer that knows ``known`` makes of ``packet``."""
    return Opener(pki.trust(ident, *known)).open_untrusted(packet, NOW_MS)


def test_unknown_signer_is_held_asked_for_and_released(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a, b = core(pki, a_id), core(pki, b_id)
    packet = a.seal(Revoke(revocation=b"r" * 400), NOW_MS)
    assert b.open_datagram(packet, A, 0.0, NOW_MS) is None
    [(to, request)] = b.outgoing()
    assert to == A and len(request) <= len(packet)
    # a opens b's request (b's certificate rode on it) and answers with its own
    assert a.open_datagram(request, B, 0.1, NOW_MS) is None
    [(to, answer)] = a.outgoing()
    assert to == B
    assert b.open_datagram(answer, A, 0.2, NOW_MS) is None  # consumed: certificate exchange
    [(env, source)] = b.released()
    assert env.message == Revoke(revocation=b"r" * 400) and source == A
    assert b.statistics().held_released == 1


def test_never_answers_an_unverified_packet_with_more_bytes(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a, b = core(pki, a_id), core(pki, b_id)
    now = 0.0
    for size in (60, 100, 120, 200, 300, 600, 1400):
        body = b"x" * max(0, size - 110)
        packet = a.seal(Revoke(revocation=body), NOW_MS)
        now += 2.0  # past the per-source request interval
        b.open_datagram(packet, A, now, NOW_MS)
        for _to, reply in b.outgoing():
            assert len(reply) <= len(packet), (size, len(reply), len(packet))
    stats = b.statistics()
    assert stats.amplification_refused >= 1  # the smallest could not be answered at all
    assert stats.certificate_requests_sent >= 1
    # a request that fits carries b's certificate only when that fits too
    big = a.seal(Revoke(revocation=b"y" * 600), NOW_MS)
    b.open_datagram(big, A, now + 2.0, NOW_MS)
    [(_to, reply)] = b.outgoing()
    assert opened(pki, a_id, reply).certificate.node_id == "charger-b"  # a can verify it


def test_request_rate_limited_per_source(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a, b = core(pki, a_id), core(pki, b_id, request_interval_s=1.0)
    packets = [a.seal(Revoke(revocation=b"z" * 400), NOW_MS) for _ in range(5)]
    for i, p in enumerate(packets):
        b.open_datagram(p, A, i * 0.1, NOW_MS)
    assert len(b.outgoing()) == 1
    b.open_datagram(a.seal(Revoke(revocation=b"z" * 400), NOW_MS), A, 1.5, NOW_MS)
    assert len(b.outgoing()) == 1


def test_answers_token_bucket_per_source(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a = core(pki, a_id, b_id, answer_burst=3, answer_rate_per_s=1.0)
    b = core(pki, b_id, a_id)
    for _ in range(10):
        a.open_datagram(b.seal(CertificateRequest(node_ids=("charger-a",)), NOW_MS), B, 0.0, NOW_MS)
    assert len(a.outgoing()) == 3
    assert a.statistics().answers_rate_limited == 7
    a.open_datagram(b.seal(CertificateRequest(node_ids=("charger-a",)), NOW_MS), B, 1.0, NOW_MS)
    [(_to, answer)] = a.outgoing()
    assert isinstance(opened(pki, b_id, answer, a_id).message, Certificates)


def test_revocation_applied_before_the_envelope_comes_out(pki):
    a_id, b_id, c_id = pki.identity("charger-a"), pki.identity("charger-b"), pki.identity("charger-c")
    a, b, c = core(pki, a_id, b_id, c_id), core(pki, b_id, a_id, c_id), core(pki, c_id, a_id, b_id)
    rev = sign_revocation(Revocation(pki.issuer_id, "charger-c", c_id.certificate.serial, NOW_MS), pki.ca)
    env = b.open_datagram(a.seal(Revoke(revocation=rev), NOW_MS), A, 0.0, NOW_MS)
    assert env is not None and isinstance(env.message, Revoke)
    assert b.revoked() == ["charger-c"] and b.revoked() == []
    assert b.open_datagram(c.seal(Revoke(revocation=b"x"), NOW_MS), ("10.0.0.3", 7946), 0.1, NOW_MS) is None
    assert b.opener.statistics().dropped["signer_revoked"] == 1
    assert b.apply_revocation(rev, 0.2, NOW_MS) is None  # idempotent


def test_rumor_authors_asked_of_the_relay_and_item_handed_back(pki):
    a_id, b_id, d_id = pki.identity("charger-a"), pki.identity("charger-b"), pki.identity("charger-d")
    b = core(pki, b_id, a_id)
    b.rumor_authors_missing({"charger-d"}, A, "gossip-1", 0.0, NOW_MS)
    b.rumor_authors_missing({"charger-d"}, A, "gossip-2", 0.5, NOW_MS)
    [(to, request)] = b.outgoing()  # once per author per interval
    assert to == A and opened(pki, a_id, request, b_id).message == CertificateRequest(node_ids=("charger-d",))
    assert b.unblocked() == []
    b.learn_certificates([d_id.certificate_bytes], 0.6, NOW_MS)
    assert b.unblocked() == ["gossip-1", "gossip-2"]


def test_not_before_refuses_packets_issued_before_start(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a = core(pki, a_id)
    b = core(pki, b_id, a_id, not_before_ms=NOW_MS)
    assert b.open_datagram(a.seal(Revoke(revocation=b"old"), NOW_MS - 1), A, 0.0, NOW_MS) is None
    assert b.opener.statistics().dropped["issued_before_start"] == 1
    assert b.open_datagram(a.seal(Revoke(revocation=b"new"), NOW_MS), A, 0.0, NOW_MS) is not None


def test_bounded_table_evicts_and_prunes():
    t: BoundedTable[int, int] = BoundedTable(limit=3, stale_s=1.0)
    for i in range(10):
        t.put(i, i, 0.0)
    assert len(t) == 3 and t.evicted == 7 and t.get(9, 0.5) == 9
    assert t.get(9, 1.5) is None and len(t) == 0


def test_spoofed_source_flood_keeps_memory_flat(pki):
    """Unknown-signer datagrams from 5,000 spoofed sources: the tables stay bounded."""
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    a, b = core(pki, a_id), core(pki, b_id, table_limit=256)
    packet = a.seal(Revoke(revocation=b"f" * 400), NOW_MS)
    # warm up so allocator pools and caches exist before the baseline
    for i in range(1_000):
        b.open_datagram(packet, (f"10.{i >> 8 & 255}.{i & 255}.1", 7946), i * 1e-6, NOW_MS)
        b.outgoing()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5_000):
            b.open_datagram(packet, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946), 0.01 + i * 1e-6, NOW_MS)
            b.outgoing()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert b.statistics().table_entries <= 3 * 256
    assert len(b._held) <= 256
    assert grown < 100_000, grown  # about 1 MB per 5,000 sources when the table grew
