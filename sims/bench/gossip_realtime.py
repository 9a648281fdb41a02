"""Real-time part of ``meshagent bench gossip``: how many agents one process keeps on time.

N ``MeshNode``s run in one trio process, each on its own loopback address (127.81.x.y) on
port 7946 with real UDP and TCP sockets, the ``lan`` preset, and full Ed25519 signing of
every packet and rumor. They join through one seed; once every node sees all the others,
a measurement window starts. A size *keeps its probe rounds on time* when, over the window,

* the 99th percentile of timer lateness (how far behind the core's deadline a tick ran)
  stays under 10% of the probe timeout (50 ms for ``lan``), and
* nobody was suspected (a late process makes others look dead: the failure to avoid).

Each trial also reports the process's CPU time to converge (``converge_cpu_s``) and the share
of one core it used while holding (``hold_cpu_share``): on a machine shared with other work,
lateness includes time spent waiting for a core, and these two say how much of the load was
the mesh's own.

Sizes grow by a fixed step until one fails or a stated cap is reached. The figure is
``realtime_largest_on_time_nodes``: the largest size that held (0 when the first failed);
``realtime_first_late_nodes`` is the size that failed (``None`` when the cap stopped the
search first, so the true limit is at or above the cap: ``realtime_cap_nodes``).
"""

from __future__ import annotations

import random
import time
from typing import Any

import trio

from meshagent.mesh.stats import LATE_WAKEUP_FRACTION
from meshagent.transport.udp import port_free
from protocol.identity import NodeIdentity, TrustStore
from protocol.swim import SwimConfig
from sims.testpki import Pki

PORT = 7946


def _address(i: int) -> tuple[str, int]:
    return (f"127.81.{1 + i // 250}.{1 + i % 250}", PORT)


def _identities(n: int, now_ms: int) -> tuple[list[NodeIdentity], bytes]:
    pki = Pki(seed=7946, now_ms=now_ms)
    return pki.identities(n, "rt", transformers=4), pki.ca_public_key


async def _trial(n: int, window_s: float, converge_timeout_s: float,
                 join_interval_s: float = 0.0) -> dict[str, Any]:
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
    result: dict[str, Any] = {"nodes": n, "join_interval_s": join_interval_s}
    try:
        async with trio.open_nursery() as nursery:
            # each agent joins through the seed as soon as it starts: the clock starts with
            # the first, so the join storm is inside ``converge_s``
            t0 = trio.current_time()
            cpu0 = time.process_time()
            for i, node in enumerate(nodes):
                # as installers bring agents up: one every ``join_interval_s`` (0: all at once)
                await trio.sleep_until(t0 + i * join_interval_s)
                await nursery.start(node.run)
            result["started_s"] = round(trio.current_time() - t0, 2)
            converged = False
            with trio.move_on_after(converge_timeout_s):
                while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observing from outside)
                    await trio.sleep(0.25)
                converged = True
            result["converge_s"] = round(trio.current_time() - t0, 2) if converged else None
            result["converge_cpu_s"] = round(time.process_time() - cpu0, 2)
            result["join_suspicions"] = sum(node.core.statistics().suspicions for node in nodes)
            if converged:
                before = sum(node.core.statistics().suspicions for node in nodes)
                for node in nodes:
                    node.lateness.reset()
                w0, cpu0 = trio.current_time(), time.process_time()
                await trio.sleep(window_s)
                # the share of one core the process used while holding (on a shared
                # machine, lateness also counts time the process waited for a core)
                result["hold_window_s"] = round(trio.current_time() - w0, 2)
                result["hold_cpu_share"] = round((time.process_time() - cpu0) / (trio.current_time() - w0), 3)
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
    limit_ms = 1000 * config.probe_timeout_s * LATE_WAKEUP_FRACTION
    result["on_time"] = bool(
        result.get("converge_s") is not None
        and result.get("suspicions", 1) == 0
        and result.get("lateness_p99_ms", 1e9) <= limit_ms
    )
    return result


def sizes_to_try(start: int, step: int, cap: int) -> list[int]:
    """``start, start + step, ...`` up to and including ``cap``."""
    if start <= 0 or step <= 0 or cap < start:
        raise ValueError(f"bad size search: start {start}, step {step}, cap {cap}")
    return list(range(start, cap + 1, step))


def run_realtime(start: int, step: int, cap: int, window_s: float,
                 converge_timeout_s: float = 60.0, join_interval_s: float = 0.0) -> dict[str, Any]:
    """Trials at ``start, start + step, ...``; stops at the first size that is not on time or at ``cap``."""
    sizes = sizes_to_try(start, step, cap)
    if join_interval_s < 0:
        raise ValueError(f"join_interval_s must not be negative, got {join_interval_s}")
    base = {"realtime_cap_nodes": cap, "realtime_step_nodes": step, "realtime_join_interval_s": join_interval_s}
    if not all(port_free(_address(i)[0], PORT) for i in range(cap)):
        return {**base, "realtime_largest_on_time_nodes": None, "realtime_first_late_nodes": None,
                "realtime_trials": [], "realtime_skipped": "port 7946 busy on 127.81.x.y"}
    trials = []
    largest = 0
    first_late = None
    for n in sizes:
        res = trio.run(_trial, n, window_s, converge_timeout_s, join_interval_s)
        trials.append(res)
        if not res["on_time"]:
            first_late = n
            break
        largest = n
    return {**base, "realtime_largest_on_time_nodes": largest, "realtime_first_late_nodes": first_late,
            "realtime_trials": trials}
