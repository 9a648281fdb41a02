"""``meshagent bench gossip``: the membership core in virtual time (spread, detection, load).

Method
------
The sans-IO cores (``protocol.swim.Membership``) are driven directly by a discrete-event
loop: one heap of core wake-ups (at each core's ``next_deadline()``) and packet deliveries.
No trio, no sockets, no encoding on the hot path (bytes are counted by encoding only where
``load`` asks for them), so 10,000 cores run on one CPU core. Every random choice comes
from one seeded ``random.Random``: a run is reproducible.

The network: one-way UDP delay uniform in 0.2-1 ms, independent uniform loss per datagram;
TCP (``reliable`` sends) never lost but each lost segment on the way costs a 1 s
retransmission timeout. A paused node neither ticks nor reads; its packets wait for it.

Cores start from one shared ``MemberSnapshot`` (everyone alive, incarnation 0), as after a
push-pull: no join storm, and 10,000 cores share one member table copy-on-write.

* ``spread``: N cores under the ``lan`` preset; after 2 s of warm-up one node publishes a new
  state record; p999_s is the time until 99.9% of the other nodes hold it. Beside it,
  memberlist's model (the convergence simulator's numbers quoted by the issue: about 1.6 s,
  2.0 s, 2.2 s at 3 peers every 200 ms). Push-pull is left at its lan interval except at
  N=10,000, where the 5 s window is shorter than its first staggered run would matter and
  a full-state build of 10,000 members per sync only costs simulation time.
* ``detection``: N=100; one node at a time is killed; all_dead is the time until every live
  member marks it dead; first_detect_periods the time until some member's own probe fails
  (its first suspicion), in probe periods (SWIM predicts e/(e-1) = 1.58).
* ``false_positives``: N=100 for one simulated hour at 10% and 20% loss, and with a node
  paused for 5 s every five minutes; count = deaths declared by suspicion timeout (all
  nodes are healthy, so every one is false). A last row repeats 20% loss with
  ``last_chance_probes=0`` (memberlist's rule: dead as soon as the suspicion times out).
* ``load``: packets and bytes (envelope included) per node per second over a steady state
  long enough to include the push-pull rounds, UDP and TCP together and apart. UDP (probes
  and gossip) is flat in N; push-pull bytes grow as N / log N by design (the full state is
  O(N), its interval grows with log N), as memberlist's do.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from typing import Any

from protocol import codec
from protocol.swim import (
    Alive,
    LocalNode,
    Member,
    MemberDead,
    Membership,
    MemberSnapshot,
    MemberSuspect,
    Ping,
    RecordUpdated,
    StateRecords,
    SwimConfig,
    UrgentBroadcasts,
)
from protocol.wire import overhead_bytes
from sims.bench import BenchResult, machine
from sims.bench.gossip_realtime import run_realtime

MEMBERLIST_MODEL_S = {100: 1.6, 1000: 2.0, 10_000: 2.2}

_TICK = 0
_DELIVER = 1


class Sim:
    """N membership cores on a simulated LAN (see the module docstring)."""

    def __init__(
        self,
        n: int,
        config: SwimConfig,
        seed: int,
        *,
        loss: float = 0.0,
        delay_s: tuple[float, float] = (0.0002, 0.001),
        measure_bytes: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay_lo, self.delay_span = delay_s[0], delay_s[1] - delay_s[0]
        self.measure_bytes = measure_bytes
        self.now = 0.0
        self.ids = [f"node-{i:05d}" for i in range(n)]
        self.addresses = [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 7946) for i in range(n)]
        self.index = {a: i for i, a in enumerate(self.addresses)}
        alives = [
            Alive(self.ids[i], 0, *self.addresses[i], f"site-{i // 20}", f"tx-{i // 100}")
            for i in range(n)
        ]
        snapshot = MemberSnapshot(Member.from_alive(a, 0.0) for a in alives)
        self.cores = [
            Membership(
                config,
                LocalNode(self.ids[i], self.addresses[i], alives[i].site_id, alives[i].transformer_id),
                random.Random(self.rng.getrandbits(64)),
                0.0,
                snapshot=snapshot,
                delegates=[StateRecords(config.record_reap_s), UrgentBroadcasts(config.urgent_seen_s)],
            )
            for i in range(n)
        ]
        self.crashed = [False] * n
        self.paused_until = [0.0] * n
        self.wake = [math.inf] * n
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.counter = 0
        self.packets = 0
        self.bytes = 0
        self.tcp_bytes = 0
        self.on_events: Any = None  # callable(node index, events) when set
        for i in range(n):
            self._schedule(i)

    def _schedule(self, i: int) -> None:
        when = self.cores[i].next_deadline()
        if when != self.wake[i] and when != math.inf:
            self.wake[i] = when
            self.counter += 1
            heapq.heappush(self.heap, (when if when > self.now else self.now, self.counter, _TICK, i, when))

    def _flush(self, i: int) -> None:
        core = self.cores[i]
        events = core.events()
        if events and self.on_events is not None:
            self.on_events(i, events)
        out = core.outgoing()
        if out:
            rng = self.rng
            now = self.now
            src = self.addresses[i]
            for send in out:
                self.packets += 1
                if self.measure_bytes:
                    size = len(codec.encode(send.message)) + overhead_bytes(len(core.node_id))
                    self.bytes += size
                    if send.reliable:
                        self.tcp_bytes += size
                j = self.index.get(send.address)
                if j is None:
                    continue
                if send.reliable:
                    delay = 3 * (self.delay_lo + rng.random() * self.delay_span)
                    while rng.random() < self.loss and delay < 10.0:
                        delay += 1.0
                else:
                    if self.loss and rng.random() < self.loss:
                        continue
                    delay = self.delay_lo + rng.random() * self.delay_span
                self.counter += 1
                heapq.heappush(
                    self.heap,
                    (now + delay, self.counter, _DELIVER, j, (i, src, send.message, send.reliable)),
                )
        self._schedule(i)

    def run_to(self, t: float) -> None:
        heap = self.heap
        cores = self.cores
        while heap and heap[0][0] <= t:
            when, _, kind, i, payload = heapq.heappop(heap)
            if when > self.now:
                self.now = when
            if self.crashed[i]:
                continue
            if self.paused_until[i] > self.now:
                self.counter += 1
                heapq.heappush(heap, (self.paused_until[i], self.counter, kind, i, payload))
                continue
            core = cores[i]
            if kind == _TICK:
                if self.wake[i] != payload:
                    continue
                self.wake[i] = math.inf
                core.tick(self.now)
            else:
                src, src_address, message, reliable = payload
                core.receive(self.ids[src], src_address, message, self.now, reliable=reliable)
            self._flush(i)
        if t > self.now:
            self.now = t

    def crash(self, i: int) -> None:
        self.crashed[i] = True

    def pause(self, i: int, duration_s: float) -> None:
        self.paused_until[i] = self.now + duration_s


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def spread(n: int, seed: int = 1) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if n >= 10_000:
        overrides["push_pull_interval_s"] = 3600.0
    sim = Sim(n, SwimConfig.lan(**overrides), seed)
    sim.run_to(2.0)
    origin = sim.cores[0]
    got: dict[int, float] = {}

    def on_events(i: int, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, RecordUpdated) and ev.record.node_id == origin.node_id:
                got.setdefault(i, sim.now)

    sim.on_events = on_events
    t0 = sim.now
    records = next(d for d in origin.delegates if isinstance(d, StateRecords))
    records.publish(
        t0, discharge_available_w=7000.0, energy_above_min_soc_wh=20_000.0, soc=0.8,
        updated_at_ms=1_764_000_000_000,
    )
    sim._flush(0)
    need = math.ceil(0.999 * (n - 1))
    wall = time.perf_counter()
    end = t0 + 15.0
    while len(got) < need and sim.now < end:
        sim.run_to(sim.now + 0.05)
    times = sorted(t - t0 for t in got.values())
    p999 = times[need - 1] if len(times) >= need else math.inf
    return {
        "nodes": n,
        "p999_s": round(p999, 3),
        "p50_s": round(times[len(times) // 2], 3) if times else None,
        "memberlist_model_s": MEMBERLIST_MODEL_S.get(n),
        "reached": len(got),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def detection(n: int = 100, trials: int = 20, seed: int = 2) -> dict[str, Any]:
    config = SwimConfig.lan()
    sim = Sim(n, config, seed)
    sim.run_to(3.0)
    state: dict[str, Any] = {}
    plain_flush = sim._flush

    def flush(i: int) -> None:  # notice the first ping sent to the victim after its death
        victim = state.get("victim")
        if victim is not None and "ping" not in state:
            for send in sim.cores[i]._out:
                if send.address == sim.addresses[victim] and isinstance(send.message, Ping):
                    state["ping"] = sim.now
                    break
        plain_flush(i)

    def on_events(i: int, events: list[Any]) -> None:
        victim_id = sim.ids[state["victim"]] if "victim" in state else None
        for ev in events:
            if isinstance(ev, MemberSuspect) and ev.member.node_id == victim_id:
                if ev.accuser == sim.ids[i]:
                    state.setdefault("first", sim.now)
            elif isinstance(ev, MemberDead) and ev.member.node_id == victim_id:
                state["dead"].add(i)

    sim._flush = flush  # type: ignore[method-assign]
    sim.on_events = on_events
    all_dead: list[float] = []
    first: list[float] = []
    first_ping: list[float] = []
    rng = random.Random(seed)
    alive = n
    for v in rng.sample(range(n), trials):
        state.clear()
        state["victim"] = v
        state["dead"] = set()
        t0 = sim.now
        sim.crash(v)
        alive -= 1
        while len(state["dead"]) < alive and sim.now < t0 + 300:
            sim.run_to(sim.now + 0.1)
        all_dead.append(sim.now - t0)
        first.append((state["first"] - t0) / config.probe_interval_s)
        first_ping.append((state["ping"] - t0) / config.probe_interval_s)
        state.clear()
        sim.run_to(sim.now + 20.0 + rng.uniform(0, 1.0))  # settle; next death at a random phase
    return {
        "nodes": n,
        "trials": trials,
        "all_dead_p50_s": round(_percentile(all_dead, 0.5), 2),
        "all_dead_p99_s": round(_percentile(all_dead, 0.99), 2),
        "first_detect_periods": round(sum(first) / len(first), 2),
        "first_ping_periods": round(sum(first_ping) / len(first_ping), 2),
        "swim_predicted_periods": round(math.e / (math.e - 1), 2),
    }


def false_positives(
    n: int, loss: float, paused_s: float, hours: float, seed: int = 3, **overrides: Any
) -> dict[str, Any]:
    sim = Sim(n, SwimConfig.lan(**overrides), seed, loss=loss)
    victims_dead: set[str] = set()

    def on_events(i: int, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, MemberDead):
                victims_dead.add(ev.member.node_id)

    sim.on_events = on_events
    end = hours * 3600.0
    pauses = 0
    while sim.now < end:
        step_end = min(end, sim.now + 300.0)
        if paused_s:
            sim.run_to(sim.now + 60.0)
            sim.pause(pauses % n, paused_s)
            pauses += 1
        sim.run_to(step_end)
    stats = [c.statistics() for c in sim.cores]
    return {
        "nodes": n,
        "loss": loss,
        "paused_s": paused_s,
        "pauses": pauses,
        "hours": hours,
        "count": sum(s.deaths_declared for s in stats),
        "nodes_declared_dead": len(victims_dead),
        "suspicions": sum(s.suspicions for s in stats),
        "refutations": sum(s.refutations for s in stats),
        "last_chance_probes": sim.cores[0].config.last_chance_probes,
    }


def load(n: int, seconds: float = 60.0, seed: int = 4) -> dict[str, Any]:
    sim = Sim(n, SwimConfig.lan(), seed, measure_bytes=True)
    sim.run_to(5.0)
    p0, b0, tcp0, t0 = sim.packets, sim.bytes, sim.tcp_bytes, sim.now
    sim.run_to(t0 + seconds)
    span = sim.now - t0
    tcp = (sim.tcp_bytes - tcp0) / n / span
    total = (sim.bytes - b0) / n / span
    return {
        "nodes": n,
        "packets_per_node_s": round((sim.packets - p0) / n / span, 2),
        "bytes_per_node_s": round(total, 1),
        "udp_bytes_per_node_s": round(total - tcp, 1),
        "push_pull_bytes_per_node_s": round(tcp, 1),
        "seconds": seconds,
    }


def run(quick: bool = False) -> BenchResult:
    wall0 = time.perf_counter()
    sizes = [100, 1000] if quick else [100, 1000, 10_000]
    spread_rows = [spread(n) for n in sizes]
    det = detection(100, trials=5 if quick else 20)
    hours = 0.1 if quick else 1.0
    fp_rows = [
        false_positives(100, 0.10, 0.0, hours),
        false_positives(100, 0.20, 0.0, hours),
        false_positives(100, 0.0, 5.0, hours),
        # the same 20% loss with memberlist's rule (dead as soon as the suspicion times out)
        false_positives(100, 0.20, 0.0, hours, last_chance_probes=0),
    ]
    # long enough to average over push-pull rounds (every 90 s at N=100, 180 s at N=1,000)
    load_rows = [load(100, 30 if quick else 300), load(1000, 10 if quick else 200)]
    data: dict[str, Any] = {
        "spread": spread_rows,
        "detection": det,
        "false_positives": fp_rows,
        "load": load_rows,
        **run_realtime([25, 50] if quick else [50, 100, 150, 200], window_s=5.0 if quick else 20.0,
                       converge_timeout_s=60.0 if quick else 240.0),
        "quick": quick,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "machine": machine(),
    }
    rows: list[tuple[str, str]] = []
    for r in spread_rows:
        rows.append(
            (
                f"spread N={r['nodes']}",
                f"p999 {r['p999_s']} s (memberlist model {r['memberlist_model_s']} s),"
                f" p50 {r['p50_s']} s, sim {r['wall_s']} s wall",
            )
        )
    rows.append(
        (
            f"detection N={det['nodes']}",
            f"all dead p50 {det['all_dead_p50_s']} s, p99 {det['all_dead_p99_s']} s;"
            f" first detection {det['first_detect_periods']} periods"
            f" (first ping after {det['first_ping_periods']}; SWIM 1.58)",
        )
    )
    for r in fp_rows:
        what = f"loss {r['loss']:.0%}" if r["loss"] else f"{r['pauses']} pauses of {r['paused_s']:g} s"
        if not r["last_chance_probes"]:
            what += " (memberlist's rule)"
        rows.append(
            (
                f"false positives N={r['nodes']} {what}",
                f"{r['count']} in {r['hours']} h ({r['suspicions']} suspicions, {r['refutations']} refuted)",
            )
        )
    for r in load_rows:
        rows.append(
            (
                f"load N={r['nodes']}",
                f"{r['packets_per_node_s']} packets/node/s, {r['bytes_per_node_s']} B/node/s"
                f" (UDP {r['udp_bytes_per_node_s']}, push-pull {r['push_pull_bytes_per_node_s']})",
            )
        )
    for r in data["realtime_trials"]:
        if r.get("converge_s") is None:
            detail = "did not converge in time"
        else:
            detail = (f"converged in {r['converge_s']} s; tick lateness p99 {r['lateness_p99_ms']} ms,"
                      f" max {r['lateness_max_ms']} ms; {r['suspicions']} suspicions;"
                      f" {r['packets_per_node_s']} packets/node/s")
        rows.append((f"real UDP, {r['nodes']} agents in one process", f"{'on time' if r['on_time'] else 'LATE'}: {detail}"))
    rows.append(("realtime_max_nodes", str(data["realtime_max_nodes"])))
    rows.append(("wall time", f"{data['wall_s']} s"))
    return BenchResult(name="gossip", rows=rows, data=data)
