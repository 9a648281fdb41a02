"""Zeroconf discovery: for real over multicast on loopback, and between network namespaces.

Loopback: two ``Discovery`` instances in this process, both on interface 127.0.0.1 (mDNS
multicast looped back on ``lo``, nothing leaves the host). Namespaces: one process per
namespace on a private bridge (``tests/netns.py``). Other test runs on this host may
advertise on loopback at the same time, so the tests wait for the peers they expect and
ignore any others.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

import attrs
import pytest
import trio

from meshagent.mesh.discovery import (
    DiscoveredPeer,
    Discovery,
    open_discovery,
    peer_from_service_info_untrusted,
)
from protocol.errors import BadPacket
from tests.netns import NetnsLab

GUARD_S = 15
TAG = f"t{os.getpid()}"


async def wait_for_peer(discovery: Discovery, node_id: str) -> DiscoveredPeer:
    async for peer in discovery.peers:  # bounded by the caller's fail_after
        if peer.node_id == node_id:
            return peer
    raise AssertionError("discovery ended")


@pytest.mark.slow
async def test_two_nodes_find_each_other_on_loopback() -> None:
    a_id, b_id = f"{TAG}-a", f"{TAG}-b"
    a_addr, b_addr = ("127.77.9.1", 7946), ("127.77.9.2", 7946)
    with trio.fail_after(GUARD_S):
        found: dict[str, DiscoveredPeer] = {}

        async def look(d: Discovery, want: str) -> None:
            found[want] = await wait_for_peer(d, want)

        async with (
            open_discovery(a_id, a_addr, interfaces=["127.0.0.1"]) as a,
            open_discovery(b_id, b_addr, interfaces=["127.0.0.1"]) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(look, a, b_id)
            nursery.start_soon(look, b, a_id)
    assert found[b_id] == DiscoveredPeer(b_id, b_addr)
    assert found[a_id] == DiscoveredPeer(a_id, a_addr)
    assert a.statistics().found >= 1 and b.statistics().found >= 1
    # after the block: the channel ends (after any peers of other runs still queued)...
    with pytest.raises(trio.EndOfChannel):
        for _ in range(1000):
            a.peers.receive_nowait()
    # ...and zeroconf's event loop threads were joined
    assert not [t for t in threading.enumerate() if "_run_loop" in t.name]


@attrs.define
class FakeInfo:
    properties: dict[bytes, bytes | None]
    port: Any = 7946
    addresses: list[str] = attrs.Factory(lambda: ["10.0.0.5"])

    def parsed_addresses(self) -> list[str]:
        return self.addresses


def test_service_info_parsing() -> None:
    good = {b"node_id": b"charger-7", b"v": b"1"}
    assert peer_from_service_info_untrusted(FakeInfo(good)) == DiscoveredPeer(
        "charger-7", ("10.0.0.5", 7946)
    )
    v6 = FakeInfo(good, addresses=["10.0.0.5", "fd00::5"])
    assert peer_from_service_info_untrusted(v6, family=socket.AF_INET6).address == ("fd00::5", 7946)
    bad = [
        FakeInfo({b"node_id": b"charger-7"}),  # no format version
        FakeInfo({b"node_id": b"charger-7", b"v": b"2"}),
        FakeInfo({b"v": b"1"}),  # no node id
        FakeInfo({b"node_id": b"bad id!", b"v": b"1"}),
        FakeInfo({b"node_id": b"x" * 33, b"v": b"1"}),
        FakeInfo({b"node_id": b"\xff", b"v": b"1"}),
        FakeInfo({b"node_id": None, b"v": b"1"}),
        FakeInfo(good, port=0),
        FakeInfo(good, port="7946"),
        FakeInfo(good, addresses=[]),
        FakeInfo(good, addresses=["fd00::5"]),  # no IPv4 address
        FakeInfo(good, addresses=["not-an-ip"]),
    ]
    for info in bad:
        with pytest.raises(BadPacket):
            peer_from_service_info_untrusted(info)


def test_node_id_is_checked() -> None:
    with pytest.raises(ValueError, match="node id"):
        Discovery("has space", ("127.0.0.1", 7946))


DISCOVER = """
import sys, trio
from meshagent.mesh.discovery import open_discovery

async def main():
    me, address, want = sys.argv[1], sys.argv[2], sys.argv[3]
    with trio.move_on_after(10):
        async with open_discovery(me, (address, 7946), interfaces=[address]) as d:
            async for peer in d.peers:
                if peer.node_id == want:
                    print(peer.node_id, peer.address[0], peer.address[1], flush=True)
                    # keep answering until the other side has found us too
                    await trio.sleep(float(sys.argv[4]))
                    return
    print("not found", flush=True)

trio.run(main)
"""


@pytest.mark.root
@pytest.mark.slow
def test_discovery_between_namespaces() -> None:
    with NetnsLab() as lab:
        a, b = lab.node("a"), lab.node("b")
        procs = {
            n.name: lab.popen(
                n,
                [
                    sys.executable,
                    "-c",
                    DISCOVER,
                    f"node-{n.name}",
                    n.address,
                    f"node-{o.name}",
                    "1.5",
                ],
                stdout=-1,
                stderr=-1,
            )
            for n, o in ((a, b), (b, a))
        }
        out = {name: p.communicate(timeout=GUARD_S) for name, p in procs.items()}
        for name, (_, stderr) in out.items():
            assert procs[name].returncode == 0, stderr.decode()
            assert stderr == b"", stderr.decode()
        assert out["a"][0].decode().split() == ["node-b", b.address, "7946"]
        assert out["b"][0].decode().split() == ["node-a", a.address, "7946"]
