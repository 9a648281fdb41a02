"""Packet-level runs: signed agents measure the delivery latency the fleet's mesh then uses."""

from __future__ import annotations

import pytest

import sims
from sims.packet import measure_delivery
from sims.testpki import Pki


def test_virtual_delivery_is_measured_and_deterministic() -> None:
    a = measure_delivery("virtual", n=6, seed=3, trials=3)
    b = measure_delivery("virtual", n=6, seed=3, trials=3)
    assert a["samples"] == 5 * 3
    assert 0.0002 <= a["p50_s"] <= a["p99_s"] < 0.01  # the in-memory LAN's 0.2-1 ms one way
    assert a["samples_s"] == b["samples_s"]


@pytest.mark.slow
def test_real_udp_delivery_on_loopback() -> None:
    r = measure_delivery("real-network", n=4, seed=1, trials=3)
    assert r["samples"] == 3 * 3 and 0 < r["p50_s"] < 1.0


def test_the_report_says_where_the_mesh_latency_came_from() -> None:
    report = sims.run("node-deaths", nodes=6, duration_s=90, dt_s=0.25, mesh_latency="virtual",
                      baselines=("none", "mesh"))
    assert report["calibration"]["mesh_delivery"]["mode"] == "virtual"
    assert report["calibration"]["mesh_delivery"]["source"].startswith("measured in this run")
    assert report["baselines"]["mesh"]["limits_violated"] == 0


def test_the_test_pki_is_deterministic() -> None:
    assert Pki(seed=4).identity("a").certificate == Pki(seed=4).identity("a").certificate


def test_a_warm_start_begins_formed_and_then_runs_the_protocol() -> None:
    # every node knows every other from t=0; probes then flow, verified, with no suspicion,
    # and the peers' certificates arrive the ordinary way (none are preloaded)
    import trio
    import trio.testing

    from sims.packet import _agents

    n = 30

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nodes, _ = await _agents(n, 2, "virtual", nursery, warm=True)
            assert all(node.core.num_live == n for node in nodes)
            assert all(node.endpoint.trust.certificate(nodes[1 - (i > 0)].node_id) is None
                       for i, node in enumerate(nodes[:3]))
            await trio.sleep(6)
            stats = [node.core.statistics() for node in nodes]
            assert all(s.alive == n - 1 and s.suspect == 0 and s.suspicions == 0 for s in stats)
            assert sum(s.probes for s in stats) >= 5 * n and sum(s.probe_failures for s in stats) == 0
            known = sum(node.endpoint.trust.certificate(other.node_id) is not None
                        for node in nodes for other in nodes if other is not node)
            assert known >= 5 * n  # learned from the packets themselves
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_warm_snapshot_is_checked_against_the_ca() -> None:
    from protocol.errors import BadPacket
    from sims.packet import warm_snapshot
    from sims.testpki import NOW_MS

    pki = Pki(seed=5)
    idents = [pki.identity(f"w-{i}") for i in range(3)]
    addresses = [("mem", i) for i in range(3)]
    assert len(warm_snapshot(pki, idents, addresses, NOW_MS).ids) == 3
    with pytest.raises(BadPacket):  # certificates of another CA
        warm_snapshot(Pki(seed=6), idents, addresses, NOW_MS)
