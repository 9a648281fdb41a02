"""What only the real UDP/TCP transport has: IPv6, bind/advertise, bind errors, source addresses."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from meshagent.errors import MeshagentError
from meshagent.transport.base import FramedStream
from meshagent.transport.udp import UdpTransport, format_address

GUARD_S = 10
HOST = f"127.78.{os.getpid() % 250}"


async def echo(stream: trio.abc.Stream) -> None:
    framed = FramedStream(stream)
    while (packet := await framed.receive_untrusted()) is not None:
        await framed.send(packet)


async def test_ipv6_loopback_datagrams_and_streams() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            await UdpTransport.bind(("::1", 0)) as a,
            await UdpTransport.bind(("::1", 0)) as b,
        ):
            assert a.address[0] == "::1"
            await a.send_datagram(b.address, b"v6")
            got = await b.receive_datagram()
            assert (got.packet, got.source) == (b"v6", a.address)
            async with trio.open_nursery() as nursery:
                await nursery.start(b.serve, echo)
                async with FramedStream(await a.open_stream(b.address)) as framed:
                    await framed.send(b"over tcp6")
                    assert await framed.receive_untrusted() == b"over tcp6"
                nursery.cancel_scope.cancel()


async def test_ephemeral_port_is_the_same_for_udp_and_tcp() -> None:
    async with await UdpTransport.bind((f"{HOST}.1", 0)) as t:
        port = t.address[1]
        assert port != 0
        assert t._udp.getsockname()[1] == t._tcp.getsockname()[1] == port


async def test_stream_source_is_the_bind_address() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            await UdpTransport.bind((f"{HOST}.2", 0)) as a,
            await UdpTransport.bind((f"{HOST}.3", 0)) as b,
        ):
            peers: list[str] = []

            async def note_peer(stream: trio.abc.Stream) -> None:
                assert isinstance(stream, trio.SocketStream)
                peers.append(stream.socket.getpeername()[0])

            async with trio.open_nursery() as nursery:
                await nursery.start(b.serve, note_peer)
                stream = await a.open_stream(b.address)
                assert await stream.receive_some(10) == b""  # handler returned: closed
                await stream.aclose()
                nursery.cancel_scope.cancel()
            assert peers == [f"{HOST}.2"]


async def test_wrong_family_destination_is_counted_not_raised() -> None:
    async with await UdpTransport.bind((f"{HOST}.4", 0)) as a:
        await a.send_datagram(("::1", 7946), b"x")
        assert a.statistics().send_errors == 1
        assert a.statistics().datagrams_sent == 0


async def test_binding_a_taken_address_is_one_clear_line() -> None:
    async with await UdpTransport.bind((f"{HOST}.5", 0)) as a:
        with pytest.raises(MeshagentError) as info:
            await UdpTransport.bind(a.address)
        message = str(info.value)
        assert format_address(a.address) in message
        assert "in use" in message and "\n" not in message


async def test_bind_host_must_be_numeric_and_specific_or_advertised() -> None:
    with pytest.raises(MeshagentError, match="not a numeric"):
        await UdpTransport.bind(("localhost", 0))
    with pytest.raises(MeshagentError, match="advertise"):
        await UdpTransport.bind(("0.0.0.0", 0))
    with pytest.raises(MeshagentError, match="not a numeric"):
        await UdpTransport.bind((f"{HOST}.6", 0), advertise=("node.example", 7946))


async def test_advertise_address_differs_from_bind() -> None:
    async with await UdpTransport.bind((f"{HOST}.7", 0), advertise=("198.51.100.7", 0)) as t:
        assert t.bind_address[0] == f"{HOST}.7"
        assert t.address == ("198.51.100.7", t.bind_address[1])


async def test_raw_oversize_datagram_from_a_foreign_socket_is_dropped() -> None:
    with trio.fail_after(GUARD_S):
        async with await UdpTransport.bind((f"{HOST}.8", 0)) as t:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                raw.bind((f"{HOST}.9", 0))
                raw.sendto(bytes(9000), t.address)
                raw.sendto(b"fine", t.address)
                got = await t.receive_datagram()
                assert got.packet == b"fine"
                assert got.source == raw.getsockname()
            assert t.statistics().dropped_oversize == 1


async def test_port_free_sees_a_bound_port() -> None:
    from meshagent.transport.udp import UdpTransport, port_free

    t = await UdpTransport.bind(("127.0.0.1", 0))
    async with t:
        assert not port_free("127.0.0.1", t.address[1])
    assert port_free("127.0.0.1", t.address[1])
