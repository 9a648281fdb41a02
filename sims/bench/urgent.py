"""``meshagent bench urgent``: one urgent broadcast to every member, over real UDP on loopback.

The allocation will send its PLAN with ``MeshNode.urgent(message, scope)``: one signed
datagram straight to every live member of the scope, plus gossip. Its target is "spike
detected to all shares applied, 100 nodes, p99 under 20 ms on one host's loopback"; this
benchmark measures the first half of that budget with what exists today: from the call to
``urgent`` until every other member has delivered the message (its ``Delivered`` event).

N complete agents (``MeshNode``: every packet Ed25519-signed and verified) run in ONE process
on 127.82.x.y:7946, so the N-1 receivers share one core: the figure is an upper bound for
chargers that each have their own CPU. The ``lan`` preset keeps membership traffic light (gossip every 200 ms);
each trial waits for quiet, then times one broadcast.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import trio
import trio.lowlevel

from protocol.identity import (
    Certificate,
    NodeIdentity,
    SigningKey,
    TrustStore,
    issuer_id_of,
    sign_certificate,
)
from protocol.messages import Revoke
from protocol.state import Scope
from protocol.swim import Delivered, SwimConfig
from sims.bench import BenchResult, machine

PORT = 7946


def _identities(n: int, now_ms: int) -> tuple[list[NodeIdentity], bytes]:
    rng = random.Random(82)
    ca = SigningKey.generate(rng.randbytes(32))
    out = []
    for i in range(n):
        key = SigningKey.generate(rng.randbytes(32))
        cert = Certificate(
            serial=i + 1, issuer_id=issuer_id_of(ca.public_key), node_id=f"u-{i:04d}",
            public_key=key.public_key, site_id="site-1", transformer_id="tx-1", roles=(),
            not_before_ms=now_ms - 3_600_000, not_after_ms=now_ms + 3_600_000,
        )
        out.append(NodeIdentity.from_parts(key, sign_certificate(cert, ca), ca.public_key))
    return out, ca.public_key


async def _run(n: int, trials: int) -> dict[str, Any]:
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.udp import UdpTransport

    idents, ca_pub = _identities(n, time.time_ns() // 1_000_000)
    transports = []
    for i in range(n):
        host = f"127.82.{1 + i // 250}.{1 + i % 250}"
        try:
            transports.append(await UdpTransport.bind((host, PORT)))
        except Exception:
            transports.append(await UdpTransport.bind((host, 0)))
    config = SwimConfig.lan()
    nodes = [
        MeshNode(ident, TrustStore([ca_pub]), t, config, boot_epoch=1,
                 seeds=[transports[0].address] if i else [], rng=random.Random(i))
        for i, (ident, t) in enumerate(zip(idents, transports, strict=True))
    ]
    latencies_ms: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            with trio.fail_after(240):
                while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observer)
                    await trio.sleep(0.2)
            await trio.sleep(2)  # let the join traffic settle
            channels = [node.subscribe() for node in nodes[1:]]
            for trial in range(trials):
                origin = nodes[0]
                marker = Revoke(revocation=b"urgent-bench-%d" % trial)  # any registered message
                t0 = time.perf_counter()
                origin.urgent(marker, Scope.everyone())
                remaining = set(range(len(channels)))
                with trio.fail_after(10):
                    while remaining:
                        for k in list(remaining):
                            try:
                                while True:
                                    ev = channels[k].receive_nowait()
                                    if isinstance(ev, Delivered) and ev.message == marker:
                                        remaining.discard(k)
                                        break
                            except trio.WouldBlock:
                                pass
                        if remaining:
                            await trio.lowlevel.checkpoint()
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    finally:
        for t in transports:
            await t.aclose()
    ordered = sorted(latencies_ms)
    return {
        "nodes": n,
        "trials": trials,
        "all_delivered_p50_ms": round(statistics.median(ordered), 2),
        "all_delivered_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "all_delivered_max_ms": round(ordered[-1], 2),
    }


def run(quick: bool = False) -> BenchResult:
    sizes = [10, 50] if quick else [10, 50, 100]
    trials = 10 if quick else 50
    rows_data = [trio.run(_run, n, trials) for n in sizes]
    rows = [
        (f"{r['nodes']} agents, one process", f"all delivered p50 {r['all_delivered_p50_ms']} ms, "
         f"p99 {r['all_delivered_p99_ms']} ms, max {r['all_delivered_max_ms']} ms ({r['trials']} broadcasts)")
        for r in rows_data
    ]
    data = {"urgent": rows_data, "machine": machine(), "quick": quick}
    return BenchResult(name="urgent", rows=rows, data=data)
