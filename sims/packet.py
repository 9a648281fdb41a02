"""Packet-level runs: complete signed agents, to measure what the fleet level draws from.

Theory of operation
-------------------
``measure_delivery(mode, n, seed)`` starts N complete mesh agents (``MeshNode``: Ed25519 on
every packet, certificates from the deterministic test PKI ``sims.testpki``), lets them join
through one seed, then has node 0 send ``trials`` urgent broadcasts (the primitive the PLAN
rides on) and records, per receiver, the time from the send to its ``Delivered`` event. The
per-receiver samples become the mesh's delivery latency in the fleet run (``sims.runner``),
and the report names the mode:

* ``virtual``: the in-memory network (one-way delay 0.2-1 ms, as ``bench gossip``'s LAN) under
  trio's MockClock: deterministic for a seed; CPU time is free, so it measures the protocol
  and the network model, not the host;
* ``real-network``: real UDP sockets, each agent on its own 127.83.x.y:7946 address, in ONE
  process on the real clock (separate processes per agent are not built yet): the receivers
  share one core, so the figure is an upper bound for chargers with their own CPUs.

``agents_sim_rate(n, window_s)`` is ``bench sim``'s packet-level figure: simulated seconds per
wall second of N agents in steady state, virtual time.
"""

from __future__ import annotations

import random
import time
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from protocol.messages import Revoke
from protocol.state import Scope
from protocol.swim import Delivered, SwimConfig
from sims.collector import many_objects
from sims.testpki import NOW_MS, Pki

WARM_SETTLE_S = 2.0  # a warm start's settle before the window (first probes, first contacts)


def warm_snapshot(pki: Pki, idents: list[Any], addresses: list[Any], now_ms: int) -> Any:
    """The membership every node of a warm start begins with: one snapshot, checked once.

    Each member is known by its own signed ``Alive`` at incarnation 0 (what it would gossip
    about itself: Ed25519 by its own key, deterministic). Before any node gets the snapshot,
    every certificate is verified against the CA (``add_certificate_untrusted``, as a
    ``Certificates`` message is) and every ``Alive``'s signature against its author's
    certificate; a bad one raises. A node then starts as one restarted with a saved
    membership (``Membership``'s ``snapshot``): it does not re-verify the snapshot, but every
    datagram after is verified as always, and each node learns its peers' certificates
    through the ordinary path (attached on first contact, asked for when missing).
    """
    import attrs

    from protocol.swim import Alive, Ed25519Items, Member, MemberSnapshot
    from protocol.swim.messages import signing_payload

    trust = pki.trust()
    for ident in idents:
        trust.add_certificate_untrusted(ident.certificate_bytes, now_ms)
    members = []
    for ident, (host, port) in zip(idents, addresses, strict=True):
        cert = ident.certificate
        alive = Alive(cert.node_id, 0, host, port, cert.site_id, cert.transformer_id)
        alive = attrs.evolve(alive, signature=ident.key.sign(signing_payload(alive)))
        if not Ed25519Items(ident, trust).verify(cert.node_id, signing_payload(alive), alive.signature):
            raise ValueError(f"warm start: the Alive of {cert.node_id} does not verify")
        members.append(Member.from_alive(alive, 0.0))
    return MemberSnapshot(members)


async def _agents(
    n: int, seed: int, mode: str, nursery: trio.Nursery, *, warm: bool = False
) -> tuple[list[Any], list[Any]]:
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.memory import LinkConditions, MemoryNetwork

    pki = Pki(seed=seed)
    idents = [pki.identity(f"sim-{i:05d}") for i in range(n)]
    transports: list[Any] = []
    if mode == "virtual":
        net = MemoryNetwork(
            random.Random(seed),
            default=LinkConditions(delay_s=0.0002, jitter_s=0.0008),
            delivery_quantum_s=0.0002 if n > 200 else 0.0,
        )
        await nursery.start(net.run)
        transports = [net.endpoint() for _ in range(n)]
        clock = lambda: NOW_MS + int(trio.current_time() * 1000)  # noqa: E731
    elif mode == "real-network":
        from meshagent.transport.udp import UdpTransport

        for i in range(n):
            host = f"127.83.{1 + i // 250}.{1 + i % 250}"
            try:
                transports.append(await UdpTransport.bind((host, 7946)))
            except OSError:
                transports.append(await UdpTransport.bind((host, 0)))
        base = time.time_ns() // 1_000_000
        idents = [
            Pki(seed=seed).identity(
                f"sim-{i:05d}", not_before_ms=base - 3_600_000, not_after_ms=base + 3_600_000
            )
            for i in range(n)
        ]
        clock = None
    else:
        raise ValueError(f"unknown packet-level mode {mode!r}")
    snapshot = warm_snapshot(pki, idents, [tr.address for tr in transports], NOW_MS) if warm else None
    nodes = []
    for i, (ident, tr) in enumerate(zip(idents, transports, strict=True)):
        kw: dict[str, Any] = {"wall_clock_ms": clock} if clock else {}
        if snapshot is not None:
            kw["snapshot"] = snapshot
        nodes.append(
            MeshNode(
                ident,
                pki.trust() if mode == "virtual" else Pki(seed=seed).trust(),
                tr,
                SwimConfig.lan(),
                boot_epoch=1,
                seeds=[transports[0].address] if i and snapshot is None else [],
                rng=random.Random(seed * 100_003 + i),
                **kw,
            )
        )
    for node in nodes:
        await nursery.start(node.run)
    return nodes, transports


async def _converge(nodes: list[Any], timeout_s: float) -> float:
    t0 = trio.current_time()
    with trio.fail_after(timeout_s):
        while not all(node.core.num_live == len(nodes) for node in nodes):  # noqa: ASYNC110 (observer)
            await trio.sleep(0.2)
    return trio.current_time() - t0


async def _measure(mode: str, n: int, seed: int, trials: int) -> dict[str, Any]:
    samples: list[float] = []
    transports: list[Any] = []
    try:
        async with trio.open_nursery() as nursery:
            nodes, transports = await _agents(n, seed, mode, nursery)
            try:
                converged = await _converge(nodes, 600 if mode == "virtual" else 120)
                await trio.sleep(2)
                channels = [node.subscribe() for node in nodes[1:]]
                for trial in range(trials):
                    marker = Revoke(revocation=b"sim-plan-%d" % trial)
                    t0 = trio.current_time()
                    nodes[0].urgent(marker, Scope.everyone())
                    remaining = set(range(len(channels)))
                    with trio.fail_after(10):
                        while remaining:
                            for k in list(remaining):
                                try:
                                    while True:
                                        ev = channels[k].receive_nowait()
                                        if isinstance(ev, Delivered) and ev.message == marker:
                                            samples.append(trio.current_time() - t0)
                                            remaining.discard(k)
                                            break
                                except trio.WouldBlock:
                                    pass
                            if remaining and mode == "virtual":
                                await trio.sleep(0.0001)  # lets the autojump clock move; 0.1 ms resolution
                            elif remaining:
                                await trio.lowlevel.checkpoint()
                    await trio.sleep(0.3)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for tr in transports:
            if mode != "virtual":
                await tr.aclose()
    ordered = sorted(samples)
    return {
        "mode": mode,
        "agents": n,
        "broadcasts": trials,
        "samples": len(ordered),
        "p50_s": ordered[len(ordered) // 2],
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "converged_in_s": round(converged, 3),
        "samples_s": ordered,
        "source": f"measured in this run: {n} agents, {mode}",
    }


def _seed_trio_scheduler(seed: int) -> None:
    """Trio shuffles tasks that wake at the same instant with its module RNG (private:
    ``trio._core._run._r``); seeding it makes a virtual-time run repeat exactly within one
    interpreter (across interpreters, also fix PYTHONHASHSEED: member sets iterate by hash)."""
    import trio._core._run as trio_run

    trio_run._r.seed(seed)


def measure_delivery(mode: str, *, n: int = 20, seed: int = 1, trials: int = 10) -> dict[str, Any]:
    n = max(2, n)
    if mode == "virtual":
        _seed_trio_scheduler(seed)
        return trio.run(
            _measure, mode, n, seed, trials, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    return trio.run(_measure, mode, n, seed, trials)


class _JoinTooSlow(Exception):
    pass


async def _converge_within(nodes: list[Any], timeout_s: float, wall_budget_s: float) -> float:
    """``_converge``, abandoned once it has taken ``wall_budget_s`` of wall time."""
    t0, wall0 = trio.current_time(), time.perf_counter()
    with trio.fail_after(timeout_s):
        while not all(node.core.num_live == len(nodes) for node in nodes):
            if time.perf_counter() - wall0 > wall_budget_s:
                live = sorted(node.core.num_live for node in nodes)
                raise _JoinTooSlow(f"the join had not converged after {wall_budget_s:g} s wall "
                                   f"({trio.current_time() - t0:.1f} s simulated; each node knew "
                                   f"{live[0]}-{live[-1]} of {len(nodes)}, median {live[len(live) // 2]})")
            await trio.sleep(0.2)
    return trio.current_time() - t0


async def _rate(n: int, window_s: float, seed: int, converge_timeout_s: float,
                join_wall_budget_s: float = float("inf"), warm: bool = False) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        wall0 = time.perf_counter()
        nodes, _ = await _agents(n, seed, "virtual", nursery, warm=warm)
        if warm:
            start_wall = time.perf_counter() - wall0
            # the first probes and gossip rounds: certificates met on first contact
            await trio.sleep(WARM_SETTLE_S)
            wall, cpu = time.perf_counter(), time.process_time()
            await trio.sleep(window_s)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            live = min(node.core.num_live for node in nodes)
            nursery.cancel_scope.cancel()
            return {"nodes": n, "sim_s_per_wall_s": round(window_s / wall, 3),
                    "sim_s_per_cpu_s": round(window_s / cpu, 3), "window_sim_s": window_s,
                    "start": "warm", "warm_start_wall_s": round(start_wall, 1),
                    "settle_sim_s": WARM_SETTLE_S, "min_live_at_end": live}
        wall0 = time.perf_counter()
        try:
            converged = await _converge_within(nodes, converge_timeout_s, join_wall_budget_s)
        except _JoinTooSlow as exc:
            nursery.cancel_scope.cancel()
            return {"nodes": n, "sim_s_per_wall_s": None, "skipped": str(exc)}
        join_wall = time.perf_counter() - wall0
        wall, cpu = time.perf_counter(), time.process_time()
        await trio.sleep(window_s)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return {
        "nodes": n,
        "sim_s_per_wall_s": round(window_s / wall, 3),
        "sim_s_per_cpu_s": round(window_s / cpu, 3),
        "window_sim_s": window_s,
        "start": "join",
        "join_converged_sim_s": round(converged, 2),
        "join_wall_s": round(join_wall, 1),
    }


async def _join(n: int, seed: int, converge_timeout_s: float, wall_budget_s: float) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        wall0 = time.perf_counter()
        nodes, _ = await _agents(n, seed, "virtual", nursery)
        try:
            converged = await _converge_within(nodes, converge_timeout_s, wall_budget_s)
        except _JoinTooSlow as exc:
            return {"nodes": n, "join_wall_s": None, "skipped": str(exc)}
        finally:
            nursery.cancel_scope.cancel()
    return {"nodes": n, "join_converged_sim_s": round(converged, 2),
            "join_wall_s": round(time.perf_counter() - wall0, 1)}


def join_time(n: int, seed: int = 1, converge_timeout_s: float = 900.0,
              wall_budget_s: float = float("inf")) -> dict[str, Any]:
    """A cold join of N signed nodes through one seed (virtual time): simulated and wall time
    until every node knows every other alive; abandoned after ``wall_budget_s`` of wall time
    (the row then says in ``skipped`` how far it got)."""
    with many_objects():
        return trio.run(_join, n, seed, converge_timeout_s, wall_budget_s,
                        clock=trio.testing.MockClock(autojump_threshold=0))


def agents_sim_rate(
    n: int, window_s: float = 10.0, seed: int = 1, converge_timeout_s: float = 600.0,
    join_wall_budget_s: float = float("inf"), warm: bool = False,
) -> dict[str, Any]:
    """Simulated seconds per wall second of N signed agents in steady state (virtual time).

    A join that takes more than ``join_wall_budget_s`` of wall time is abandoned: the row then
    has ``sim_s_per_wall_s`` None and says why in ``skipped``. ``warm``: no join, every node
    starts with the membership formed (``warm_snapshot``), the window follows a
    ``WARM_SETTLE_S`` settle (the row says ``"start": "warm"``)."""
    with many_objects():
        return trio.run(
            _rate,
            n,
            window_s,
            seed,
            converge_timeout_s,
            join_wall_budget_s,
            warm,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
