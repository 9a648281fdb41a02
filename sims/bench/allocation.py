"""``meshagent bench allocation``: plan time, PLAN size, residuals, spike to applied shares.

* ``plan_ms``: ``protocol.allocation.plan.plan`` on N random offers under three transformers
  (one constrained), median CPU time (thread time) of repeated runs, at N = 50, 200, 1,000,
  10,000.
* ``plan_bytes``: the PLAN for N = 1,000 as it travels: sealed envelope around the signed
  urgent broadcast (``Urgent(Broadcast(...))``) that carries it.
* ``residual_w``: the sans-IO cores (``protocol.allocation.core``) over N = 100 members whose
  published offers are stale by up to +-10%: what is left after round 1 (p50) and the
  largest left after round 2.
* ``spike_to_applied_ms``: complete agents (``MeshNode`` + ``Allocator``, every packet
  signed) over real UDP on 127.88.x.y: from the detector's ``on_spike`` to the last
  member's share applied (its ``apply`` call). All agents run in ONE process here, so the
  receivers share one core: an upper bound for chargers with their own CPU. Spreading
  them over processes and the central OCPP baseline are not built yet (see BENCHMARKS.md).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import trio
import trio.lowlevel

from protocol import codec
from protocol.allocation.core import Member, Proposer, ViewOffer
from protocol.allocation.plan import MemberOffer, plan
from protocol.identity import (
    Certificate,
    NodeIdentity,
    SigningKey,
    TrustStore,
    issuer_id_of,
    sign_certificate,
)
from protocol.state import Scope
from protocol.swim import SwimConfig
from sims.bench import BenchResult, machine

PORT = 7946
SITE = Scope.site("site-1")


def _offers(n: int, rng: random.Random) -> list[MemberOffer]:
    return [
        MemberOffer(f"node-{i:05d}", f"tx-{i % 3}", rng.choice([3700.0, 7400.0, 11000.0]) * rng.uniform(0.5, 1.0),
                    rng.uniform(2000, 50000))
        for i in range(n)
    ]


def plan_ms(n: int, repeats: int) -> float:
    rng = random.Random(n)
    offers = _offers(n, rng)
    total = sum(o.limit_w for o in offers)
    times = []
    for _ in range(repeats):
        # CPU time of this thread: on a shared machine, wall time mostly measures the queue
        t0 = time.thread_time()
        plan(offers, 0.6 * total, {"tx-0": 0.1 * total})
        times.append((time.thread_time() - t0) * 1e3)
    return statistics.median(times)


def plan_bytes(n: int = 1000) -> int:
    from protocol.swim.messages import Broadcast, Urgent
    from protocol.wire import Sealer

    rng = random.Random(1)
    offers = _offers(n, rng)
    view = [ViewOffer(o.node_id, o.transformer_id, o.limit_w, o.weight, 1_764_115_200_000 + i) for i, o in enumerate(offers)]
    total = sum(o.limit_w for o in offers)
    msg = Proposer("detector-000001", SITE, 7, spike_id="detector-000001:12").start(
        0.6 * total, view, {"tx-0": 0.1 * total}, 0.0
    )
    from protocol.messages import type_byte_of

    idents, _ = _identities(1, 1_764_115_200_000, prefix="detector-")
    body = codec.encode(msg)
    urgent = Urgent(Broadcast(idents[0].node_id, 123456, SITE, type_byte_of(msg), body, b"\x00" * 64))
    return len(Sealer(idents[0], 1).seal(urgent, 1_764_115_200_000))


def residuals(n: int, trials: int, stale: float = 0.10) -> tuple[list[float], list[float]]:
    rng = random.Random(7)
    r1: list[float] = []
    r2: list[float] = []
    for _ in range(trials):
        members = {}
        view = []
        limits = {}
        for i in range(n):
            nid = f"n{i:04d}"
            seen = rng.uniform(1000, 11000)
            now = seen * rng.uniform(1 - stale, 1 + stale)
            w = rng.uniform(1000, 50000)
            m = Member(nid, f"tx-{i % 3}")
            m.offer(1000, seen, w)
            m.offer(2000, now, w)
            members[nid], limits[nid] = m, (now, w)
            view.append(ViewOffer(nid, f"tx-{i % 3}", seen, w, 1000))
        deficit = 0.5 * sum(v.limit_w for v in view)
        p = Proposer("det", SITE, 1)
        msg: Any = p.start(deficit, view, {"tx-0": 0.2 * deficit}, 0.0)
        for round_no in (1, 2):
            for nid, m in members.items():
                got = m.receive("det", True, msg, 0.0, *limits[nid])
                if got is not None:
                    p.on_ack(nid, got.ack)
            applied = sum(min(m.share_w(), limits[nid][0]) for nid, m in members.items())
            (r1 if round_no == 1 else r2).append(max(0.0, deficit - applied))
            msg = p.tick(1.0)
            if msg is None or msg.base_seq == 0:  # nothing left to re-plan
                if round_no == 1:
                    r2.append(r1[-1])
                break
    return r1, r2


def _identities(n: int, now_ms: int, prefix: str = "a-") -> tuple[list[NodeIdentity], bytes]:
    rng = random.Random(84)
    ca = SigningKey.generate(rng.randbytes(32))
    out = []
    for i in range(n):
        key = SigningKey.generate(rng.randbytes(32))
        cert = Certificate(
            serial=i + 1, issuer_id=issuer_id_of(ca.public_key), node_id=f"{prefix}{i:04d}",
            public_key=key.public_key, site_id="site-1", transformer_id="tx-1",
            roles=("detector",) if i == 0 else (),
            not_before_ms=now_ms - 3_600_000, not_after_ms=now_ms + 3_600_000,
        )
        out.append(NodeIdentity.from_parts(key, sign_certificate(cert, ca), ca.public_key))
    return out, ca.public_key


async def _spike_to_applied(n: int, trials: int) -> dict[str, Any]:
    from meshagent.allocation.service import Allocator
    from meshagent.control.detect import Phase, Spike
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.udp import UdpTransport

    idents, ca_pub = _identities(n, time.time_ns() // 1_000_000)
    transports = []
    for i in range(n):
        host = f"127.88.{1 + i // 250}.{1 + i % 250}"
        try:
            transports.append(await UdpTransport.bind((host, PORT)))
        except OSError:
            transports.append(await UdpTransport.bind((host, 0)))
    nodes = [
        MeshNode(ident, TrustStore([ca_pub]), t, SwimConfig.lan(), boot_epoch=1,
                 seeds=[transports[0].address] if i else [], rng=random.Random(i))
        for i, (ident, t) in enumerate(zip(idents, transports, strict=True))
    ]
    applied_at: dict[str, float] = {}
    current = {"trial": -1}

    def applier(node_id: str) -> Any:
        def apply(share_w: float, _covered: float | None) -> None:
            if share_w > 0 and current["trial"] >= 0 and node_id not in applied_at:
                applied_at[node_id] = time.perf_counter()
        return apply

    allocs = [
        Allocator(node, limit_now_w=lambda: 7400.0, weight_now=lambda: 20000.0, apply=applier(node.node_id),
                  round2_after_s=0.05, ttl_ms=60_000, renew_every_s=30.0)
        for node in nodes
    ]
    latencies: list[float] = []
    misses = 0
    try:
        async with trio.open_nursery() as nursery:
            for node, alloc in zip(nodes, allocs, strict=True):
                await nursery.start(node.run)
                await nursery.start(alloc.run)
            with trio.fail_after(240):
                while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observer)
                    await trio.sleep(0.2)
            for node, alloc in zip(nodes, allocs, strict=True):
                rec = node.publish_record(discharge_available_w=7400.0, energy_above_min_soc_wh=20000.0, soc=0.6,
                                          thermal_derating=0.0, faults=())
                alloc.offer(rec.updated_at_ms, rec.discharge_available_w, rec.energy_above_min_soc_wh)
            with trio.fail_after(120):
                while not all(len(node.records.records()) == n for node in nodes):  # noqa: ASYNC110 (observer)
                    await trio.sleep(0.2)
            await trio.sleep(1)
            for trial in range(trials):
                applied_at.clear()
                current["trial"] = trial
                spike_id = f"bench:{trial}"
                t0 = time.perf_counter()
                allocs[0].on_spike(Spike(spike_id, Phase.START, 0.5 * 7400.0 * n, "site", "site-1", "limit", 0, 0, 0))
                with trio.move_on_after(5):
                    while len(applied_at) < n:
                        await trio.lowlevel.checkpoint()
                if len(applied_at) < n:
                    misses += 1  # counted as missed, and as infinitely late in the percentiles
                    latencies.append(float("inf"))
                else:
                    latencies.append((max(applied_at.values()) - t0) * 1e3)
                current["trial"] = -1
                allocs[0].on_spike(Spike(spike_id, Phase.END, 0.0, "site", "site-1", "limit", 0, 0, 0))
                await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    finally:
        for t in transports:
            await t.aclose()
    ordered = sorted(latencies)

    def finite(v: float) -> float | None:  # a missed spike makes the percentile unbounded
        return round(v, 2) if v != float("inf") else None

    return {
        "nodes": n, "trials": trials, "processes": 1, "missed": misses,
        "p50": finite(statistics.median(ordered)),
        "p99": finite(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]),
    }


def run(quick: bool = False) -> BenchResult:
    sizes = [50, 200, 1000, 10000]
    plan_rows = [{"nodes": n, "ms": round(plan_ms(n, 5 if n >= 10000 else 21), 3)} for n in sizes]
    size = plan_bytes(1000)
    r1, r2 = residuals(100, 30 if quick else 200)
    agent_sizes = [10] if quick else [10, 20]
    spike_rows = [trio.run(_spike_to_applied, n, 10 if quick else 40) for n in agent_sizes]
    rows = [(f"plan_ms N={r['nodes']}", f"{r['ms']} ms") for r in plan_rows]
    rows.append(("plan_bytes N=1000 (sealed urgent)", f"{size} bytes (limit 1200)"))
    rows.append(("residual_w round1_p50 (10% stale)", f"{statistics.median(r1):.1f} W"))
    rows.append(("residual_w round2_max (10% stale)", f"{max(r2):.2f} W"))
    rows += [
        (f"spike_to_applied_ms N={r['nodes']} (1 process)", f"p50 {r['p50']} ms, p99 {r['p99']} ms ({r['trials']} spikes, {r['missed']} missed)")
        for r in spike_rows
    ]
    data = {
        "plan_ms": plan_rows,
        "plan_bytes": size,
        "residual_w": {"round1_p50": round(statistics.median(r1), 2), "round2_max": round(max(r2), 3)},
        "spike_to_applied_ms": spike_rows,
        "central_ocpp_ms": None,  # not built yet
        "speedup_p99": None,
        "machine": machine(),
        "quick": quick,
    }
    return BenchResult(name="allocation", rows=rows, data=data)
