"""Mesh nodes on the in-memory network in virtual time, and on real UDP sockets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from meshagent.mesh.node import MeshNode
from meshagent.transport.memory import LinkConditions, MemoryNetwork, open_memory_network
from meshagent.transport.udp import UdpTransport
from protocol.identity import Revocation, sign_revocation
from protocol.messages import Revoke
from protocol.state import Scope
from protocol.swim import Delivered, MemberStatus, SwimConfig
from tests.conftest import NOW_MS

LOCAL = SwimConfig.local()


def wall_ms() -> int:
    return NOW_MS + int(trio.current_time() * 1000)


def statuses(node: MeshNode) -> dict[str, MemberStatus]:
    return {m.node_id: m.status for m in node.members()}


async def wait_until(predicate, *, timeout_s: float, step_s: float = 0.05) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls state that many tasks change)
            await trio.sleep(step_s)


@asynccontextmanager
async def mesh(pki, n: int, *, net: MemoryNetwork, sites=None, seed: int = 0) -> AsyncIterator[list[MeshNode]]:
    idents = [
        pki.identity(f"n{i:02d}", site_id=(sites[i] if sites else "site-1"), transformer_id="tx-1")
        for i in range(n)
    ]
    nodes: list[MeshNode] = []
    async with trio.open_nursery() as nursery:
        for i, ident in enumerate(idents):
            transport = net.endpoint()
            seeds = [nodes[0].address] if nodes else []
            node = MeshNode(
                ident, pki.trust(), transport, LOCAL, boot_epoch=1, seeds=seeds,
                wall_clock_ms=wall_ms, rng=random.Random(seed * 1000 + i),
            )
            nodes.append(node)
            await nursery.start(node.run)
        yield nodes
        nursery.cancel_scope.cancel()


async def test_nodes_join_through_one_seed_and_converge(pki, autojump_clock):
    async with open_memory_network(random.Random(1)) as net, mesh(pki, 8, net=net) as nodes:
        names = {n.node_id for n in nodes}
        await wait_until(
            lambda: all(set(statuses(n)) == names - {n.node_id} and set(statuses(n).values()) == {MemberStatus.ALIVE} for n in nodes),
            timeout_s=30,
        )
        # strangers: every certificate was learned over the wire
        assert all(n.endpoint.trust.statistics().certificates == 8 for n in nodes)


async def test_a_crashed_node_is_declared_dead_everywhere(pki, autojump_clock):
    async with open_memory_network(random.Random(2)) as net, mesh(pki, 6, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 5 for n in nodes), timeout_s=30)
        victim = nodes[3]
        victim.stop()
        await victim.endpoint.transport.aclose()
        t0 = trio.current_time()
        others = [n for n in nodes if n is not victim]
        await wait_until(lambda: all(statuses(n).get(victim.node_id) is MemberStatus.DEAD for n in others), timeout_s=30)
        # SWIM with the local preset: detection within a few probe periods plus suspicion
        assert trio.current_time() - t0 < 10
        assert all(set(statuses(n).values()) == {MemberStatus.ALIVE, MemberStatus.DEAD} for n in others)


async def test_graceful_leave_is_seen_as_left(pki, autojump_clock):
    async with open_memory_network(random.Random(3)) as net, mesh(pki, 5, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 4 for n in nodes), timeout_s=30)
        await nodes[2].leave()
        await wait_until(lambda: all(statuses(n).get("n02") is MemberStatus.LEFT for n in nodes if n is not nodes[2]), timeout_s=10)


async def test_no_false_deaths_under_20_percent_loss(pki, autojump_clock):
    lossy = LinkConditions(loss=0.2, delay_s=0.002, jitter_s=0.002)
    async with open_memory_network(random.Random(4), default=lossy) as net, mesh(pki, 8, net=net, seed=4) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 7 for n in nodes), timeout_s=60)
        deaths: list[str] = []
        channels = [n.subscribe() for n in nodes]

        async def watch(ch):
            async for ev in ch:
                if type(ev).__name__ == "MemberDead":
                    deaths.append(ev.member.node_id)

        async with trio.open_nursery() as watchers:
            for ch in channels:
                watchers.start_soon(watch, ch)
            # half a virtual minute: 150 probe rounds at 0.2 s, 1,200 probes in all through the
            # whole signed shell (the core alone runs 20 nodes for two minutes at the same loss:
            # tests/protocol/swim/test_membership.py)
            await trio.sleep(30)
            watchers.cancel_scope.cancel()
        assert deaths == []
        assert all(set(statuses(n).values()) == {MemberStatus.ALIVE} for n in nodes)


async def test_urgent_broadcast_reaches_exactly_its_scope(pki, autojump_clock):
    sites = ["north", "north", "north", "south", "south"]
    async with open_memory_network(random.Random(5)) as net, mesh(pki, 5, net=net, sites=sites) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 4 for n in nodes), timeout_s=30)
        channels = [n.subscribe() for n in nodes]
        sent = nodes[0].urgent(Revoke(revocation=b"not a real revocation"), Scope.site("north"))
        assert sent == 2
        await trio.sleep(2)
        got = []
        for node, ch in zip(nodes, channels, strict=True):
            delivered = []
            while True:
                try:
                    ev = ch.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(ev, Delivered):
                    delivered.append(ev)
            got.append((node.node_id, len(delivered)))
        assert got == [("n00", 0), ("n01", 1), ("n02", 1), ("n03", 0), ("n04", 0)]


async def test_revocation_spreads_and_removes_the_member(pki, autojump_clock):
    async with open_memory_network(random.Random(6)) as net, mesh(pki, 6, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 5 for n in nodes), timeout_s=30)
        victim = nodes[5]
        record = sign_revocation(
            Revocation(pki.issuer_id, victim.node_id, victim.identity.certificate.serial, NOW_MS), pki.ca
        )
        assert nodes[0].revoke(record) == victim.node_id
        others = nodes[:5]
        await wait_until(lambda: all(victim.node_id not in statuses(n) for n in others), timeout_s=10)
        assert all(n.endpoint.trust.is_revoked(victim.identity.certificate) for n in others)
        # the revoked node keeps talking; nobody lets it back in
        await trio.sleep(10)
        assert all(victim.node_id not in statuses(n) for n in others)
        assert sum(n.statistics().dropped["signer_revoked"] for n in others) > 0


async def test_three_nodes_on_real_udp(pki):
    """Real sockets on loopback, each node on its own 127.x address (port 7946 if free)."""
    nodes: list[MeshNode] = []
    transports = []
    for i in range(3):
        try:
            t = await UdpTransport.bind((f"127.78.0.{i + 1}", 7946))
        except Exception:
            t = await UdpTransport.bind((f"127.78.0.{i + 1}", 0))
        transports.append(t)
    async with trio.open_nursery() as nursery:
        for i, t in enumerate(transports):
            node = MeshNode(
                pki.identity(f"udp-{i}"), pki.trust(), t, LOCAL, boot_epoch=1,
                seeds=[transports[0].address] if i else [], wall_clock_ms=lambda: NOW_MS,
            )
            nodes.append(node)
            await nursery.start(node.run)
        await wait_until(lambda: all(len(statuses(n)) == 2 for n in nodes), timeout_s=10)
        assert all(set(statuses(n).values()) == {MemberStatus.ALIVE} for n in nodes)
        nursery.cancel_scope.cancel()
    for t in transports:
        await t.aclose()
    # the datagrams went out on the real sockets by the no-wait path, every one counted
    assert all(t.statistics().datagrams_sent > 0 for t in transports)
    assert sum(n.statistics().datagrams_sent for n in nodes) == sum(t.statistics().datagrams_sent for t in transports)


async def test_a_transport_that_never_takes_a_datagram_at_once(pki, autojump_clock):
    """When the socket would block (``send_datagram_nowait`` says False), the node sends from
    a task that waits; when nothing is waiting, it receives one datagram at a time."""
    async with open_memory_network(random.Random(3)) as net:
        real = net.endpoint
        refused = []

        def endpoint(*args, **kwargs):
            t = real(*args, **kwargs)

            def would_block(destination, packet):
                refused.append(destination)
                return False

            t.send_datagram_nowait = would_block
            t.receive_datagram_nowait = lambda: None
            return t

        net.endpoint = endpoint
        async with mesh(pki, 4, net=net) as nodes:
            await wait_until(lambda: all(len(statuses(n)) == 3 for n in nodes), timeout_s=30)
            assert refused
            assert all(n.statistics().datagrams_sent > 0 for n in nodes)


async def test_other_layers_get_their_unicast_messages(pki, autojump_clock):
    from protocol.authlist import AuthListRequest

    async with open_memory_network(random.Random(7)) as net, mesh(pki, 2, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 1 for n in nodes), timeout_s=30)
        got = []
        nodes[1].on_message(AuthListRequest, lambda sender, source, msg: got.append((sender, source, msg)))
        request = AuthListRequest(have_version=3, have_hash=b"\x00" * 32)
        await nodes[0].send(nodes[1].address, request)
        await wait_until(lambda: got, timeout_s=5)
        assert got == [("n00", nodes[0].address, request)]
        with pytest.raises(ValueError, match="handled by the node itself"):
            nodes[1].on_message(Revoke, lambda *a: None)


async def test_a_join_storm_converges_in_seconds_on_the_lan_preset(pki, autojump_clock):
    """30 strangers join one seed at the same instant: certificates must not hold them up.

    Before packets from unknown signers were held (and while certificate answers were
    limited to one per second per address) this took 13 to 23 virtual seconds.
    """
    lan = SwimConfig.lan()
    async with open_memory_network(random.Random(11), default=LinkConditions(delay_s=0.0005)) as net:
        nodes: list[MeshNode] = []
        async with trio.open_nursery() as nursery:
            for i in range(30):
                node = MeshNode(pki.identity(f"s{i:02d}"), pki.trust(), net.endpoint(), lan, boot_epoch=1,
                                seeds=[nodes[0].address] if nodes else [], wall_clock_ms=wall_ms,
                                rng=random.Random(i))
                nodes.append(node)
                await nursery.start(node.run)
            t0 = trio.current_time()
            await wait_until(lambda: all(n.core.num_live == 30 for n in nodes), timeout_s=60)
            assert trio.current_time() - t0 < 5.0
            nursery.cancel_scope.cancel()


async def test_a_stalled_process_counts_late_wakeups(pki, autojump_clock):
    async with open_memory_network(random.Random(12)) as net, mesh(pki, 2, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 1 for n in nodes), timeout_s=30)
        await trio.sleep(1.0)
        assert nodes[0].statistics().late_wakeups == 0  # the autojump clock wakes ticks on time
        # the process stalls for 10 probe timeouts: the next tick runs that far behind
        autojump_clock.jump(10 * LOCAL.probe_timeout_s)
        await trio.sleep(0.05)
        stats = nodes[0].statistics()
        assert stats.late_wakeups >= 1
        assert stats.tick_lateness_max_s >= 5 * LOCAL.probe_timeout_s


async def test_events_a_full_subscriber_did_not_take_are_counted(pki, autojump_clock):
    async with open_memory_network(random.Random(13)) as net, mesh(pki, 4, net=net) as nodes:
        slow = nodes[0].subscribe(buffer=1)
        every = nodes[0].subscribe(buffer=4096)
        await wait_until(lambda: all(len(statuses(n)) == 3 for n in nodes), timeout_s=30)
        seen = []
        while True:
            try:
                seen.append(every.receive_nowait())
            except trio.WouldBlock:
                break
        assert len(seen) >= 2  # joins (the first may have come before we subscribed)
        assert nodes[0].statistics().subscriber_events_dropped == len(seen) - 1  # the slow one took one
        assert slow.receive_nowait() == seen[0]


async def test_certificates_that_do_not_parse_or_verify_are_counted(pki, autojump_clock):
    from protocol.messages import Certificates

    other_ca = type(pki)(seed=99)
    stranger = other_ca.identity("stranger")
    async with open_memory_network(random.Random(14)) as net, mesh(pki, 2, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 1 for n in nodes), timeout_s=30)
        assert nodes[1].statistics().certificates_refused == 0
        junk = Certificates(certificates=(b"not a certificate", stranger.certificate_bytes))
        await nodes[0].send(nodes[1].address, junk)
        await wait_until(lambda: nodes[1].statistics().certificates_refused == 2, timeout_s=5)
        assert nodes[1].endpoint.trust.certificate("stranger") is None


LAN = SwimConfig.lan()


async def test_a_node_started_before_its_seed_joins_soon_after_it_answers(pki, autojump_clock):
    """Issue 12: the joiner's refused connections must not hold back its 1/2/4 s retries."""
    async with open_memory_network(random.Random(12)) as net, trio.open_nursery() as nursery:
        seed_address = ("10.9.9.1", 7946)
        early = MeshNode(pki.identity("early"), pki.trust(), net.endpoint(), LAN, boot_epoch=1,
                         seeds=[seed_address], wall_clock_ms=wall_ms, rng=random.Random(1))
        await nursery.start(early.run)
        await trio.sleep(7.0)
        assert early.members() == []
        seed = MeshNode(pki.identity("seed"), pki.trust(), net.endpoint(seed_address), LAN,
                        boot_epoch=1, wall_clock_ms=wall_ms, rng=random.Random(2))
        await nursery.start(seed.run)
        started = trio.current_time()
        await wait_until(lambda: len(statuses(early)) == 1 and len(statuses(seed)) == 1, timeout_s=30, step_s=0.01)
        assert trio.current_time() - started <= 2.1
        nursery.cancel_scope.cancel()


async def test_nodes_leaving_together_take_about_1_s(pki, autojump_clock):
    """Issue 12: the last members leaving at once used to wait out a 5 s leave timeout."""
    async with open_memory_network(random.Random(13)) as net, mesh(pki, 3, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 2 for n in nodes), timeout_s=30)
        took: list[float] = []

        async def leave(node: MeshNode) -> None:
            start = trio.current_time()
            await node.leave()
            took.append(trio.current_time() - start)

        async with trio.open_nursery() as leaving:
            for node in nodes:
                leaving.start_soon(leave, node)
        assert len(took) == 3 and max(took) <= LOCAL.leave_timeout_s + 0.05


async def _bind_free(host: str) -> tuple[str, int]:
    t = await UdpTransport.bind((host, 0))
    address = t.address
    await t.aclose()
    return address


async def test_join_before_the_seed_and_leave_together_on_real_udp(pki):
    """Both issue-12 behaviours over real sockets on loopback, with the LAN preset's timing
    where it matters (a reliable timeout of 10 s that the old code waited out)."""
    config = SwimConfig.local(reliable_timeout_s=10.0, join_retry_max_s=1.0, leave_timeout_s=1.0)
    seed_address = await _bind_free("127.78.9.1")
    early_t = await UdpTransport.bind(("127.78.9.2", 0))
    async with trio.open_nursery() as nursery:
        early = MeshNode(pki.identity("udp-early"), pki.trust(), early_t, config, boot_epoch=1,
                         seeds=[seed_address], wall_clock_ms=lambda: NOW_MS)
        await nursery.start(early.run)
        await trio.sleep(1.5)  # several refused joins
        assert early.members() == []
        seed_t = await UdpTransport.bind(seed_address)
        seed = MeshNode(pki.identity("udp-seed"), pki.trust(), seed_t, config, boot_epoch=1,
                        wall_clock_ms=lambda: NOW_MS)
        await nursery.start(seed.run)
        started = trio.current_time()
        await wait_until(lambda: len(statuses(early)) == 1 and len(statuses(seed)) == 1, timeout_s=10, step_s=0.01)
        join_s = trio.current_time() - started
        assert join_s <= 1.2, join_s
        took: list[float] = []

        async def leave(node: MeshNode) -> None:
            start = trio.current_time()
            await node.leave()
            took.append(trio.current_time() - start)

        async with trio.open_nursery() as leaving:
            leaving.start_soon(leave, early)
            leaving.start_soon(leave, seed)
        assert len(took) == 2 and max(took) <= 1.2, took
        print(f"join {join_s:.3f} s after the seed answered; leave {max(took):.3f} s")
        nursery.cancel_scope.cancel()
    for t in (early_t, seed_t):
        await t.aclose()


async def test_a_new_client_rides_on_the_mesh_through_the_delegate_seam(pki, autojump_clock):
    """What the allocation will do: add a Delegate to a running node and hear the members."""
    from protocol.messages import Revoke
    from protocol.swim import Delegate, MemberLeft, Ping

    class Watcher(Delegate):
        def __init__(self) -> None:
            self.left: set[str] = set()

        def member_event(self, event, now):
            if isinstance(event, MemberLeft):
                self.left.add(event.member.node_id)

    async with open_memory_network(random.Random(14)) as net, mesh(pki, 3, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 2 for n in nodes), timeout_s=30)
        watcher = Watcher()
        nodes[0].add_delegate(watcher)
        await nodes[2].leave()
        await wait_until(lambda: watcher.left == {"n02"}, timeout_s=10)

        for cls in (Revoke, Ping):
            thief = Delegate()
            thief.message_types = frozenset({cls})
            with pytest.raises(ValueError):
                nodes[1].add_delegate(thief)


async def test_a_ping_behind_a_backlog_is_answered_first(pki, autojump_clock):
    """Probes are answered as soon as they are read off the socket, ahead of the gossip
    read with them (memberlist's packet handler does the same); what waits is bounded."""
    from meshagent.mesh.node import WAITING_LIMIT
    from protocol.swim import Ack, Ping
    from protocol.wire import MAGIC_VERSION, Opener, Sealer

    async with open_memory_network(random.Random(5)) as net:
        b_ident, a_ident = pki.identity("busy-b"), pki.identity("prober-a")
        b = MeshNode(b_ident, pki.trust(), net.endpoint(receive_queue=4096), LOCAL, boot_epoch=1,
                     wall_clock_ms=wall_ms, rng=random.Random(1))
        a = net.endpoint()
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            garbage = bytes([MAGIC_VERSION, 0x14]) + bytes(20)  # gossip-typed, truncated: dropped once read
            for _ in range(WAITING_LIMIT + 100):
                a.send_datagram_nowait(b.address, garbage)
            ping = Sealer(a_ident, 1).seal(Ping(seq=7, target_id="busy-b"), wall_ms(), attach_certificate=True)
            a.send_datagram_nowait(b.address, ping)
            with trio.fail_after(5):
                while True:
                    got = await a.receive_datagram()
                    env = Opener(pki.trust()).open_untrusted(got.packet, wall_ms())
                    if isinstance(env.message, Ack):
                        break
            # answered while most of the garbage read before it was still waiting
            assert b.endpoint.statistics().dropped["truncated"] < WAITING_LIMIT
            await trio.testing.wait_all_tasks_blocked()
            dropped = b.statistics().dropped
            assert dropped["receive_backlog_full"] > 0
            assert dropped["receive_backlog_full"] + dropped["truncated"] == WAITING_LIMIT + 100
            assert env.message.seq == 7
            nursery.cancel_scope.cancel()


async def test_a_first_message_type_is_handled_ahead_of_the_backlog(pki, autojump_clock):
    """A client's time-critical unicast (the allocation's ACK) registered with ``first=True``
    is handled as it is read, like a probe, not after the gossip read before it."""
    from meshagent.mesh.node import WAITING_LIMIT
    from protocol.allocation.messages import Ack as AllocAck
    from protocol.state import Scope
    from protocol.wire import MAGIC_VERSION, Sealer

    async with open_memory_network(random.Random(6)) as net:
        b_ident, a_ident = pki.identity("detector-b"), pki.identity("member-a")
        b = MeshNode(b_ident, pki.trust(), net.endpoint(receive_queue=4096), LOCAL, boot_epoch=1,
                     wall_clock_ms=wall_ms, rng=random.Random(1))
        truncated_when_handled: list[int] = []
        b.on_message(AllocAck, lambda *_: truncated_when_handled.append(b.endpoint.statistics().dropped["truncated"]),
                     first=True)
        a = net.endpoint()
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            garbage = bytes([MAGIC_VERSION, 0x14]) + bytes(20)
            for _ in range(WAITING_LIMIT):
                a.send_datagram_nowait(b.address, garbage)
            ack = AllocAck(Scope.site("s"), 1, 1, 100.0, 1000.0, 1.0, "tx-1")
            a.send_datagram_nowait(b.address, Sealer(a_ident, 1).seal(ack, wall_ms(), attach_certificate=True))
            await trio.testing.wait_all_tasks_blocked()
            assert len(truncated_when_handled) == 1
            assert truncated_when_handled[0] < WAITING_LIMIT  # most of the backlog still waited
            nursery.cancel_scope.cancel()
