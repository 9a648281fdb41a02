"""``meshagent bench urgent``: one urgent broadcast to every member, over real UDP on loopback.

The allocation will send its PLAN with ``MeshNode.urgent(message, scope)``: one signed
datagram straight to every live member of the scope, plus gossip. Its target is "spike
detected to all shares applied, 100 nodes, p99 under 20 ms on one host's loopback"; this
benchmark measures the first half of that budget with what exists today: from the call to
``urgent`` until every other member has delivered the message (its ``Delivered`` event).

The message is a real registered message type, ``UrgentProbe`` (type byte 0x7F, the
benchmarks' own; 0x40-0x4F stay reserved for the allocation), sized like a PLAN for 100
chargers (a sequence number and 1,000 bytes of shares), sent through ``MeshNode.urgent``
exactly as the allocation will: no special path, no fake revocation.

N complete agents (``MeshNode``: every packet Ed25519-signed and verified) run in ONE process
on 127.82.x.y:7946, so the N-1 receivers share one core: the figure is an upper bound for
chargers that each have their own CPU. The ``lan`` preset keeps membership traffic light
(gossip every 200 ms). Broadcasts go one at a time, ``GAP_S`` apart; ``all_delivered_p99_ms``
is the nearest-rank 99th percentile (``protocol.stats.percentile``) over at least 1,000
broadcasts in a full run (fewer in ``--quick``, still enough for a p99 that is not the max).
A broadcast that some member has not delivered within ``DELIVERY_TIMEOUT_S`` is counted in
``undelivered`` and enters the percentiles as infinitely slow (the p99 is then ``None``).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import attrs
import trio
import trio.lowlevel

from protocol import codec
from protocol.messages import message
from protocol.state import Scope
from protocol.stats import enough_for, percentile
from protocol.swim import Delivered, SwimConfig
from sims.bench import BenchResult, machine
from sims.testpki import Pki

PORT = 7946
GAP_S = 0.05  # between broadcasts: lets each one's gossip retransmissions drain
PLAN_BYTES = 1000  # about what a PLAN for 100 chargers carries
DELIVERY_TIMEOUT_S = 2.0  # ten gossip intervals: a broadcast not delivered by then is lost
FULL_TRIALS = 1000
QUICK_TRIALS = 200


@message(0x7F)
@attrs.frozen
class UrgentProbe:
    """The benchmark's urgent message: a sequence number and a PLAN-sized body."""

    seq: int = codec.integer(0, 2**32 - 1)
    body: bytes = codec.blob(2048)


def _ms(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None


async def _run(n: int, trials: int) -> dict[str, Any]:
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.udp import UdpTransport

    pki = Pki(seed=82, now_ms=time.time_ns() // 1_000_000)
    idents = pki.identities(n, "u")
    transports = []
    for i in range(n):
        host = f"127.82.{1 + i // 250}.{1 + i % 250}"
        try:
            transports.append(await UdpTransport.bind((host, PORT)))
        except OSError:
            transports.append(await UdpTransport.bind((host, 0)))
    config = SwimConfig.lan()
    nodes = [
        MeshNode(ident, pki.trust(), t, config, boot_epoch=1,
                 seeds=[transports[0].address] if i else [], rng=random.Random(i))
        for i, (ident, t) in enumerate(zip(idents, transports, strict=True))
    ]
    all_ms: list[float] = []  # call -> last member delivered, one per broadcast
    each_ms: list[float] = []  # call -> one member delivered, one per (broadcast, member)
    body = random.Random(0).randbytes(PLAN_BYTES)
    direct = 0  # deliveries straight from the origin (not relayed by gossip)
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            with trio.fail_after(240):
                while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observer)
                    await trio.sleep(0.2)
            await trio.sleep(2)  # let the join traffic settle
            channels = [node.subscribe(buffer=4096) for node in nodes[1:]]
            for trial in range(trials):
                probe = UrgentProbe(seq=trial, body=body)
                t0 = time.perf_counter()
                nodes[0].urgent(probe, Scope.everyone())
                remaining = set(range(len(channels)))
                with trio.move_on_after(DELIVERY_TIMEOUT_S):
                    while remaining:
                        for k in list(remaining):
                            try:
                                while True:
                                    ev = channels[k].receive_nowait()
                                    if isinstance(ev, Delivered) and ev.message == probe:
                                        remaining.discard(k)
                                        each_ms.append((time.perf_counter() - t0) * 1000)
                                        direct += ev.direct
                                        break
                            except trio.WouldBlock:
                                pass
                        if remaining:
                            await trio.lowlevel.checkpoint()
                # a broadcast someone never delivered counts as infinitely slow in the percentile
                all_ms.append(math.inf if remaining else (time.perf_counter() - t0) * 1000)
                await trio.sleep(GAP_S)
            nursery.cancel_scope.cancel()
    finally:
        for t in transports:
            await t.aclose()
    return {
        "nodes": n,
        "trials": trials,
        "message": f"UrgentProbe 0x7F, {PLAN_BYTES} B body",
        "undelivered": sum(1 for x in all_ms if math.isinf(x)),
        "all_delivered_p50_ms": _ms(percentile(all_ms, 0.50)),
        # a p99 only where it is not simply the maximum; None when over 1 % were lost
        "all_delivered_p99_ms": _ms(percentile(all_ms, 0.99)) if trials >= enough_for(0.99) else None,
        "all_delivered_max_ms": _ms(max(all_ms)),
        "one_delivered_p99_ms": _ms(percentile(each_ms, 0.99)),
        "direct_fraction": round(direct / len(each_ms), 4),
    }


def run(quick: bool = False) -> BenchResult:
    sizes = [10, 50] if quick else [10, 50, 100]
    trials = QUICK_TRIALS if quick else FULL_TRIALS
    rows_data = [trio.run(_run, n, trials) for n in sizes]
    rows = [
        (f"{r['nodes']} agents, one process", f"all delivered p50 {r['all_delivered_p50_ms']} ms, "
         f"p99 {r['all_delivered_p99_ms']} ms, max {r['all_delivered_max_ms']} ms ({r['trials']} broadcasts,"
         f" {r['undelivered']} not delivered to all in {DELIVERY_TIMEOUT_S:g} s)")
        for r in rows_data
    ]
    data = {"urgent": rows_data, "machine": machine(), "quick": quick}
    return BenchResult(name="urgent", rows=rows, data=data)
