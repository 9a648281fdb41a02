"""``meshagent bench gossip``: the membership core in virtual time (spread, detection, load).

Method
------
The sans-IO cores (``protocol.swim.Membership``) run on the one simulated network
(``sims.swimnet.SimNet``, which the membership tests use too): a discrete-event loop, no
trio, no sockets, every random choice from one seeded ``random.Random`` (reproducible).
The network here: one-way UDP delay uniform in 0.2-1 ms, independent uniform loss per
datagram; TCP never lost but each lost segment costs a 1 s retransmission timeout. Cores
start from one shared ``MemberSnapshot`` (everyone alive, incarnation 0), as after a
push-pull: no join storm, and 10,000 cores share one member table copy-on-write.

* ``spread``: N cores under the ``lan`` preset; after 2 s of warm-up one node publishes a new
  state record; p999_s is the time until 99.9% of the other nodes hold it. Beside it,
  ``memberlist_model_s``: the same run, same seed, under memberlist's own rules and its
  ``DefaultLANConfig`` (``SwimConfig.memberlist()``; the constants checked against
  memberlist's ``config.go``), computed in the run. Push-pull is left at its lan interval
  except at N=10,000, where the 5 s window is shorter than its first staggered run would
  matter and a full-state build of 10,000 members per sync only costs simulation time.
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

import math
import random
import time
from typing import Any

import attrs

from protocol.stats import percentile
from protocol.swim import MemberDead, MemberSuspect, Ping, RecordUpdated, Send, SwimConfig
from sims.bench import BenchResult, machine
from sims.bench.gossip_realtime import run_realtime
from sims.swimnet import SimNet, records

_DELAY_S = (0.0002, 0.001)


def steady(n: int, config: SwimConfig, seed: int, **kw: Any) -> SimNet:
    """N cores on the simulated LAN, all alive and known to each other."""
    return SimNet.steady(n, config, seed, delay_s=_DELAY_S, keep_events=False, **kw)


def spread(n: int, seed: int = 1, config: SwimConfig | None = None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if n >= 10_000:
        overrides["push_pull_interval_s"] = 3600.0
    config = attrs.evolve(config or SwimConfig.lan(), **overrides)
    net = steady(n, config, seed)
    net.run_to(2.0)
    origin_id = next(iter(net.cores))
    origin = net.cores[origin_id]
    got: dict[str, float] = {}

    def on_events(node_id: str, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, RecordUpdated) and ev.record.node_id == origin_id:
                got.setdefault(node_id, net.now)

    net.on_events = on_events
    t0 = net.now
    records(origin).publish(
        t0, discharge_available_w=7000.0, energy_above_min_soc_wh=20_000.0, soc=0.8,
        updated_at_ms=1_764_000_000_000,
    )
    net.after(origin_id)
    need = math.ceil(0.999 * (n - 1))
    wall = time.perf_counter()
    end = t0 + 15.0
    while len(got) < need and net.now < end:
        net.run_to(net.now + 0.05)
    times = sorted(t - t0 for t in got.values())
    p999 = times[need - 1] if len(times) >= need else math.inf
    return {
        "nodes": n,
        "p999_s": round(p999, 3),
        "p50_s": round(times[len(times) // 2], 3) if times else None,
        "reached": len(got),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def spread_side_by_side(n: int, seed: int = 1) -> dict[str, Any]:
    """Ours and memberlist's rules (``SwimConfig.memberlist``) on the same seed."""
    ours = spread(n, seed)
    model = spread(n, seed, SwimConfig.memberlist())
    return {
        **ours,
        "memberlist_model_s": model["p999_s"],
        "memberlist_model_p50_s": model["p50_s"],
        "memberlist_model_reached": model["reached"],
        "wall_s": round(ours["wall_s"] + model["wall_s"], 1),
    }


def detection(n: int = 100, trials: int = 20, seed: int = 2) -> dict[str, Any]:
    config = SwimConfig.lan()
    net = steady(n, config, seed)
    ids = list(net.cores)
    net.run_to(3.0)
    state: dict[str, Any] = {}

    def on_sends(node_id: str, sends: list[Send]) -> None:  # the first ping to the victim
        victim = state.get("victim")
        if victim is not None and "ping" not in state:
            address = net.cores[victim].me.address
            if any(s.address == address and isinstance(s.message, Ping) for s in sends):
                state["ping"] = net.now

    def on_events(node_id: str, events: list[Any]) -> None:
        victim_id = state.get("victim")
        for ev in events:
            if isinstance(ev, MemberSuspect) and ev.member.node_id == victim_id:
                if ev.accuser == node_id:
                    state.setdefault("first", net.now)
            elif isinstance(ev, MemberDead) and ev.member.node_id == victim_id:
                state["dead"].add(node_id)

    net.on_sends = on_sends
    net.on_events = on_events
    all_dead: list[float] = []
    first: list[float] = []
    first_ping: list[float] = []
    rng = random.Random(seed)
    alive = n
    for v in rng.sample(range(n), trials):
        state.clear()
        state["victim"] = ids[v]
        state["dead"] = set()
        t0 = net.now
        net.crash(ids[v])
        alive -= 1
        while len(state["dead"]) < alive and net.now < t0 + 300:
            net.run_to(net.now + 0.1)
        all_dead.append(net.now - t0)
        first.append((state["first"] - t0) / config.probe_interval_s)
        first_ping.append((state["ping"] - t0) / config.probe_interval_s)
        state.clear()
        net.run_to(net.now + 20.0 + rng.uniform(0, 1.0))  # settle; next death at a random phase
    return {
        "nodes": n,
        "trials": trials,
        "all_dead_p50_s": round(percentile(all_dead, 0.5), 2),
        "all_dead_p99_s": round(percentile(all_dead, 0.99), 2),
        "first_detect_periods": round(sum(first) / len(first), 2),
        "first_ping_periods": round(sum(first_ping) / len(first_ping), 2),
        "swim_predicted_periods": round(math.e / (math.e - 1), 2),
    }


def false_positives(
    n: int, loss: float, paused_s: float, hours: float, seed: int = 3, **overrides: Any
) -> dict[str, Any]:
    net = steady(n, SwimConfig.lan(**overrides), seed, loss=loss)
    ids = list(net.cores)
    victims_dead: set[str] = set()

    def on_events(node_id: str, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, MemberDead):
                victims_dead.add(ev.member.node_id)

    net.on_events = on_events
    end = hours * 3600.0
    pauses = 0
    while net.now < end:
        step_end = min(end, net.now + 300.0)
        if paused_s:
            net.run_to(net.now + 60.0)
            net.pause(ids[pauses % n], paused_s)
            pauses += 1
        net.run_to(step_end)
    stats = [c.statistics() for c in net.cores.values()]
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
        "last_chance_probes": net.config.last_chance_probes,
    }


def load(n: int, seconds: float = 60.0, seed: int = 4) -> dict[str, Any]:
    net = steady(n, SwimConfig.lan(), seed, measure_bytes=True)
    net.run_to(5.0)
    p0, b0, tcp0, t0 = net.packets_sent, net.bytes_sent, net.tcp_bytes_sent, net.now
    net.run_to(t0 + seconds)
    span = net.now - t0
    tcp = (net.tcp_bytes_sent - tcp0) / n / span
    total = (net.bytes_sent - b0) / n / span
    return {
        "nodes": n,
        "packets_per_node_s": round((net.packets_sent - p0) / n / span, 2),
        "bytes_per_node_s": round(total, 1),
        "udp_bytes_per_node_s": round(total - tcp, 1),
        "push_pull_bytes_per_node_s": round(tcp, 1),
        "seconds": seconds,
    }


def run(quick: bool = False) -> BenchResult:
    wall0 = time.perf_counter()
    sizes = [100, 1000] if quick else [100, 1000, 10_000]
    spread_rows = [spread_side_by_side(n) for n in sizes]
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
        # grow by 50 agents until a size is late or the stated cap (300) is reached
        **(run_realtime(25, 25, 50, window_s=5.0, converge_timeout_s=60.0) if quick
           else run_realtime(50, 50, 300, window_s=20.0, converge_timeout_s=240.0)),
        "quick": quick,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "machine": machine(),
    }
    rows: list[tuple[str, str]] = []
    for r in spread_rows:
        rows.append(
            (
                f"spread N={r['nodes']}",
                f"p999 {r['p999_s']} s, p50 {r['p50_s']} s; memberlist's rules on the same seed:"
                f" p999 {r['memberlist_model_s']} s, p50 {r['memberlist_model_p50_s']} s;"
                f" sim {r['wall_s']} s wall",
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
            detail = (f"did not converge in time (all started in {r.get('started_s')} s;"
                      f" {r.get('converge_cpu_s')} CPU s, {r.get('join_suspicions')} suspicions meanwhile)")
        else:
            detail = (f"converged in {r['converge_s']} s from the first start ({r['converge_cpu_s']} CPU s,"
                      f" {r['join_suspicions']} suspicions while joining); holding:"
                      f" tick lateness p99 {r['lateness_p99_ms']} ms, max {r['lateness_max_ms']} ms;"
                      f" {r['suspicions']} suspicions; {r['hold_cpu_share']:.0%} of a core;"
                      f" {r['packets_per_node_s']} packets/node/s")
        rows.append((f"real UDP, {r['nodes']} agents in one process", f"{'on time' if r['on_time'] else 'LATE'}: {detail}"))
    cap_note = (f"first late at {data['realtime_first_late_nodes']}" if data["realtime_first_late_nodes"]
                else f"cap {data['realtime_cap_nodes']} reached, none late")
    rows.append(("realtime_largest_on_time_nodes (largest that held)",
                 f"{data['realtime_largest_on_time_nodes']} ({cap_note})"))
    rows.append(("wall time", f"{data['wall_s']} s"))
    return BenchResult(name="gossip", rows=rows, data=data)
