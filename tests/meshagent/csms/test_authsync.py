"""Auth-list replication between mesh nodes: in-memory network, virtual time, real SQLite stores.

Each node keeps its list like a node without a CSMS client does (``StoredAuthList`` over a
``CsmsStore`` file); "the CSMS pushed a list" is an install on one node's keeper. The real
processes with a real CSMS are in ``tests/meshagent/csms/test_agents_authorize.py``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from meshagent.csms.authsync import AuthSync, AuthSyncSettings, RecordPublisher, StoredAuthList
from meshagent.csms.store import CsmsStore
from meshagent.mesh.node import MeshNode
from meshagent.transport.memory import LinkConditions, MemoryNetwork, open_memory_network
from protocol import codec
from protocol.authlist import (
    AuthEntry,
    AuthListChunk,
    AuthListRequest,
    AuthStatus,
    LocalAuthList,
    chunks_for,
)
from protocol.swim import SwimConfig
from protocol.wire import Sealer
from tests.conftest import NOW_MS

LOCAL = SwimConfig.local()


def wall_ms() -> int:
    return NOW_MS + int(trio.current_time() * 1000)


def a_list(version: int, n: int = 3, *, prefix: str = "T") -> LocalAuthList:
    entries = [AuthEntry("GOOD", "ISO14443"),
               AuthEntry("BLOCKED", "ISO14443", AuthStatus.BLOCKED),
               AuthEntry("OLD", "ISO14443", AuthStatus.ACCEPTED, expiry_ms=NOW_MS - 1)]
    entries += [AuthEntry(f"{prefix}{i:05d}", "ISO14443", AuthStatus.ACCEPTED, NOW_MS + 10**9) for i in range(n)]
    return LocalAuthList.build(version, entries)


@attrs.define
class Peer:
    node: MeshNode
    keeper: StoredAuthList
    sync: AuthSync
    path: Path


async def inline(fn, *args, limiter):
    """Run a store write in the task: on the autojump clock a worker thread lets virtual time
    leap while it works (under load, past every timeout), so these tests keep writes inline."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def wait_until(predicate, *, timeout_s: float, step_s: float = 0.05) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls state that many tasks change)
            await trio.sleep(step_s)


def make_node(pki, net: MemoryNetwork, name: str, seeds, seed: int) -> MeshNode:
    return MeshNode(pki.identity(name), pki.trust(), net.endpoint(), LOCAL, boot_epoch=1, seeds=seeds,
                    wall_clock_ms=wall_ms, rng=random.Random(seed))


@asynccontextmanager
async def mesh(pki, tmp: Path, n: int, *, net: MemoryNetwork, settings: AuthSyncSettings | None = None,
               extra: list[MeshNode] = ()) -> AsyncIterator[list[Peer]]:
    peers: list[Peer] = []
    stores: list[CsmsStore] = []
    try:
        async with trio.open_nursery() as nursery:
            for node in extra:
                await nursery.start(node.run)
            for i in range(n):
                seeds = [extra[0].address] if extra else ([peers[0].node.address] if peers else [])
                node = make_node(pki, net, f"n{i}", seeds, 100 + i)
                path = tmp / f"n{i}.sqlite3"
                store = CsmsStore(path)
                stores.append(store)
                keeper = StoredAuthList(store, wall_clock_ms=wall_ms, offload=inline)
                sync = AuthSync(node, keeper, RecordPublisher(node), settings=settings, rng=random.Random(i))
                await nursery.start(node.run)
                await nursery.start(sync.run)
                peers.append(Peer(node, keeper, sync, path))
            await wait_until(lambda: all(len(p.node.members()) == n + len(extra) - 1 for p in peers), timeout_s=30)
            yield peers
            nursery.cancel_scope.cancel()
    finally:
        for s in stores:
            s.close()


def same_list(peers: list[Peer], wanted: LocalAuthList) -> bool:
    return all(p.keeper.auth_list.summary() == wanted.summary() for p in peers)


async def test_a_list_pushed_to_one_node_reaches_every_node_durably_over_a_lossy_network(pki, autojump_clock, tmp_path):
    lossy = LinkConditions(loss=0.1, delay_s=0.002, jitter_s=0.002)
    pushed = a_list(3, 247)  # 250 entries: 25 chunks, some of them lost on the way
    async with open_memory_network(random.Random(7), default=lossy) as net, mesh(pki, tmp_path, 4, net=net) as peers:
        assert all(p.node.record(p.node.node_id) is None for p in peers)  # nothing to say yet
        await peers[0].keeper.install_auth_list(pushed)  # what a SendLocalList from the CSMS does
        await wait_until(lambda: same_list(peers, pushed), timeout_s=60)

        # then advertised in every record (signed by its author), as seen by every peer
        def advertised_everywhere() -> bool:
            records = [p.node.record(q.node.node_id) for p in peers for q in peers if q is not p]
            return all(r is not None and (r.auth_list_version, r.auth_list_hash) == (3, pushed.list_hash)
                       for r in records)

        await wait_until(advertised_everywhere, timeout_s=30)
        last = peers[3]
        good = await last.keeper.authorize("GOOD")
        assert (good.accepted, good.status, good.source) == (True, "Accepted", "local_list")
        assert (await last.keeper.authorize("T00246")).accepted
        assert (await last.keeper.authorize("BLOCKED")).status == "Blocked"
        assert not (await last.keeper.authorize("BLOCKED")).accepted
        assert (await last.keeper.authorize("OLD")).status == "Expired"
        assert not (await last.keeper.authorize("OLD")).accepted
        unknown = await last.keeper.authorize("NOBODY")
        assert (unknown.accepted, unknown.status, unknown.source) == (False, "Unknown", "unavailable")
        stats = [p.sync.statistics() for p in peers]
        assert sum(s.pulls_completed for s in stats) == 3
        assert sum(s.transfers_refused for s in stats) == 0
        assert sum(s.requests_answered for s in stats) >= 3
    # durable: each store reloads the list, hash-checked
    for p in peers:
        with CsmsStore(p.path) as store:
            assert store.load_auth_list().summary() == pushed.summary()


async def test_the_newest_list_wins_everywhere_and_an_older_one_is_never_pulled(pki, autojump_clock, tmp_path):
    async with open_memory_network(random.Random(8)) as net, mesh(pki, tmp_path, 4, net=net) as peers:
        v2, v5 = a_list(2, 5, prefix="A"), a_list(5, 7, prefix="B")
        await peers[1].keeper.install_auth_list(v2)
        await peers[2].keeper.install_auth_list(v5)
        await wait_until(lambda: same_list(peers, v5), timeout_s=30)
        # a newer differential list from "the CSMS" on another node follows
        v6, _ = v5.apply_differential(6, [AuthEntry("NEW", "ISO14443")], [("GOOD", "ISO14443")])
        await peers[3].keeper.install_auth_list(v6)
        await wait_until(lambda: same_list(peers, v6), timeout_s=30)
        assert (await peers[0].keeper.authorize("NEW")).accepted
        assert not (await peers[0].keeper.authorize("GOOD")).accepted
        await trio.sleep(10)
        # nobody ever asked for, or took, a list older than its own
        assert all(p.keeper.auth_list.version == 6 for p in peers)
        assert all(p.sync.statistics().transfers_refused == 0 for p in peers)


def liar(pki, net: MemoryNetwork, name: str, advertised: LocalAuthList, served: list[AuthListChunk]) -> MeshNode:
    """A node that advertises ``advertised`` and answers every request with ``served``."""
    node = make_node(pki, net, name, [], 900)

    def on_request(_sender: str, source, _msg: AuthListRequest) -> None:
        async def serve() -> None:
            for chunk in served:
                await node.send(source, chunk)

        node.spawn(serve)

    node.on_message(AuthListRequest, on_request)
    return node


async def test_a_peer_whose_chunks_do_not_match_its_advertised_hash_is_refused_and_counted(pki, autojump_clock, tmp_path):
    genuine = a_list(9, 30)
    forged_entries = a_list(9, 30, prefix="X")  # the same version, other tokens
    # chunks claiming the genuine (version, hash) but carrying other entries
    forged = [attrs.evolve(c, list_hash=genuine.list_hash) for c in chunks_for(forged_entries)]
    async with open_memory_network(random.Random(9)) as net:
        bad = liar(pki, net, "liar", genuine, forged)
        async with mesh(pki, tmp_path, 2, net=net, extra=[bad]) as peers:
            RecordPublisher(bad).set_auth_summary(genuine.summary())
            await wait_until(lambda: all(p.sync.statistics().transfers_refused == 1 for p in peers), timeout_s=30)
            assert all(p.keeper.auth_list.version == 0 for p in peers)
            assert all(p.sync.statistics().pulls_completed == 0 for p in peers)
            # a forged token never became authorized anywhere
            assert not any([(await p.keeper.authorize("X00001")).accepted for p in peers])
            # refused for that list for a while: not asked again at every record
            await trio.sleep(30)
            assert all(p.sync.statistics().transfers_refused == 1 for p in peers)
            # the genuine list arrives on one node (from the CSMS): the other pulls it from there
            await peers[0].keeper.install_auth_list(genuine)
            await wait_until(lambda: same_list(peers, genuine), timeout_s=30)
            assert peers[1].sync.statistics().transfers_refused == 1


async def test_chunks_of_another_list_than_advertised_are_refused(pki, autojump_clock, tmp_path):
    advertised = a_list(4, 5)
    other = a_list(4, 5, prefix="Z")  # self-consistent, but not the list the record names
    async with open_memory_network(random.Random(10)) as net:
        bad = liar(pki, net, "liar", advertised, list(chunks_for(other)))
        async with mesh(pki, tmp_path, 1, net=net, extra=[bad]) as peers:
            RecordPublisher(bad).set_auth_summary(advertised.summary())
            await wait_until(lambda: peers[0].sync.statistics().transfers_refused == 1, timeout_s=30)
            assert peers[0].keeper.auth_list.version == 0


async def test_a_silent_peer_times_out_and_the_next_one_is_asked(pki, autojump_clock, tmp_path):
    wanted = a_list(2, 40)
    settings = AuthSyncSettings(transfer_timeout_s=3.0, request_interval_s=1.0)
    async with open_memory_network(random.Random(11)) as net:
        silent = make_node(pki, net, "silent", [], 901)  # advertises, never answers
        async with mesh(pki, tmp_path, 2, net=net, extra=[silent], settings=settings) as peers:
            RecordPublisher(silent).set_auth_summary(wanted.summary())
            t0 = trio.current_time()
            await wait_until(lambda: peers[1].sync.statistics().pulls_timed_out >= 1, timeout_s=30)
            assert trio.current_time() - t0 < 3.0 + 2.0  # the timeout, plus gossip delay
            assert peers[1].keeper.auth_list.version == 0
            await peers[0].keeper.install_auth_list(wanted)
            await wait_until(lambda: same_list(peers, wanted), timeout_s=30)
            assert peers[1].sync.statistics().pulls_completed == 1


def test_the_largest_chunk_fits_one_datagram_sealed_with_a_certificate(pki):
    ident = pki.identity("n" * 32)
    longest = [AuthEntry(f"{i:036d}", "t" * 20, AuthStatus.NOT_ALLOWED_TYPE_EVSE, 2**53) for i in range(10)]
    [chunk] = chunks_for(LocalAuthList.build(2**31 - 1, longest))
    sealer = Sealer(ident, 2**32 - 1)
    bare = sealer.seal(chunk, NOW_MS)
    assert len(bare) < 1400, len(bare)
    assert codec.decode_untrusted(AuthListChunk, codec.encode(chunk)) == chunk


async def test_one_record_carries_both_the_offer_and_the_list_summary(pki, autojump_clock, tmp_path):
    listed = a_list(5)
    async with open_memory_network(random.Random(12)) as net:
        node = make_node(pki, net, "solo", [], 902)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            publisher = RecordPublisher(node)
            assert publisher.set_auth_summary(LocalAuthList().summary()) is None  # no list, no offer: silent
            assert node.record("solo") is None
            first = publisher.set_auth_summary(listed.summary())  # a list and no devices: zero offer
            assert (first.auth_list_version, first.auth_list_hash, first.discharge_available_w) == (5, listed.list_hash, 0.0)
            assert publisher.set_auth_summary(listed.summary()) is None  # unchanged: not republished
            offer = publisher.set_offer(discharge_available_w=7000.0, energy_above_min_soc_wh=15600.0, soc=0.6,
                                        thermal_derating=0.0, faults=())
            assert (offer.discharge_available_w, offer.auth_list_version, offer.auth_list_hash) == (7000.0, 5, listed.list_hash)
            assert offer.version == first.version + 1
            again = publisher.set_auth_summary(a_list(6).summary())
            assert (again.discharge_available_w, again.soc, again.auth_list_version) == (7000.0, 0.6, 6)
            nursery.cancel_scope.cancel()
