"""Faults of the in-memory network, in virtual time (autojump clock), from seeded RNGs."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from meshagent.transport.base import Address, Datagram, FramedStream
from meshagent.transport.memory import (
    LinkConditions,
    MemoryNetwork,
    MemoryTransport,
    open_memory_network,
)
from protocol.errors import LocalProtocolError

GUARD_S = 60  # virtual seconds


async def drain(ep: MemoryTransport, *, quiet_s: float = 5.0) -> list[Datagram]:
    """Everything that arrives until nothing has for ``quiet_s`` (virtual) seconds."""
    got: list[Datagram] = []
    while True:  # bounded: each round either receives or times out
        with trio.move_on_after(quiet_s) as scope:
            got.append(await ep.receive_datagram())
        if scope.cancelled_caught:
            return got


def numbered(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


async def test_loss_rate_is_within_tolerance(autojump_clock: trio.abc.Clock) -> None:
    n, loss = 4000, 0.2
    with trio.fail_after(GUARD_S):
        async with open_memory_network(random.Random(1), default=LinkConditions(loss=loss)) as net:
            a, b = net.endpoint(), net.endpoint(receive_queue=n)
            for p in numbered(n):
                await a.send_datagram(b.address, p)
            got = await drain(b)
    # binomial(4000, 0.8): sd = sqrt(n p q) = 25.3; allow about 4 sd
    assert abs(len(got) - n * (1 - loss)) < 100
    stats = net.statistics()
    assert stats.lost == n - len(got)
    assert stats.sent == n


async def test_delay_and_jitter_are_on_the_trio_clock(autojump_clock: trio.abc.Clock) -> None:
    link = LinkConditions(delay_s=0.050, jitter_s=0.010)
    with trio.fail_after(GUARD_S):
        async with open_memory_network(random.Random(2), default=link) as net:
            a, b = net.endpoint(), net.endpoint()
            start = trio.current_time()
            await a.send_datagram(b.address, b"x")
            await b.receive_datagram()
            elapsed = trio.current_time() - start
    assert 0.050 <= elapsed < 0.060


async def test_partition_blocks_both_ways_and_heals(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        async with open_memory_network(random.Random(3)) as net:
            a, b, c = net.endpoint(), net.endpoint(), net.endpoint()
            cut = net.partition([a.address], [b.address])
            await a.send_datagram(b.address, b"a->b")
            await b.send_datagram(a.address, b"b->a")
            await a.send_datagram(c.address, b"a->c")  # not part of the cut
            assert [d.packet for d in await drain(b)] == []
            assert [d.packet for d in await drain(a)] == []
            assert [d.packet for d in await drain(c)] == [b"a->c"]
            assert net.statistics().cut == 2

            start = trio.current_time()  # streams across the cut time out like a lost SYN
            with pytest.raises(TimeoutError):
                await a.open_stream(b.address)
            assert trio.current_time() - start == pytest.approx(net.connect_timeout_s)

            net.heal(cut)
            await a.send_datagram(b.address, b"a->b")
            await b.send_datagram(a.address, b"b->a")
            assert [d.packet for d in await drain(b)] == [b"a->b"]
            assert [d.packet for d in await drain(a)] == [b"b->a"]


async def test_partition_against_everyone_else_and_in_flight_drop(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(GUARD_S):
        link = LinkConditions(delay_s=1.0)
        async with open_memory_network(random.Random(4), default=link) as net:
            eps = [net.endpoint() for _ in range(4)]
            await eps[1].send_datagram(eps[0].address, b"in flight")
            cut = net.partition([eps[0].address])  # eps[0] alone against the rest
            for ep in eps[1:]:
                await eps[0].send_datagram(ep.address, b"out")
            await eps[2].send_datagram(eps[3].address, b"inside the majority")
            assert await drain(eps[0]) == []  # the in-flight one was cut on arrival
            assert [d.packet for d in await drain(eps[3])] == [b"inside the majority"]
            assert net.statistics().cut == 4
            net.heal(cut)
            with pytest.raises(LocalProtocolError):
                net.heal(cut)


async def test_duplication_happens(autojump_clock: trio.abc.Clock) -> None:
    n = 1000
    with trio.fail_after(GUARD_S):
        link = LinkConditions(duplicate=0.3)
        async with open_memory_network(random.Random(5), default=link) as net:
            a, b = net.endpoint(), net.endpoint(receive_queue=2 * n)
            for p in numbered(n):
                await a.send_datagram(b.address, p)
            got = [d.packet for d in await drain(b)]
    assert set(got) == set(numbered(n))
    extra = len(got) - n
    assert extra == net.statistics().duplicated
    assert 230 < extra < 370  # binomial(1000, 0.3), sd 14.5


async def test_reordering_happens(autojump_clock: trio.abc.Clock) -> None:
    n = 500
    with trio.fail_after(GUARD_S):
        link = LinkConditions(delay_s=0.01, reorder=0.1, reorder_delay_s=0.05)
        async with open_memory_network(random.Random(6), default=link) as net:
            a, b = net.endpoint(), net.endpoint(receive_queue=n)
            for p in numbered(n):
                await a.send_datagram(b.address, p)
                await trio.sleep(0.001)  # one every ms: a 50 ms hold overtakes ~50
            got = [int.from_bytes(d.packet, "big") for d in await drain(b)]
    assert sorted(got) == list(range(n))
    out_of_order = sum(1 for x, y in itertools.pairwise(got) if y < x)
    assert out_of_order > 20
    assert net.statistics().reordered > 20


async def test_jitter_alone_reorders_close_packets(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        link = LinkConditions(delay_s=0.01, jitter_s=0.02)
        async with open_memory_network(random.Random(7), default=link) as net:
            a, b = net.endpoint(), net.endpoint()
            for p in numbered(100):
                await a.send_datagram(b.address, p)
            got = [int.from_bytes(d.packet, "big") for d in await drain(b)]
    assert sorted(got) == list(range(100)) and got != list(range(100))


async def _trace(seed: int) -> list[tuple[float, Address, Address, bytes]]:
    trace: list[tuple[float, Address, Address, bytes]] = []
    link = LinkConditions(loss=0.1, delay_s=0.005, jitter_s=0.01, duplicate=0.05, reorder=0.05)
    async with open_memory_network(
        random.Random(seed), default=link, on_deliver=lambda *e: trace.append(e)
    ) as net:
        eps = [net.endpoint() for _ in range(10)]
        pick = random.Random(seed + 1000)  # the workload, seeded too
        start = trio.current_time()
        for i in range(300):
            src, dst = pick.sample(eps, 2)
            await src.send_datagram(dst.address, i.to_bytes(2, "big"))
            await trio.sleep(pick.random() * 0.002)
        await trio.sleep(1)
    return [(round(t - start, 9), s, d, p) for t, s, d, p in trace]


async def test_same_seed_same_delivery_trace(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        first, second, other = await _trace(11), await _trace(11), await _trace(12)
    assert len(first) > 250
    assert first == second
    assert first != other


async def test_overflowing_inbox_drops_and_counts(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        async with open_memory_network(random.Random(8)) as net:
            a, b = net.endpoint(), net.endpoint(receive_queue=10)
            for p in numbered(15):
                await a.send_datagram(b.address, p)
            await trio.sleep(0.1)  # all arrive before anyone reads
            got = await drain(b)
    assert len(got) == 10
    assert b.statistics().dropped_overflow == 5


async def test_per_link_conditions_override_the_default(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        async with open_memory_network(random.Random(9)) as net:
            a, b, c = net.endpoint(), net.endpoint(), net.endpoint()
            net.set_link(a.address, b.address, LinkConditions(loss=1.0), both_ways=False)
            await a.send_datagram(b.address, b"lost")
            await b.send_datagram(a.address, b"kept")  # the other direction is clean
            await a.send_datagram(c.address, b"kept too")
            assert await drain(b) == []
            assert len(await drain(a)) == 1 and len(await drain(c)) == 1
            net.clear_link(a.address, b.address, both_ways=False)
            await a.send_datagram(b.address, b"now fine")
            assert len(await drain(b)) == 1


async def test_stream_connect_takes_a_round_trip(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(GUARD_S):
        async with open_memory_network(
            random.Random(10), default=LinkConditions(delay_s=0.02)
        ) as net:
            a, b = net.endpoint(), net.endpoint()

            async def echo(stream: trio.abc.Stream) -> None:
                framed = FramedStream(stream)
                while (p := await framed.receive_untrusted()) is not None:
                    await framed.send(p)

            async with trio.open_nursery() as nursery:
                await nursery.start(b.serve, echo)
                start = trio.current_time()
                async with FramedStream(await a.open_stream(b.address)) as framed:
                    assert trio.current_time() - start == pytest.approx(0.04)
                    await framed.send(b"hi")
                    assert await framed.receive_untrusted() == b"hi"
                nursery.cancel_scope.cancel()


async def test_misuse_is_reported() -> None:
    net = MemoryNetwork(random.Random(0))
    a = net.endpoint(("10.0.0.1", 7946))
    with pytest.raises(OSError):
        net.endpoint(("10.0.0.1", 7946))
    with pytest.raises(LocalProtocolError, match="not running"):
        await a.send_datagram(("10.0.0.2", 7946), b"x")
    with pytest.raises(LocalProtocolError):
        LinkConditions(loss=1.5)
    with pytest.raises(LocalProtocolError):
        net.partition([a.address], [a.address])
    await a.aclose()
    net.endpoint(("10.0.0.1", 7946))  # released by close


async def test_thousands_of_endpoints_in_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    """5,000 endpoints, each sending to 3 random peers: one scheduler task, no task per packet."""
    n = 5000
    rng = random.Random(12)
    with trio.fail_after(GUARD_S):
        link = LinkConditions(delay_s=0.001, jitter_s=0.002)
        async with open_memory_network(random.Random(13), default=link) as net:
            eps = [net.endpoint() for _ in range(n)]
            for ep in eps:
                for peer in rng.sample(eps, 3):
                    await ep.send_datagram(peer.address, b"gossip")
            await trio.sleep(1)
            stats = net.statistics()
            received = sum(ep.statistics().datagrams_received for ep in eps)
    assert stats.endpoints == n and stats.in_flight == 0
    assert received == stats.delivered == 3 * n


async def test_delivery_quantum_batches_deliveries(autojump_clock: trio.abc.Clock) -> None:
    times: list[float] = []
    link = LinkConditions(delay_s=0.0003, jitter_s=0.002)
    with trio.fail_after(GUARD_S):
        async with open_memory_network(
            random.Random(14),
            default=link,
            delivery_quantum_s=0.001,
            on_deliver=lambda t, *_: times.append(t),
        ) as net:
            a, b = net.endpoint(), net.endpoint()
            sent_at = trio.current_time()
            for p in numbered(200):
                await a.send_datagram(b.address, p)
            assert len(await drain(b)) == 200
    assert all(t >= sent_at + 0.0003 for t in times)
    assert all(abs(t / 0.001 - round(t / 0.001)) < 1e-6 for t in times)
    assert len(set(times)) <= 3  # 0.3..2.3 ms of delay fall in at most three 1 ms slots
