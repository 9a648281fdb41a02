"""Spike to applied shares with the agents spread over worker processes, over real UDP.

Theory of operation
-------------------
``MeshFleet`` starts W worker processes (``python -m sims.bench.allocation_mesh``); worker w
hosts a contiguous slice of the N agents, each a complete agent (``MeshNode`` with every
packet Ed25519-signed and verified, plus its ``Allocator``) on its own address
127.88.x.y:7946 with real UDP and TCP sockets (port 0 on an address where 7946 is taken).
Agent 0, in worker 0, is the seed and the only one with the ``detector`` role. Every worker
mints the same deterministic PKI (``sims.testpki.Pki``) from a seed and a ``now_ms`` the
parent passes, so no key crosses a pipe.

Agents boot ``JOIN_STAGGER_S`` apart (chargers do not all boot in the same millisecond); a
worker says ``ready`` once each of its agents sees all N live and every offer, and the parent
then waits for ``SETTLE_S`` without a new suspicion anywhere before the first spike.

The parent drives one spike at a time over the workers' stdin/stdout (``sims.procs``):

1. ``arm K`` to every worker: each forgets the last spike's applies;
2. ``spike K DEFICIT`` to worker 0: it reads ``time.monotonic()`` and at once calls the
   detector's ``Allocator.on_spike`` (the control loop's spike decision), and reports that
   time;
3. every simulated inverter (``apply``) notes ``time.monotonic()`` the first time it is
   handed a positive share; a worker reports ``done K COUNT LAST`` as soon as all its agents
   have applied, or, when the parent's deadline passes first, on ``collect K`` with the
   count it has;
4. the spike's latency is the latest apply time of all workers minus the spike time: one
   clock, CLOCK_MONOTONIC, system-wide on Linux. A spike some agent did not apply within
   the deadline is *missed* and counts as infinitely slow;
5. ``events K`` returns every share each agent applied since ``arm`` with its time: the
   parent replays them in time order to find when the shares summed to the deficit (the
   ``covered`` figure: what the meter sees, whoever applied);
6. ``end K`` releases the shares (the spike's END) before the next spike.

Workers exit when their stdin closes (``sims.procs``), so none outlives the parent.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from typing import Any

import trio

from meshagent.transport.base import Address
from protocol.identity import NodeIdentity
from protocol.swim import SwimConfig
from sims.procs import Child, TimedOut, command_lines, slices, stop_all
from sims.procs import say as _say
from sims.testpki import Pki

PORT = 7946
PKI_SEED = 88
LIMIT_W = 7400.0  # every agent's offer: discharge limit and weight (energy above the minimum SoC)
WEIGHT = 20000.0
JOIN_STAGGER_S = 0.05  # between two agents' starts in one worker
SETTLE_S = 10.0  # no new suspicion for this long after the join: steady state


def agent_address(i: int) -> tuple[str, int]:
    return f"127.88.{1 + i // 250}.{1 + i % 250}", PORT


def agent_id(i: int) -> str:
    return f"a-{i:04d}"


def agent_identities(n: int, now_ms: int) -> tuple[list[NodeIdentity], Pki]:
    """The N agents' identities, the same in every process for the same ``now_ms``; agent 0 detects."""
    pki = Pki(seed=PKI_SEED, now_ms=now_ms)
    return [pki.identity(agent_id(i), roles=("detector",) if i == 0 else ()) for i in range(n)], pki


# --- the worker (its own process) ------------------------------------------------------------


class _Applies:
    """What this worker's simulated inverters applied for the armed spike."""

    def __init__(self, indices: range) -> None:
        self.indices = indices
        self.local = len(indices)
        self.trial = -1
        self.at: dict[int, float] = {}
        self.reported = True
        self.events: list[tuple[float, int, float]] = []  # (monotonic time, agent, share applied) since arm

    def arm(self, trial: int) -> None:
        self.trial, self.at, self.reported, self.events = trial, {}, False, []

    def applier(self, i: int) -> Any:
        def apply(share_w: float, _covered_w: float | None) -> None:
            self.events.append((time.monotonic(), i, share_w))
            if share_w > 0 and not self.reported and i not in self.at:
                self.at[i] = time.monotonic()
                if len(self.at) == self.local:
                    self.report()
        return apply

    def report(self) -> None:
        if not self.reported:
            self.reported = True
            last = max(self.at.values()) if self.at else math.nan
            missing = ",".join(str(i) for i in sorted(set(self.indices) - set(self.at))[:8])
            _say(f"done {self.trial} {len(self.at)} {last!r} {missing or '-'}")


async def worker(n: int, lo: int, hi: int, now_ms: int, seed: Address | None, join_timeout_s: float) -> None:
    from meshagent.allocation.service import Allocator
    from meshagent.control.detect import Phase, Spike
    from meshagent.mesh.node import MeshNode
    from meshagent.transport.udp import UdpTransport

    idents, pki = agent_identities(n, now_ms)
    transports = []
    for i in range(lo, hi):
        try:
            transports.append(await UdpTransport.bind(agent_address(i)))
        except OSError:  # 7946 taken on this address (another run): any port, still real UDP
            transports.append(await UdpTransport.bind((agent_address(i)[0], 0)))
    try:
        if lo == 0:
            seed = transports[0].address
        assert seed is not None
        _say(f"bound {seed[0]} {seed[1]}")
        nodes = [
            MeshNode(idents[i], pki.trust(), t, SwimConfig.lan(), boot_epoch=1,
                     seeds=[seed] if i else [], rng=random.Random(i))
            for i, t in zip(range(lo, hi), transports, strict=True)
        ]
        applies = _Applies(range(lo, hi))
        allocs = [
            Allocator(node, limit_now_w=lambda: LIMIT_W, weight_now=lambda: WEIGHT, apply=applies.applier(i),
                      round2_after_s=0.05, ttl_ms=60_000, renew_every_s=30.0)
            for i, node in zip(range(lo, hi), nodes, strict=True)
        ]
        async with trio.open_nursery() as nursery:
            for node, alloc in zip(nodes, allocs, strict=True):
                await nursery.start(node.run)
                await nursery.start(alloc.run)
                # chargers do not all boot in the same millisecond: a staggered start spares
                # the seed a join storm the spikes have nothing to do with
                await trio.sleep(JOIN_STAGGER_S)
            nursery.start_soon(_join, n, nodes, allocs, join_timeout_s)
            async for cmd in command_lines():
                if cmd[0] == "arm":
                    applies.arm(int(cmd[1]))
                    _say(f"armed {cmd[1]}")
                elif cmd[0] == "spike" and lo == 0:
                    spike = Spike(f"bench:{cmd[1]}", Phase.START, float(cmd[2]), "site", "site-1", "limit", 0, 0, 0)
                    t0 = time.monotonic()
                    allocs[0].on_spike(spike)
                    _say(f"spiked {cmd[1]} {t0!r}")
                elif cmd[0] == "end" and lo == 0:
                    allocs[0].on_spike(Spike(f"bench:{cmd[1]}", Phase.END, 0.0, "site", "site-1", "limit", 0, 0, 0))
                    _say(f"ended {cmd[1]}")
                elif cmd[0] == "collect":
                    applies.report()
                elif cmd[0] == "events":
                    _say(f"events {applies.trial} {json.dumps(applies.events)}")
                elif cmd[0] == "diag":
                    _say("diag " + json.dumps(_diagnosis(nodes, allocs)))
                elif cmd[0] == "stats":
                    live = min(node.core.num_live for node in nodes)
                    suspicions = sum(node.core.statistics().suspicions for node in nodes)
                    drops = sum(node.statistics().dropped.get("kernel_receive_buffer_full", 0) for node in nodes)
                    _say(f"stats {live} {suspicions} {drops}")
                else:
                    _say(f"error unknown command {' '.join(cmd)}")
            nursery.cancel_scope.cancel()  # stdin closed: the parent is done (or gone)
    finally:
        for t in transports:
            await t.aclose()


def _diagnosis(nodes: list[Any], allocs: list[Any]) -> dict[str, Any]:
    """Why a worker's agents miss spikes: membership and timer health, summed over its agents."""
    stats = [node.statistics() for node in nodes]
    dropped: dict[str, int] = {}
    for st in stats:
        for reason, count in st.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    return {
        "alive_min": min(st.membership.alive for st in stats),
        "suspect_max": max(st.membership.suspect for st in stats),
        "dead_max": max(st.membership.dead for st in stats),
        "probes": sum(st.membership.probes for st in stats),
        "probe_failures": sum(st.membership.probe_failures for st in stats),
        "suspicions": sum(st.membership.suspicions for st in stats),
        "refutations": sum(st.membership.refutations for st in stats),
        "late_wakeups": sum(st.late_wakeups for st in stats),
        "tick_lateness_p99_ms": round(1000 * max(st.tick_lateness_p99_s for st in stats), 1),
        "datagrams_received": sum(st.datagrams_received for st in stats),
        "dropped": {reason: count for reason, count in dropped.items() if count},
        "plans_received": sum(a.statistics().plans_received for a in allocs),
        "acks_sent": sum(a.statistics().acks_sent for a in allocs),
        "refused_not_detector": sum(a.statistics().refused_not_detector for a in allocs),
        "subscriber_events_dropped": sum(st.subscriber_events_dropped for st in stats),
    }


async def _join(n: int, nodes: list[Any], allocs: list[Any], timeout_s: float) -> None:
    """Report ``ready`` once every local agent sees all N live and every offer, else ``failed``."""
    with trio.move_on_after(timeout_s):
        while not all(node.core.num_live == n for node in nodes):  # noqa: ASYNC110 (observer)
            await trio.sleep(0.2)
        for node, alloc in zip(nodes, allocs, strict=True):
            rec = node.publish_record(discharge_available_w=LIMIT_W, energy_above_min_soc_wh=WEIGHT, soc=0.6,
                                      thermal_derating=0.0, faults=())
            alloc.offer(rec.updated_at_ms, rec.discharge_available_w, rec.energy_above_min_soc_wh)
        while not all(len(node.records.records()) == n for node in nodes):  # noqa: ASYNC110 (observer)
            await trio.sleep(0.2)
        _say("ready")
        return
    live = min(node.core.num_live for node in nodes)
    records = min(len(node.records.records()) for node in nodes)
    _say(f"failed join: after {timeout_s:g} s the slowest agent saw {live} live and {records} offers of {n}")


# --- the parent's side -----------------------------------------------------------------------


class JoinFailed(RuntimeError):
    """The agents did not all see each other (and every offer) in time."""


class MeshFleet:
    """N agents over ``workers`` processes; ``spike_ms`` times one spike (``math.inf`` if missed)."""

    def __init__(self, n: int, workers: int, join_timeout_s: float) -> None:
        self.n = n
        self.workers: list[Child] = []
        now_ms = time.time_ns() // 1_000_000
        started = time.monotonic()
        try:
            seed: list[str] = []
            for w, share in enumerate(slices(n, workers)):
                args = [str(n), str(share.start), str(share.stop), str(now_ms), str(join_timeout_s), *seed]
                child = Child(f"mesh-worker-{w}", "sims.bench.allocation_mesh", args)
                self.workers.append(child)
                bound = child.expect("bound", time.monotonic() + 60)
                seed = seed or bound
            deadline = time.monotonic() + join_timeout_s + 120  # the worker's own report of a failure first
            for child in self.workers:
                line = child.read_line(deadline)
                if line != "ready":
                    raise JoinFailed(f"{child.name}: {line}")
            self.join_s = time.monotonic() - started
            self._settle(deadline)
            self.settled_s = time.monotonic() - started
        except BaseException:
            self.close()
            raise

    def spike_ms(self, trial: int, deficit_w: float, deadline_s: float) -> float:
        start = time.monotonic()
        for child in self.workers:
            child.send(f"arm {trial}")
        for child in self.workers:
            child.expect("armed", start + 10)
        self.workers[0].send(f"spike {trial} {deficit_w!r}")
        t0 = float(self.workers[0].expect("spiked", start + 10)[1])
        deadline = t0 + deadline_s
        count, last = 0, -math.inf
        for child in self.workers:
            try:
                fields = child.expect("done", deadline)
            except TimedOut:  # it has not all applied: ask for what it has
                fields = []
            if not fields:
                child.send(f"collect {trial}")
                fields = child.expect("done", time.monotonic() + 10)
            if int(fields[0]) != trial:
                raise RuntimeError(f"{child.name} answered spike {fields[0]} for {trial}")
            count += int(fields[1])
            last = max(last, float(fields[2]) if int(fields[1]) else -math.inf)
        self.last_spike = (trial, t0)
        return (last - t0) * 1000 if count == self.n else math.inf

    def covered_ms(self, deficit_w: float) -> float:
        """From the last spike to the moment the shares applied, all workers together, first
        summed to its deficit (within 1 W): what the site's meter sees, whoever applied. A
        member silent in round 1 gets nothing in round 2 and the others cover its part, which
        ``spike_ms`` (every member applied) counts as missed and this does not."""
        trial, t0 = self.last_spike
        events: list[tuple[float, int, float]] = []
        for child in self.workers:
            child.send(f"events {trial}")
            fields = child.read_line(time.monotonic() + 10).split(" ", 2)
            if fields[:2] != ["events", str(trial)]:
                raise RuntimeError(f"{child.name} answered {fields[:2]} for events of spike {trial}")
            events += [(float(t), int(i), float(w)) for t, i, w in json.loads(fields[2])]
        applied: dict[int, float] = {}
        for t, i, w in sorted(events):
            applied[i] = w
            if math.fsum(applied.values()) >= deficit_w - 1.0:
                return (t - t0) * 1000
        return math.inf

    def _settle(self, deadline: float) -> None:
        """Wait for SETTLE_S with no new suspicion anywhere: the join storm is over.

        A member suspected during a spike is left out of the plan, so its spike is missed;
        spikes are timed in the steady state a fleet of chargers lives in, not while it boots.
        """
        last, quiet_since = self.suspicions(), time.monotonic()
        while time.monotonic() - quiet_since < SETTLE_S:
            if time.monotonic() > deadline:
                raise JoinFailed(f"joined, but suspicions did not stop for {SETTLE_S:g} s in time")
            time.sleep(1.0)
            now = self.suspicions()
            if now != last:
                last, quiet_since = now, time.monotonic()

    def suspicions(self) -> int:
        """Suspicions raised so far by all the agents (a starved process makes others look dead)."""
        return self.health()[0]

    def health(self) -> tuple[int, int]:
        """(suspicions, datagrams the kernel dropped on full receive buffers) so far, all agents."""
        suspicions = drops = 0
        for child in self.workers:
            child.send("stats")
            fields = child.expect("stats", time.monotonic() + 10)
            suspicions, drops = suspicions + int(fields[1]), drops + int(fields[2])
        return suspicions, drops

    def end(self, trial: int) -> None:
        self.workers[0].send(f"end {trial}")
        self.workers[0].expect("ended", time.monotonic() + 10)

    def close(self) -> None:
        stop_all(self.workers)


def main(argv: list[str]) -> None:
    """``python -m sims.bench.allocation_mesh N LO HI NOW_MS JOIN_TIMEOUT_S [SEED_HOST SEED_PORT]``"""
    n, lo, hi, now_ms, join_timeout_s = int(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    seed = (argv[5], int(argv[6])) if len(argv) > 6 else None
    trio.run(worker, n, lo, hi, now_ms, seed, join_timeout_s)


if __name__ == "__main__":
    main(sys.argv[1:])
