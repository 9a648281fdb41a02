"""Every datagram the UDP transport drops is counted by reason, and shown by the node."""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio

from meshagent.mesh.node import MeshNode
from meshagent.transport.base import drop_reasons, parse_allow
from meshagent.transport.udp import UdpTransport
from protocol.errors import LocalProtocolError
from protocol.identity import TrustStore
from protocol.swim import SwimConfig
from tests.conftest import NOW_MS

GUARD_S = 10
HOST = f"127.77.{os.getpid() % 250}"


def udp_from(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


async def test_oversize_and_kernel_drops_are_counted() -> None:
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.1", 0), max_datagram_bytes=200) as t:
            t._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # tiny: the kernel drops
            with udp_from(f"{HOST}.2") as s:
                s.sendto(b"x" * 201, t.address)
                for _ in range(500):  # nobody reads meanwhile: most of these overflow the buffer
                    s.sendto(b"y" * 100, t.address)
                got = 0
                with trio.move_on_after(0.3):
                    while True:
                        await t.receive_datagram()
                        got += 1
                # the kernel reports its running drop count with the next datagram delivered
                s.sendto(b"z" * 10, t.address)
                assert (await t.receive_datagram()).packet == b"z" * 10
            stats = t.statistics()
            assert stats.dropped_oversize == 1
            assert stats.dropped_kernel > 0 and got + stats.dropped_kernel == 500
            assert drop_reasons(stats)["kernel_receive_buffer_full"] == stats.dropped_kernel


async def test_allow_refuses_udp_and_tcp_from_other_networks() -> None:
    allow = parse_allow([f"{HOST}.1/32", "10.0.0.0/8"])
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.1", 0), allow=allow) as t:
            with udp_from(f"{HOST}.3") as outsider, udp_from(f"{HOST}.1") as insider:
                outsider.sendto(b"from outside", t.address)
                insider.sendto(b"from inside", t.address)
            got = await t.receive_datagram()
            assert got.packet == b"from inside"
            assert t.statistics().dropped_not_allowed == 1

            served: list[str] = []

            async def handler(stream: trio.abc.Stream) -> None:
                served.append("x")

            async with trio.open_nursery() as nursery:
                await nursery.start(t.serve, handler)
                out = socket.socket()
                out.bind((f"{HOST}.3", 0))
                await trio.to_thread.run_sync(out.connect, t.address)
                out.settimeout(2)
                assert await trio.to_thread.run_sync(out.recv, 10) == b""  # closed at once
                out.close()
                async with await t.open_stream(t.address):  # from the allowed bind host
                    await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
            assert served == ["x"]
            assert t.statistics().dropped_not_allowed == 2


def test_allow_names_the_key_on_a_bad_cidr() -> None:
    with pytest.raises(LocalProtocolError, match=r"mesh.allow: 'nonsense'"):
        parse_allow(["nonsense"])


async def test_node_statistics_show_transport_drop_reasons(pki) -> None:
    ident = pki.identity("charger-a")
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.4", 0), max_datagram_bytes=600) as t:
            node = MeshNode(ident, TrustStore([pki.ca.public_key]), t, SwimConfig.local(), boot_epoch=1,
                            wall_clock_ms=lambda: NOW_MS, rng=random.Random(1))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                with udp_from(f"{HOST}.5") as s:
                    s.sendto(b"x" * 700, t.address)
                    s.sendto(b"short", t.address)
                for _ in range(500):  # bounded by GUARD_S too
                    if node.statistics().dropped.get("truncated", 0) >= 1:
                        break
                    await trio.sleep(0.01)
                dropped = node.statistics().dropped
                assert dropped["oversize_datagram"] == 1
                for reason in ("receive_queue_full", "kernel_receive_buffer_full", "not_allowed"):
                    assert reason in dropped
                node.stop()


async def test_the_receive_buffer_holds_a_spikes_acks() -> None:
    """A burst of 2,000 ACK-sized datagrams, unread, all kept (the default buffer held ~600)."""
    rmem_max = int(await trio.Path("/proc/sys/net/core/rmem_max").read_text())
    if rmem_max < 2 * 1024 * 1024:
        pytest.skip(f"net.core.rmem_max is {rmem_max}: the kernel caps the buffer below what this test needs")
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.1", 0)) as t:
            assert t.receive_buffer_bytes >= 2 * 1024 * 1024
            with udp_from(f"{HOST}.2") as s:
                for _ in range(2000):  # nobody reads meanwhile
                    s.sendto(b"a" * 200, t.address)
                got = 0
                with trio.move_on_after(0.3):
                    while True:
                        await t.receive_datagram()
                        got += 1
            assert got == 2000 and t.statistics().dropped_kernel == 0
