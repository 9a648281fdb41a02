"""Real-time part of ``meshagent bench gossip``: how many agents one process keeps on time.

N ``MeshNode``s run in one trio process, each on its own loopback address (127.81.x.y) on
port 7946 with real UDP and TCP sockets, the ``lan`` preset, and full Ed25519 signing of
every packet and rumor. They join through one seed; once every node sees all the others,
a measurement window starts. A size *keeps its probe rounds on time* when, over the window,

* the 99th percentile of timer lateness (how far behind the core's deadline a tick ran)
  stays under 10% of the probe timeout (50 ms for ``lan``), and
* nobody was suspected (a late process makes others look dead: the failure to avoid).

Sizes grow until one fails; the largest that passed is ``realtime_max_nodes``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import trio

from meshagent.transport.udp import port_free
from protocol.identity import (
    Certificate,
    NodeIdentity,
    SigningKey,
    TrustStore,
    issuer_id_of,
    sign_certificate,
)
from protocol.swim import SwimConfig

PORT = 7946
LATENESS_LIMIT_FRACTION = 0.10


def _address(i: int) -> tuple[str, int]:
    return (f"127.81.{1 + i // 250}.{1 + i % 250}", PORT)


def _identities(n: int, now_ms: int) -> tuple[list[NodeIdentity], bytes]:
    rng = random.Random(7946)
    ca = SigningKey.generate(rng.randbytes(32))
    out = []
    for i in range(n):
        key = SigningKey.generate(rng.randbytes(32))
        cert = Certificate(
            serial=i + 1, issuer_id=issuer_id_of(ca.public_key), node_id=f"rt-{i:04d}",
            public_key=key.public_key, site_id="site-1", transformer_id=f"tx-{i % 4}", roles=(),
            not_before_ms=now_ms - 3_600_000, not_after_ms=now_ms + 3_600_000,
        )
        out.append(NodeIdentity.from_parts(key, sign_certificate(cert, ca), ca.public_key))
    return out, ca.public_key


async def _trial(n: int, window_s: float, converge_timeout_s: float) -> dict[str, Any]:
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.udp import UdpTransport

    config = SwimConfig.lan()
    idents, ca_pub = _identities(n, time.time_ns() // 1_000_000)
    transports = [await UdpTransport.bind(_address(i)) for i in range(n)]
    nodes = [
        MeshNode(ident, TrustStore([ca_pub]), t, config, boot_epoch=1,
                 seeds=[transports[0].address] if i else [], rng=random.Random(i))
        for i, (ident, t) in enumerate(zip(idents, transports, strict=True))
    ]
    result: dict[str, Any] = {"nodes": n}
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            t0 = trio.current_time()
            converged = False
            with trio.move_on_after(converge_timeout_s):
                while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observing from outside)
                    await trio.sleep(0.25)
                converged = True
            result["converge_s"] = round(trio.current_time() - t0, 2) if converged else None
            if converged:
                before = sum(node.core.statistics().suspicions for node in nodes)
                for node in nodes:
                    node.lateness.reset()
                await trio.sleep(window_s)
                stats = [node.statistics() for node in nodes]
                result["suspicions"] = sum(s.membership.suspicions for s in stats) - before
                result["lateness_p99_ms"] = round(1000 * max(s.tick_lateness_p99_s for s in stats), 2)
                result["lateness_max_ms"] = round(1000 * max(s.tick_lateness_max_s for s in stats), 2)
                result["packets_per_node_s"] = round(
                    sum(s.datagrams_sent for s in stats) / n / (trio.current_time() - t0), 1
                )
            nursery.cancel_scope.cancel()
    finally:
        for t in transports:
            await t.aclose()
    limit_ms = 1000 * config.probe_timeout_s * LATENESS_LIMIT_FRACTION
    result["on_time"] = bool(
        result.get("converge_s") is not None
        and result.get("suspicions", 1) == 0
        and result.get("lateness_p99_ms", 1e9) <= limit_ms
    )
    return result


def run_realtime(sizes: list[int], window_s: float, converge_timeout_s: float = 60.0) -> dict[str, Any]:
    """Trials at growing sizes; stops at the first that is not on time."""
    if not all(port_free(_address(i)[0], PORT) for i in range(max(sizes))):
        return {"realtime_max_nodes": None, "realtime_trials": [], "realtime_skipped": "port 7946 busy on 127.81.x.y"}
    trials = []
    best = 0
    for n in sizes:
        res = trio.run(_trial, n, window_s, converge_timeout_s)
        trials.append(res)
        if not res["on_time"]:
            break
        best = n
    return {"realtime_max_nodes": best, "realtime_trials": trials}
