"""Under attack on real UDP: no amplification, flat memory under a spoofed-source flood."""

from __future__ import annotations

import os
import socket
import tracemalloc

import trio

from meshagent.transport.udp import UdpTransport
from meshagent.trust.endpoint import SecureEndpoint
from protocol.messages import Revoke
from protocol.wire import Sealer
from tests.conftest import NOW_MS

GUARD_S = 20
HOST = f"127.76.{os.getpid() % 250}"


def sealed_of_size(sealer: Sealer, size: int) -> bytes:
    """A genuine packet from a signer the receiver does not know, exactly ``size`` bytes."""
    bare = len(sealer.seal(Revoke(revocation=b""), NOW_MS))
    for pad in range(max(0, size - bare - 3), size):
        packet = sealer.seal(Revoke(revocation=b"p" * pad), NOW_MS)
        if len(packet) == size:
            return packet
    raise AssertionError(size)


async def drain(receive_loop, sock: trio.socket.SocketType) -> list[bytes]:
    got: list[bytes] = []
    with trio.move_on_after(0.5):
        while True:
            got.append(await sock.recv(65536))
    return got


async def test_unverified_packets_are_never_answered_with_more_bytes(pki) -> None:
    """QUIC's anti-amplification rule: 100 bytes in from anyone, at most 100 bytes out."""
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.1", 0)) as tb:
            b = SecureEndpoint(tb, Sealer(b_id, 1), pki.trust(b_id), wall_clock_ms=lambda: NOW_MS,
                               certificate_request_interval_s=0.0)
            sealer = Sealer(a_id, 1)  # a's certificate is never attached: b cannot verify a
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.receive)
                ratios = {}
                for i, size in enumerate((100, 180, 300, 1000)):
                    spoofed = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    await spoofed.bind((f"{HOST}.{10 + i}", 0))
                    with spoofed:
                        await spoofed.sendto(sealed_of_size(sealer, size), tb.address)
                        replies = await drain(None, spoofed)
                    ratios[size] = sum(map(len, replies)) / size
                nursery.cancel_scope.cancel()
    assert all(r <= 1.0 for r in ratios.values()), ratios
    assert ratios[1000] > 0  # a packet big enough is still answered (the exchange heals)
    assert b.statistics().amplification_refused >= 1


async def test_spoofed_source_flood_keeps_memory_flat(pki) -> None:
    """2,000 unknown-signer datagrams from 2,000 source addresses on loopback."""
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    packet = Sealer(a_id, 1).seal(Revoke(revocation=b"f" * 400), NOW_MS)
    with trio.fail_after(60):
        async with await UdpTransport.bind((f"{HOST}.2", 0)) as tb:
            b = SecureEndpoint(tb, Sealer(b_id, 1), pki.trust(b_id), wall_clock_ms=lambda: NOW_MS,
                               table_limit=200)

            async def flood(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind((f"127.75.{i >> 8}.{i & 255 or 1}", 0))
                        s.sendto(packet, tb.address)
                    if i % 20 == 19:
                        # let the receiver keep up (the kernel would drop the rest)
                        for _ in range(5000):
                            if b.statistics().dropped["unknown_signer"] + tb.statistics().dropped_kernel > i:
                                break
                            await trio.sleep(0.001)

            async def receive() -> None:
                while True:
                    await b.receive()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await flood(0, 500)  # warm up: allocator pools, caches
                await trio.sleep(0.2)
                tracemalloc.start()
                try:
                    await flood(500, 1250)  # the bounded tables are full by now
                    await trio.sleep(0.2)
                    half = tracemalloc.get_traced_memory()[0]
                    await flood(1250, 2000)
                    await trio.sleep(0.2)
                    grown = tracemalloc.get_traced_memory()[0] - half
                finally:
                    tracemalloc.stop()
                nursery.cancel_scope.cancel()
    assert b.statistics().dropped["unknown_signer"] >= 1950
    assert b.core.statistics().table_entries <= 3 * 200
    # flat: before the tables were bounded, each new source kept ~170 bytes for good (~130 kB here)
    assert grown < 50_000, grown
