"""One suite for every Transport: real UDP/TCP on loopback, and the in-memory network.

Each test gets a ``world`` that makes transports that can reach each other. The UDP world
binds each transport to its own 127.77.x.y address on port 7946, as agents on one host
do; if 7946 is taken there (another test run on the same host), it falls back to an
ephemeral port on that address and says so in ``world.notes``.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from meshagent.errors import MeshagentError
from meshagent.transport.base import (
    DEFAULT_PORT,
    Address,
    DatagramTooLarge,
    FramedStream,
    Transport,
)
from meshagent.transport.memory import MemoryNetwork
from meshagent.transport.udp import UdpTransport
from protocol.errors import BadPacket, DropReason

GUARD_S = 10

# a /16 of loopback for this suite; the third octet varies by process to keep parallel runs apart
_hosts = itertools.count(1)
_NET_BYTE = 100 + os.getpid() % 100


class UdpWorld:
    name = "udp"

    def __init__(self) -> None:
        self.made: list[Transport] = []
        self.notes: list[str] = []

    def fresh_address(self) -> Address:
        n = next(_hosts)
        return (f"127.77.{_NET_BYTE}.{1 + n % 250}", DEFAULT_PORT)

    async def bind(self, address: Address, **kwargs: Any) -> Transport:
        t = await UdpTransport.bind(address, **kwargs)
        self.made.append(t)
        return t

    async def make(self, **kwargs: Any) -> Transport:
        address = self.fresh_address()
        try:
            return await self.bind(address, **kwargs)
        except MeshagentError as exc:
            if "in use" not in str(exc):
                raise
            self.notes.append(f"{address} busy, fell back to an ephemeral port")
            return await self.bind((address[0], 0), **kwargs)

    def unused_address(self) -> Address:
        return self.fresh_address()


class MemoryWorld:
    name = "memory"

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.made: list[Transport] = []
        self.notes: list[str] = []

    async def bind(self, address: Address, **kwargs: Any) -> Transport:
        await trio.lowlevel.checkpoint()
        t = self.net.endpoint(address, **kwargs)
        self.made.append(t)
        return t

    async def make(self, **kwargs: Any) -> Transport:
        await trio.lowlevel.checkpoint()
        t = self.net.endpoint(**kwargs)
        self.made.append(t)
        return t

    def unused_address(self) -> Address:
        return ("10.250.0.1", DEFAULT_PORT)


@pytest.fixture(params=["udp", "memory"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "udp":
        w: Any = UdpWorld()
        yield w
    else:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(random.Random(7))
            await nursery.start(net.run)
            w = MemoryWorld(net)
            yield w
            nursery.cancel_scope.cancel()
    for t in w.made:
        await t.aclose()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for note in w.notes:  # say so when port 7946 was busy
        if reporter is not None:
            reporter.write_line(f"{request.node.nodeid}: {note}")


async def echo_frames(stream: trio.abc.Stream) -> None:
    framed = FramedStream(stream)
    while (packet := await framed.receive_untrusted()) is not None:
        await framed.send(packet[::-1])


async def test_datagram_round_trip_and_source_address(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        assert a.address != b.address
        await a.send_datagram(b.address, b"ping")
        got = await b.receive_datagram()
        assert got.packet == b"ping"
        assert got.source == a.address
        await b.send_datagram(got.source, b"ack")
        back = await a.receive_datagram()
        assert (back.packet, back.source) == (b"ack", b.address)


async def test_datagrams_arrive_in_order_on_a_clean_link(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        for i in range(50):
            await a.send_datagram(b.address, i.to_bytes(2, "big"))
        got = [int.from_bytes((await b.receive_datagram()).packet, "big") for _ in range(50)]
        assert got == list(range(50))


async def test_oversize_refused_on_send_and_dropped_on_receive(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        assert b.max_datagram_bytes == 1400
        with pytest.raises(DatagramTooLarge):
            await a.send_datagram(b.address, bytes(1401))
        assert a.statistics().datagrams_sent == 0
        await a.send_datagram(b.address, bytes(1400))  # exactly the limit is fine
        assert len((await b.receive_datagram()).packet) == 1400

        big = await world.make(max_datagram_bytes=4000)  # a peer with a larger limit
        await big.send_datagram(b.address, bytes(2000))
        await big.send_datagram(b.address, b"small")
        got = await b.receive_datagram()
        assert got.packet == b"small"  # the 2000-byte one was never handed over
        assert b.statistics().dropped_oversize == 1


async def test_stream_round_trip_with_frames(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve, echo_frames)
            async with FramedStream(await a.open_stream(b.address)) as framed:
                packets = [b"one", b"", bytes(range(256)) * 400, b"last"]  # 100 kB frame too
                for p in packets:
                    await framed.send(p)
                for p in packets:
                    assert await framed.receive_untrusted() == p[::-1]
                await framed.send_eof()
                assert await framed.receive_untrusted() is None  # handler ended, clean close
            nursery.cancel_scope.cancel()
        assert a.statistics().streams_opened == 1
        assert b.statistics().streams_accepted == 1


async def test_stream_frame_over_limit_is_a_bad_packet(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        results: list[object] = []

        async def strict(stream: trio.abc.Stream) -> None:
            try:
                await FramedStream(stream, max_frame_bytes=1000).receive_untrusted()
            except BadPacket as exc:
                results.append(exc.reason)

        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve, strict)
            async with FramedStream(await a.open_stream(b.address)) as framed:
                await framed.send(bytes(1001))
                assert await framed.receive_untrusted() is None  # the server hung up
            nursery.cancel_scope.cancel()
        assert results == [DropReason.TOO_LARGE]


async def test_stream_ending_inside_a_frame_is_truncated(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        results: list[object] = []
        done = trio.Event()

        async def reader(stream: trio.abc.Stream) -> None:
            try:
                await FramedStream(stream).receive_untrusted()
            except BadPacket as exc:
                results.append(exc.reason)
            done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve, reader)
            stream = await a.open_stream(b.address)
            await stream.send_all(b"\x00\x00\x00\x10half")  # promises 16 bytes, sends 4
            await stream.aclose()
            await done.wait()
            nursery.cancel_scope.cancel()
        assert results == [DropReason.TRUNCATED]


async def test_stream_to_an_address_nobody_serves_fails_cleanly(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a = await world.make()
        with pytest.raises(OSError):
            await a.open_stream(world.unused_address())
        assert a.statistics().streams_opened == 0


async def test_send_and_drain_without_waiting(world: Any) -> None:
    # the node's fast path: a flush sent with no task switch, a burst drained after one wait
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        assert b.receive_datagram_nowait() is None  # nothing there: no waiting either
        for i in range(5):
            assert a.send_datagram_nowait(b.address, bytes([i]) * 10)
        first = await b.receive_datagram()
        got = [first]
        while len(got) < 5:
            more = b.receive_datagram_nowait()
            if more is None:
                await trio.sleep(0.01)  # the simulated network may still be delivering
                continue
            got.append(more)
        assert [d.packet[0] for d in got] == [0, 1, 2, 3, 4]
        assert {d.source for d in got} == {a.address}
        assert b.receive_datagram_nowait() is None
        sa, sb = a.statistics(), b.statistics()
        assert (sa.datagrams_sent, sa.bytes_sent) == (5, 50)
        assert (sb.datagrams_received, sb.bytes_received) == (5, 50)
        with pytest.raises(DatagramTooLarge):
            a.send_datagram_nowait(b.address, bytes(1401))
        assert a.send_datagram_nowait(world.unused_address(), b"anyone?")  # dealt with, not raised
        assert a.statistics().datagrams_sent + a.statistics().send_errors == 6
        await a.aclose()
        with pytest.raises(trio.ClosedResourceError):
            a.send_datagram_nowait(b.address, b"late")
        with pytest.raises(trio.ClosedResourceError):
            a.receive_datagram_nowait()


async def test_send_to_nowhere_does_not_raise(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a = await world.make()
        await a.send_datagram(world.unused_address(), b"anyone?")
        assert a.statistics().datagrams_sent + a.statistics().send_errors == 1


async def test_close_releases_the_address(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a = await world.make()
        peer = await world.make()
        address = a.address
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve, echo_frames)
            async with FramedStream(await peer.open_stream(address)) as framed:
                await framed.send(b"x")
                assert await framed.receive_untrusted() == b"x"
            await a.aclose()
            await a.aclose()  # idempotent
        with pytest.raises(OSError):
            await peer.open_stream(address)  # nobody serves there any more
        with pytest.raises(trio.ClosedResourceError):
            await a.send_datagram(peer.address, b"late")
        with pytest.raises(trio.ClosedResourceError):
            await a.receive_datagram()

        again = await world.bind(address)  # the same address and port, right away
        assert again.address == address
        await peer.send_datagram(address, b"hello again")
        assert (await again.receive_datagram()).packet == b"hello again"


async def test_close_wakes_a_pending_receive(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a = await world.make()
        outcome: list[str] = []

        async def receiver() -> None:
            try:
                await a.receive_datagram()
            except trio.ClosedResourceError:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await a.aclose()
        assert outcome == ["closed"]


async def test_statistics_count(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        for size in (10, 20, 30):
            await a.send_datagram(b.address, bytes(size))
        for _ in range(3):
            await b.receive_datagram()
        sa, sb = a.statistics(), b.statistics()
        assert (sa.datagrams_sent, sa.bytes_sent) == (3, 60)
        assert (sb.datagrams_received, sb.bytes_received) == (3, 60)
        assert (sa.datagrams_received, sb.datagrams_sent) == (0, 0)
        assert sb.dropped_oversize == sb.dropped_overflow == sb.send_errors == 0


async def test_serve_twice_is_a_caller_error(world: Any) -> None:
    from protocol.errors import LocalProtocolError

    with trio.fail_after(GUARD_S):
        a = await world.make()
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve, echo_frames)
            with pytest.raises(LocalProtocolError):
                await a.serve(echo_frames)
            nursery.cancel_scope.cancel()


async def test_many_concurrent_streams(world: Any) -> None:
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()

        async def one(i: int) -> None:
            async with FramedStream(await a.open_stream(b.address)) as framed:
                await framed.send(str(i).encode())
                assert await framed.receive_untrusted() == str(i).encode()[::-1]

        async with trio.open_nursery() as outer:
            await outer.start(b.serve, echo_frames)
            async with trio.open_nursery() as clients:
                for i in range(20):
                    clients.start_soon(one, i)
            outer.cancel_scope.cancel()
        assert b.statistics().streams_accepted == 20


async def test_streams_pass_trios_stream_checks(world: Any) -> None:
    """trio's own conformance check for half-closeable streams, on our connected pairs."""
    with trio.fail_after(GUARD_S):
        a, b = await world.make(), await world.make()
        accepted_send, accepted = trio.open_memory_channel[trio.abc.Stream](0)
        finished = trio.Event()

        async def hand_over(stream: trio.abc.Stream) -> None:
            await accepted_send.send(stream)
            await finished.wait()  # the check closes the stream; keep the handler alive

        async def stream_maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
            client = await a.open_stream(b.address)
            return client, await accepted.receive()

        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve, hand_over)
            await trio.testing.check_half_closeable_stream(stream_maker, None)
            finished.set()
            nursery.cancel_scope.cancel()
