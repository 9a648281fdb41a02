"""The secure endpoint: signing, verification and certificate exchange over transports."""

from __future__ import annotations

import random

import trio

from meshagent.transport.memory import open_memory_network
from meshagent.transport.udp import UdpTransport
from meshagent.trust.endpoint import SecureEndpoint
from protocol.identity import Revocation, sign_revocation
from protocol.messages import CertificateRequest, Revoke
from protocol.wire import Sealer
from tests.conftest import NOW_MS

FIRST = b"first" * 60


def clock() -> int:
    return NOW_MS + int(trio.current_time() * 1000)


def endpoint(pki, transport, ident, *known, **kw) -> SecureEndpoint:
    trust = pki.trust(ident, *known)
    trust.add_certificate(ident.certificate, ident.certificate_bytes)
    return SecureEndpoint(transport, Sealer(ident, 1), trust, wall_clock_ms=clock, **kw)


async def test_strangers_exchange_certificates_and_then_talk(pki, autojump_clock):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    async with open_memory_network(random.Random(1)) as net:
        a = endpoint(pki, net.endpoint(("10.0.0.1", 7946)), a_id, certificate_sends=0)
        b = endpoint(pki, net.endpoint(("10.0.0.2", 7946)), b_id, certificate_sends=0)
        got: list[object] = []

        async def b_loop() -> None:
            while True:
                got.append((await b.receive()).envelope.message)

        async def a_loop() -> None:
            while True:
                await a.receive()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_loop)
            nursery.start_soon(a_loop)
            with trio.fail_after(10):
                # a never attaches its certificate: b cannot verify the first packet, holds
                # it and asks a for its certificate; a answers; b opens the held packet
                # (large enough that b's request with its certificate is not larger)
                await a.send(b.address, Revoke(revocation=FIRST))
                await trio.sleep(1)
                assert got == [Revoke(revocation=FIRST)]
                stats = b.statistics()
                assert stats.dropped["unknown_signer"] == 1  # counted when it could not be opened
                assert stats.certificate_requests_sent == 1 and stats.held_released == 1
                await a.send(b.address, Revoke(revocation=b"second"))
                await trio.sleep(1)
            assert got == [Revoke(revocation=FIRST), Revoke(revocation=b"second")]
            nursery.cancel_scope.cancel()


async def test_certificate_attached_to_first_sends_only(pki, autojump_clock):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    async with open_memory_network(random.Random(2)) as net:
        a = endpoint(pki, net.endpoint(), a_id, certificate_sends=2, certificate_refresh_s=30)
        b = endpoint(pki, net.endpoint(), b_id)
        with trio.fail_after(100):
            sizes = []
            for _ in range(3):
                await a.send(b.address, Revoke(revocation=b"x"))
                sizes.append((await b.receive()).envelope.size)
            assert sizes[0] == sizes[1] > sizes[2]
            await trio.sleep(31)
            await a.send(b.address, Revoke(revocation=b"x"))
            assert (await b.receive()).envelope.size == sizes[0]
        assert a.statistics().certificates_attached == 3


async def test_revocation_applied_before_the_revoked_node_speaks_again(pki, autojump_clock):
    a_id, b_id, c_id = pki.identity("charger-a"), pki.identity("charger-b"), pki.identity("charger-c")
    revoked: list[str] = []
    async with open_memory_network(random.Random(3)) as net:
        a = endpoint(pki, net.endpoint(), a_id, b_id, c_id)
        b = endpoint(pki, net.endpoint(), b_id, a_id, c_id)
        c = endpoint(pki, net.endpoint(), c_id, a_id, b_id)
        rev = sign_revocation(Revocation(pki.issuer_id, "charger-c", c_id.certificate.serial, NOW_MS), pki.ca)
        with trio.fail_after(10):
            await a.send(b.address, Revoke(revocation=rev))
            received = await b.receive()
            assert isinstance(received.envelope.message, Revoke)  # passed up, for gossip
            revoked.extend(b.revoked())
            assert revoked == ["charger-c"]
            await c.send(b.address, Revoke(revocation=b"from c"))
            await a.send(b.address, Revoke(revocation=b"from a"))
            assert (await b.receive()).envelope.sender_id == "charger-a"
        assert b.statistics().dropped["signer_revoked"] == 1
        assert b.apply_revocation(rev) is None  # idempotent


async def test_real_udp_on_loopback(pki):
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    ta = await UdpTransport.bind(("127.0.0.1", 0))
    tb = await UdpTransport.bind(("127.0.0.1", 0))
    async with ta, tb:
        # the real clock of the wire is injected: the test certificates are valid around NOW_MS
        real = SecureEndpoint(ta, Sealer(a_id, 1), pki.trust(a_id), wall_clock_ms=lambda: NOW_MS)
        other = SecureEndpoint(tb, Sealer(b_id, 1), pki.trust(b_id), wall_clock_ms=lambda: NOW_MS)
        with trio.fail_after(5):
            await real.send(tb.address, Revoke(revocation=b"over udp"))
            got = await other.receive()
        assert got.envelope.message == Revoke(revocation=b"over udp")
        assert got.source == ta.address


async def test_held_packets_are_bounded_and_expire(pki, autojump_clock):
    """Packets from a signer nobody vouches for are held a few seconds at most, 256 at most."""
    from tests.conftest import Pki

    stranger = Pki(seed=77).identity("stranger")  # another CA: its certificate never verifies
    b_id = pki.identity("charger-b")
    async with open_memory_network(random.Random(9)) as net:
        s_ep = net.endpoint()
        b = endpoint(pki, net.endpoint(), b_id)
        sealer = Sealer(stranger, 1)
        for i in range(300):
            await s_ep.send_datagram(b.address, sealer.seal(Revoke(revocation=i.to_bytes(2, "big")), clock()))
        with trio.move_on_after(1):
            await b.receive()  # nothing can come out
        assert len(b.core._held) == 256
        assert b.statistics().dropped["unknown_signer"] == 300


async def test_certificate_answers_are_rate_limited_per_address(pki, autojump_clock):
    """An answer is bigger than the request: a spoofed source must not make us an amplifier."""
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    async with open_memory_network(random.Random(10)) as net:
        a_t = net.endpoint()
        a = endpoint(pki, a_t, a_id, b_id)
        b = endpoint(pki, net.endpoint(), b_id, a_id)

        async def serve_b() -> None:
            while True:
                await b.receive()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_b)
            with trio.fail_after(10):
                for _ in range(40):  # a burst: 16 answered, the rest dropped
                    await a.send(b.address, CertificateRequest(node_ids=("charger-b",)))
                await trio.sleep(0.1)
                assert a_t.statistics().datagrams_received == 16
                await trio.sleep(1)  # the bucket refills at 8 per second
                for _ in range(20):
                    await a.send(b.address, CertificateRequest(node_ids=("charger-b",)))
                await trio.sleep(0.1)
                assert 16 + 8 <= a_t.statistics().datagrams_received <= 16 + 10
            nursery.cancel_scope.cancel()
