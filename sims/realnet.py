"""A scenario's spike answered by complete agents in separate processes, over a real network.

Theory of operation
-------------------
``run_real(scenario, mode=...)`` plays the scenario's spike with the real agent, the one
``meshagent run`` starts (``meshagent.agent.run_agent``: membership, control loop, allocation,
its API), one per charger, on one simulated site:

* **the site** is its own process (``python -m sims.agentprocs site``): a ``SimulatedSite`` with
  the building load and one charger per agent, each with a vehicle plugged in, served over
  real Modbus TCP (``hardware.simulated.serve``) as a device on the site's network would be.
  It samples its own meter every ``SAMPLE_S`` on CLOCK_MONOTONIC and steps the building load
  when told; every agent reads that meter and drives its charger through the Modbus drivers.
* **the agents** live in worker processes (``python -m sims.agentprocs worker``), each hosting
  a share of them in one trio loop, as ``bench allocation`` spreads its agents
  (``sims.procs``: the same line protocol over stdin/stdout, the same ``Child``):

  - ``real-network``: the detector in a process of its own, the other agents in ``workers``
    processes (default: one per ``AGENTS_PER_WORKER`` and at least 2; ``nice`` MEMBER_NICE so
    the detector and the site are not starved by them), agent i on its own loopback address
    127.86.P.(i+1) (127.87.P.x past 240), UDP and TCP port 7946 (P from the pid, so two runs
    do not collide). A few processes rather than one per agent: at a few hundred agents, a
    process each would spend the machine on interpreters (about 60 MB and a second of
    imports apiece) rather than on the agents; 25 agents rather than 50 to a trio loop
    shortens each loop's queue (at 100 agents, 4 workers had every member answer the plan
    where 2 had 1-57 of 99; 2026-12-03, loaded machine);
  - ``netns``: one namespace per agent (``sims.netns``: veth pairs to a bridge, 10.X.Y.0/24),
    and so one process per agent (a process lives in one namespace); loss and partitions are
    nftables rules between the namespaces. The site is served on the bridge's address.

Certificates come from an operator CA made for the run (``meshagent.trust.keystore``, in a
temporary directory, as ``meshagent enroll`` writes them); the first agent of each group of
the scenario's partition (agent 0 when there is none) has the ``detector`` role.

The spike is the scenario's compressed (``spike_of``): the site is the scenario's at N
chargers (``Scenario.with_overrides(nodes=N)``: limit and building load scale with N), and
its surges (vehicles arriving on the site's other chargers) arrive as one step of the
building load of ``count x charger_kw``, all at once: the worst case of the surge window. A
``kill_nodes`` event kills that fraction of the agents (their chargers keep their last
setpoint until it reverts) ``KILL_AFTER_S`` into the spike; a ``partition`` before the surge
cuts the mesh (``netns`` only: the rules are nftables) ``PARTITION_LEAD_S`` before the step.
A scenario whose event is a generator trip (no surge) plays it as a frequency event instead:
the site process steps the area's frequency model (``sims.grid.frequency.Area``, every
``AREA_DT_S``) from the trip on, with the chargers' response fed back (``drive_frequency``),
and serves that frequency on the meter and the chargers, so the agents' IEEE 1547 droop and the
detector's frequency-scope plan run over the real network; the report adds
``frequency_nadir_hz`` and ``rocof_hz_per_s`` (``mesh``: the meter's trace; ``none``: the same
model with no response). A scenario with neither (the CSMS-outage day) is refused with one line.

The report has the fleet runner's shape for what is measured: per baseline
``spike_to_response_s`` (from the step to the first meter sample at or under
``limit + 10 % of the deficit``: the applied response covers 90 % of the need, the fleet's
rule), ``peak_site_kw`` against ``site_limit_kw``, ``limits_violated`` (over the limit for
more than 2 s, counted in episodes), ``messages_per_node`` and ``bytes_per_node`` (every
datagram the agents' transports sent, from their start to the end of the hold, over N);
``none`` is the same meter with every charger's measured power taken out (computed from the
same run, as the demo's). With ``real-network``, ``central`` sits between them: its OCPP
dispatch timed for real after the agents have stopped (``_central``). ``runner`` says which
runner produced the report and how; ``detector_spikes`` what each detector planned, round by
round (its own ``GET /v1/spikes``): why a mesh missed is read there first.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from meshagent.errors import MeshagentError
from sims.agentprocs import AREA_DT_S, SAMPLE_S, SITE, charger_unit
from sims.procs import Child, ChildFailed, TimedOut, slices, stop_all
from sims.scenario import Scenario, ScenarioError, load_scenario

PORT = 7946
API_PORT = 7947
TOLERANCE_S = 2.0  # over the limit for longer than this is a violation (sims.fleet's rule)
KILL_AFTER_S = 1.0
JOIN_S_PER_AGENT = 1.0
MEMBER_NICE = 5
AGENTS_PER_WORKER = 25
ROCOF_WINDOW_S = 0.1  # five of the area's steps
PARTITION_LEAD_S = 2.0
HOLD_S = 6.0  # the spike is held this long after the step
MAX_AGENTS = 480  # real-network: 127.86-87.P.1-240 (the site serves 236 chargers per Modbus server)
MAX_NETNS = 236  # netns: one /24 on the bridge
SMALL_MESH = 40  # up to this many agents: members read the meter every 100 ms, the preset as it is
# Every agent reads the site meter over Modbus TCP from one server. The detector polls it every
# 10 ms as in production; the others every 100 ms (enough for their droop and their offers) and
# their vehicle, thermal sensor and tamper switch every second, so N agents do not spend the
# site's one server on round trips (at 20 agents on a loaded machine, reading those every 100 ms
# stretched the members' cycles to about 1 s; every second, to 155 ms), and allow 1 s of silence
# before ERR_SENSOR_LOST. Past SMALL_MESH agents, where 25 of them share a worker's trio loop and
# the CPU is the limit (a member costs about 23 ms of CPU a second at 40, three quarters of it the
# mesh), members read the meter every 500 ms with 5 s of silence allowed, and the mesh gossips
# every 500 ms and probes every 2 s (member_control, mesh_knobs): the product's knobs, set for a
# simulator that packs agents onto two cores (BENCHMARKS.md, "sim --real-network at 40-200
# agents"). Telemetry every 10 s (each line is JSON work in a shared process). Round 2 waits
# 500 ms for ACKs from processes that share the cores (late ACKs: docs/allocation.md, "Known
# limits").
MEMBER_CONTROL = 'meter_period = "{period}"\ndevice_period = "1s"\nsensor_timeout = "{timeout}"\ntelemetry_period = "10s"\n'
DETECTOR_CONTROL = 'spike_update_settle = "300ms"\nsensor_timeout = "1s"\n'
DETECTOR_ALLOCATION = 'round2_after = "500ms"\n'


def member_control(n: int) -> dict[str, str]:
    """The members' meter period and sensor timeout at N agents (see MEMBER_CONTROL)."""
    return {"period": "100ms", "timeout": "1s"} if n <= SMALL_MESH else {"period": "500ms", "timeout": "5s"}


def mesh_knobs(n: int) -> str:
    """The membership knobs written into every node.toml at N agents (see MEMBER_CONTROL)."""
    return "" if n <= SMALL_MESH else 'gossip_interval = "500ms"\nprobe_interval = "2s"\n'


@attrs.frozen
class SpikePlan:
    """The scenario's spike as this runner plays it."""

    nodes: int
    limit_w: float
    building_w: float
    step_w: float  # the surge, all at once
    transformers: int
    transformer_w: float
    nominal_hz: float
    kill_fraction: float  # of the agents, KILL_AFTER_S into the spike
    partition_groups: int  # 1: no partition
    trip_mw: float = 0.0  # a generator trip in the area instead of a surge (0: none)
    area: tuple[float, ...] = ()  # base_mw, inertia_h_s, damping_d_pu, droop_r_pu, governor_tg_s, fleet_share

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def group_of(self, i: int) -> int:
        return i * self.partition_groups // self.nodes

    def detectors(self) -> list[int]:
        return sorted({min(i for i in range(self.nodes) if self.group_of(i) == g) for g in range(self.partition_groups)})


def spike_of(sc: Scenario) -> SpikePlan:
    """The spike of ``sc`` (already at its size); ScenarioError if it has none to play."""
    site = sc["site"]
    surges = [e for e in sc.events if e.kind == "surge"]
    trips = [e for e in sc.events if e.kind == "generator_trip"]
    if not surges and not trips:
        raise ScenarioError(f"{sc.name}: no surge or generator trip: the real-network runners play a site spike "
                            "or a frequency event (run this scenario without --real-network/--netns)")
    first_surge = min(e.at_s for e in surges) if surges else min(e.at_s for e in trips)
    area = sc["area"]
    kills = [e for e in sc.events if e.kind == "kill_nodes"]
    parts = [e for e in sc.events if e.kind == "partition" and e.at_s <= first_surge]
    heals = [e for e in sc.events if e.kind == "heal" and e.at_s <= first_surge]
    groups = int(parts[-1].args["groups"]) if parts and not (heals and heals[-1].at_s >= parts[-1].at_s) else 1
    n = int(sc["scenario"]["nodes"])
    return SpikePlan(
        nodes=n,
        limit_w=float(site["limit_kw"]) * 1000,
        building_w=float(site["base_load_kw"]) * 1000,
        step_w=math.fsum(float(e.args["count"]) * float(site["charger_kw"]) * 1000 for e in surges),
        transformers=int(site["transformers"]),
        transformer_w=float(site["transformer_kva"]) * 1000,
        nominal_hz=float(sc["area"]["nominal_hz"]),
        kill_fraction=max((float(e.args["fraction"]) for e in kills), default=0.0),
        partition_groups=min(groups, n),
        trip_mw=0.0 if surges else math.fsum(float(e.args["mw"]) for e in trips),
        area=tuple(float(area[k]) for k in ("base_mw", "inertia_h_s", "damping_d_pu", "droop_r_pu",
                                             "governor_tg_s", "fleet_share")),
    )


# --- the parent ------------------------------------------------------------------------------


def _config(directory: Path, node_id: str, host: str, seed: str | None, site_host: str, ports: list[int], unit: int,
            plan: SpikePlan, detector: bool, preset: str) -> Path:
    cfg = directory / "node.toml"
    server, unit_id = charger_unit(unit)
    ratings = ", ".join(f'"tx-{t + 1}={plan.transformer_w / 1000:g}kW"' for t in range(plan.transformers))
    cfg.write_text(
        f'[node]\nid = "{node_id}"\n\n'
        f'[mesh]\npreset = "{preset}"\n{mesh_knobs(plan.nodes)}bind = "{host}:{PORT}"\napi = "{host}:{API_PORT}"\n'
        f'seeds = [{json.dumps(seed) if seed else ""}]\n\n'
        f'[devices]\nmeter = "modbus+tcp://{site_host}:{ports[server]}/1"\n'
        f'charger = "modbus+tcp://{site_host}:{ports[server]}/{unit_id}"\n\n'
        f'[control]\nPEAK_LOAD_LIMIT = "{plan.limit_w / 1000:g}kW"\nnominal_frequency = "{plan.nominal_hz:g}Hz"\n'
        + (DETECTOR_CONTROL if detector else MEMBER_CONTROL.format(**member_control(plan.nodes)))
        + f'\n[allocation]\ntransformers = [{ratings}]\n' + (DETECTOR_ALLOCATION if detector else "")
    )
    return cfg


def frequency_of(nominal_hz: float, steps: list[float]) -> dict[str, Any]:
    """Nadir and the steepest fall over ROCOF_WINDOW_S (RoCoF) of the area's frequency, one
    value per AREA_DT_S from the trip (before it: nominal)."""
    f = [nominal_hz, *steps]
    k = round(ROCOF_WINDOW_S / AREA_DT_S)
    rocof = min(((f[i] - f[i - k]) / ROCOF_WINDOW_S for i in range(k, len(f))), default=0.0)
    return {"frequency_nadir_hz": round(min(f), 4), "rocof_hz_per_s": round(rocof, 4)}


def area_without_response(plan: SpikePlan, hold_s: float) -> dict[str, Any]:
    """``none``: the same area model and trip with no response from the chargers."""
    from sims.grid.frequency import Area, AreaParams

    base_mw, h, d, r, tg, _share = plan.area
    model = Area(AreaParams(base_mw, h, d, r, tg, plan.nominal_hz), AREA_DT_S)
    return frequency_of(plan.nominal_hz, [model.step(plan.trip_mw) for _ in range(round(hold_s / AREA_DT_S))])


def measure(samples: list[list[Any]], step_at: float, limit_w: float, baseline: str) -> dict[str, Any]:
    """The fleet runner's measured figures from the site's meter trace (``none``: the meter
    with every charger's power taken out)."""
    t = [s[0] for s in samples]
    load = [s[1] if baseline == "mesh" else s[1] - math.fsum(s[3]) for s in samples]
    after = [k for k, x in enumerate(t) if x >= step_at]
    latencies: list[float] = []
    if after:
        peak_after = max(load[k] for k in after[: max(1, int(0.2 / SAMPLE_S))])  # the step, as the meter saw it
        deficit = peak_after - limit_w
        if deficit > 0:
            for k in after:
                if load[k] <= limit_w + 0.1 * deficit:
                    latencies.append(t[k] - step_at)
                    break
    violations, over_since = 0, None
    for k, x in enumerate(load):
        if x > limit_w + 1e-6:
            if over_since is None:
                over_since = t[k]
                counted = False
            if not counted and t[k] - over_since > TOLERANCE_S:
                violations, counted = violations + 1, True
        else:
            over_since = None
    discharged = [math.fsum(max(0.0, -w) for w in s[3]) for s in samples]
    return {
        "spike_to_response_s": {
            "p50": round(latencies[0], 4) if latencies else None,
            "max": round(latencies[0], 4) if latencies else None,
            "episodes": len(latencies),
        },
        "peak_site_kw": round(max(load) / 1000, 2) if load else None,
        "site_limit_kw": round(limit_w / 1000, 3),
        "limits_violated": violations,
        "peak_discharge_kw": round(max(discharged) / 1000, 2) if baseline == "mesh" and discharged else 0.0,
    }


def join_timeout_for(n: int) -> float:
    """How long N agents get to start and to see each other and every offer: a minute and
    JOIN_S_PER_AGENT a second an agent (a worker starts its agents one after the other; at 100
    on the loaded machine, 35 s to start and 57 s to join in one run, over 60 s to start in
    the next: BENCHMARKS.md)."""
    return 60.0 + JOIN_S_PER_AGENT * n


class RunFailed(MeshagentError):
    """The agents did not come up, or a process misbehaved (its stderr in the message)."""


def run_real(
    scenario: str | Path | Scenario,
    *,
    mode: str = "real-network",
    nodes: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    loss_pct: float = 0.0,
    hold_s: float = HOLD_S,
    join_timeout_s: float | None = None,
    central: bool = True,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Play the scenario's spike with real agents in separate processes; return the report."""
    if mode not in ("real-network", "netns"):
        raise ValueError(f"unknown real runner {mode!r}")
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    sc = sc.with_overrides(nodes=nodes, seed=seed)
    plan = spike_of(sc)
    most = MAX_AGENTS if mode == "real-network" else MAX_NETNS
    if not 2 <= plan.nodes <= most:
        raise ScenarioError(f"--nodes: the {mode} runner takes 2 to {most} agents, got {plan.nodes}")
    if plan.partition_groups > 1 and mode != "netns":
        raise ScenarioError(f"{sc.name}: a partition is made with nftables between namespaces: run it with --netns")
    if loss_pct and mode != "netns":
        raise ScenarioError("--loss: random drop is an nftables rule between namespaces: add --netns")
    if mode == "netns":
        from sims import netns

        why = netns.available()
        if why is not None:
            raise ScenarioError(why)
    note = progress or (lambda _line: None)
    wall = time.perf_counter()
    lab: Any = None
    children: list[Child] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="meshagent-sim-") as tmp:
        try:
            if mode == "netns":
                from sims.netns import NetnsLab

                lab = NetnsLab(plan.nodes).__enter__()
                hosts, site_host = lab.addresses, lab.gateway
            else:
                pid = os.getpid() % 250
                hosts = [f"127.{86 + i // 240}.{pid}.{i % 240 + 1}" for i in range(plan.nodes)]
                site_host = f"127.86.{pid}.250"
            report = _play(sc, plan, mode, hosts, site_host, lab, Path(tmp), children, workers, loss_pct,
                           hold_s, join_timeout_s, note)
            stop_all(children)  # the agents and the site first: the central side times on a machine they left
            children.clear()
            if central and mode == "real-network" and not plan.trip_mw:  # central dispatch answers a site spike
                report["baselines"] = {"none": report["baselines"]["none"],
                                       "central": _central(sc, plan, report, note),
                                       "mesh": report["baselines"]["mesh"]}
        except ChildFailed as exc:
            failed = True
            raise RunFailed(f"{mode}: {exc}") from None
        finally:
            note("stopping the processes")
            stop_all(children, grace_s=0.5 if failed else 5.0)  # a failed run's children may be deaf
            note("stopped")
            if lab is not None:
                lab.close()
    traces = _traces(report.pop("_samples"), report.pop("_step_at"), plan, report["baselines"],
                     report.pop("_central_series", None))
    report["wall_s"] = round(time.perf_counter() - wall, 3)
    if out is not None:
        from sims.report import write_json

        report["files"] = {"json": str(out / "report.json")}
        if traces:
            from sims.report import write_plots

            report["files"]["plots"] = str(write_plots(traces, out, f"{sc.name}: {report['runner']}"))
        write_json(report, out)
    return report


def _play(sc: Scenario, plan: SpikePlan, mode: str, hosts: list[str], site_host: str, lab: Any, tmp: Path,
          children: list[Child], workers: int | None, loss_pct: float, hold_s: float, join_timeout_s: float | None,
          note: Callable[[str], None]) -> dict[str, Any]:
    from meshagent.trust import keystore

    n = plan.nodes
    site = Child("site", "sims.agentprocs", ["site", site_host, str(n), repr(plan.building_w), repr(plan.nominal_hz)],
                 prefix=lab.hub_prefix() if lab is not None else ())
    children.append(site)
    host, port_list = site.expect("ready", time.monotonic() + 30)
    ports = [int(p) for p in port_list.split(",")]
    ca = keystore.ca_init(tmp / "ca")
    detectors = plan.detectors()
    preset = "local" if n <= 32 else "lan"
    configs = []
    for i in range(n):
        node_id = f"agent-{i:03d}"
        bundle = keystore.enroll(ca, node_id, tmp / node_id, site_id=SITE,
                                 transformer_id=f"tx-{i % plan.transformers + 1}",
                                 roles=("detector",) if i in detectors else ())
        seed = None if i == 0 else f"{hosts[0]}:{PORT}"
        configs.append(str(_config(bundle.directory, node_id, hosts[i], seed, host, ports, i, plan, i in detectors,
                                   preset)))
    if mode == "netns":
        shares = [[i] for i in range(n)]
        prefixes = [lab.exec_prefix(i) for i in range(n)]
        runner = (f"netns: {n} agents, one process each in its own network namespace (veth to a bridge, "
                  f"{lab.subnet}), real UDP/TCP port {PORT}; site over Modbus TCP on the bridge"
                  + (f"; nftables: {loss_pct:g} % random drop of mesh datagrams" if loss_pct else "")
                  + (f"; nftables partition in {plan.partition_groups}" if plan.partition_groups > 1 else ""))
    else:
        # the detectors in a process of their own (the product runs each agent on its own
        # CPU): in a worker's one trio loop, a detector's 10 ms meter cycle would wait its
        # turn behind every other agent's tasks there
        members = [i for i in range(n) if i not in detectors]
        count = workers if workers is not None else max(2, math.ceil(len(members) / AGENTS_PER_WORKER))
        shares = [detectors, *([members[i] for i in part] for part in slices(len(members), max(1, min(count, len(members)))))]
        # the members' workers yield the CPU to the detector and the site (nice): on a machine
        # with fewer cores than processes, a starved detector or site is the simulator's
        # artefact (the product's detector has its CPU; the site is physics), while a member
        # agent here shares a core with a whole worker's others anyway
        prefixes = [[], *(["nice", "-n", str(MEMBER_NICE)] for _ in shares[1:])]
        runner = (f"real-network: {n} agents over real UDP/TCP on 127.86.{hosts[0].split('.')[2]}.x:{PORT}, "
                  f"the detector{'s' if len(detectors) > 1 else ''} in a process of {'their' if len(detectors) > 1 else 'its'} "
                  f"own and the other {len(members)} in {len(shares) - 1} worker processes (nice {MEMBER_NICE}); the site over Modbus TCP "
                  f"({len(ports)} server{'s' if len(ports) > 1 else ''}) in its own process")
    started = time.monotonic()
    note(f"starting {n} agents ({runner.split(':')[0]})")
    agents: list[Child] = []
    for w, (share, prefix) in enumerate(zip(shares, prefixes, strict=True)):
        child = Child(f"agents-{w}", "sims.agentprocs", ["worker", str(n), *(configs[i] for i in share)], prefix=prefix)
        children.append(child)
        agents.append(child)
    # all at once: an agent whose seed is not up yet keeps retrying it (MeshNode.join)
    if join_timeout_s is None:
        join_timeout_s = join_timeout_for(n)
    deadline = started + join_timeout_s
    for child in agents:
        child.expect("started", deadline)
    note(f"{n} agents started in {time.monotonic() - started:.1f} s")
    try:
        for child in agents:
            child.expect("ready", deadline)
    except TimedOut:
        raise RunFailed(f"the {n} agents did not all see each other and every offer within {join_timeout_s:g} s "
                        f"({_live(agents)})") from None
    joined_s = time.monotonic() - started
    note(f"{n} agents joined in {joined_s:.1f} s")
    cpu_joined = _cpu([site, *agents])
    if loss_pct:
        lab.loss(loss_pct)
    site.send("record")
    site.expect("recording", time.monotonic() + 10)
    if plan.partition_groups > 1:
        lab.partition([plan.group_of(i) for i in range(n)])
        note(f"partitioned in {plan.partition_groups}")
        time.sleep(PARTITION_LEAD_S)
    else:
        time.sleep(0.5)  # a few meter samples before the step
    if plan.trip_mw:
        site.send("trip " + " ".join(repr(x) for x in (plan.trip_mw, *plan.area)))
        step_at = float(site.expect("tripped", time.monotonic() + 10)[0])
        note(f"frequency event: {plan.trip_mw:g} MW of generation trips in the area")
    else:
        site.send(f"step {plan.step_w!r}")
        step_at = float(site.expect("stepped", time.monotonic() + 10)[0])
        note(f"spike: the building steps by {plan.step_w / 1000:g} kW")
    killed: list[int] = []
    if plan.kill_fraction > 0:
        time.sleep(KILL_AFTER_S)
        count = round(plan.kill_fraction * n)
        killed = [i for i in range(n - 1, -1, -1) if i not in detectors][:count]
        for child, share in zip(agents, shares, strict=True):
            local = [str(k) for k, i in enumerate(share) if i in killed]
            if local:
                child.send(f"kill {','.join(local)}")
                child.expect("killed", time.monotonic() + 10)
        note(f"killed {len(killed)} agents")
    time.sleep(max(0.0, step_at + hold_s - time.monotonic()))
    cpu_end = _cpu([site, *agents])
    site.send("trace")
    samples = json.loads(site.read_line(time.monotonic() + 30).split(" ", 1)[1])
    sent = byts = 0
    live: dict[str, int] = {}
    faulted: dict[str, int] = {}
    for child in agents:
        child.send("stats")
        rows = json.loads(child.read_line(time.monotonic() + 10).split(" ", 1)[1])
        for node_id, datagrams, nbytes, live_now, faults in rows:
            sent, byts = sent + datagrams, byts + nbytes
            live[node_id] = live_now
            for code in faults or ():
                faulted[code] = faulted.get(code, 0) + 1
    window_s = time.monotonic() - started
    planned = _detector_spikes(agents, shares, detectors)
    loops = _control_loops(agents, shares)
    site.send("requests")
    modbus_requests = int(site.expect("requests", time.monotonic() + 10)[0])
    dropped = lab.dropped() if lab is not None else None
    baselines = {b: measure(samples, step_at, plan.limit_w, b) for b in ("none", "mesh")}
    if plan.trip_mw:
        site.send("area")
        steps = json.loads(site.read_line(time.monotonic() + 30).split(" ", 1)[1])[: round(hold_s / AREA_DT_S)]
        baselines["mesh"].update(frequency_of(plan.nominal_hz, [f for f, _late in steps]))
        baselines["mesh"]["area_steps_late_max_s"] = round(max((late for _f, late in steps), default=0.0), 4)
        baselines["none"].update(area_without_response(plan, hold_s))
    baselines["mesh"]["messages_per_node"] = round(sent / n, 2)
    baselines["mesh"]["bytes_per_node"] = round(byts / n, 1)
    baselines["none"]["messages_per_node"] = baselines["none"]["bytes_per_node"] = 0.0
    return {
        "scenario": sc.name,
        "description": sc.description,
        "nodes": n,
        "seed": int(sc["scenario"]["seed"]),
        "level": "packet",
        "runner": runner,
        "mode": mode,
        "spike": {**plan.as_dict(), "detectors": [f"agent-{i:03d}" for i in detectors],
                  "killed": [f"agent-{i:03d}" for i in killed], "hold_s": hold_s, "loss_pct": loss_pct,
                  "compressed": "the scenario's surges arrive as one step of the building load"},
        "joined_s": round(joined_s, 2),
        "live_members_seen_at_end": live,
        "detector_spikes": planned,
        "faults_at_end": faulted,
        "control_loops": loops,
        "cpu_share": {child.name: {"join": round(cpu_joined[child.name][0] / joined_s, 2),
                                   "spike": round((cpu_end[child.name][0] - cpu_joined[child.name][0])
                                                  / (cpu_end[child.name][1] - cpu_joined[child.name][1]), 2)}
                      for child in [site, *agents]},
        "modbus_requests_per_s": round(modbus_requests / (time.monotonic() - started), 1),
        "nftables_dropped": dropped,
        "traffic_window_s": round(window_s, 2),
        "baselines": baselines,
        "_samples": samples,
        "_step_at": step_at,
    }


CENTRAL_TRIALS = 3
CENTRAL_DEADLINE_S = 10.0
CENTRAL_STATION_PROCESSES = 2


def _central(sc: Scenario, plan: SpikePlan, report: dict[str, Any], note: Callable[[str], None]) -> dict[str, Any]:
    """The central baseline for the same spike: its dispatch timed for real, the rest stated.

    A CSMS process sends SetChargingProfile to N OCPP stations over real WebSockets on
    loopback (``sims.bench.allocation_central``, what ``bench allocation`` times), the shares
    of the spike's deficit by the same allocation, ``CENTRAL_TRIALS`` times. Its response
    lands ``meter wait + dispatch + inverter`` after the step: the CSMS reads the site meter
    every ``central_meter_interval_s``, so the step waits a seeded-uniform part of it; the
    dispatch is the median measured here; the inverter's transition is the design bound
    (``sims.calibration``). The site series is the ``none`` trace with the deficit covered
    from that moment: the stations here are OCPP endpoints, not the site's chargers.
    """
    import random

    from sims import calibration as cal
    from sims.bench.allocation_central import CentralFleet

    n = plan.nodes
    deficit_w = plan.building_w + plan.step_w - plan.limit_w
    note(f"central: timing {CENTRAL_TRIALS} OCPP dispatches to {n} stations")
    fleet = CentralFleet(n, CENTRAL_STATION_PROCESSES, CENTRAL_DEADLINE_S)
    try:
        dispatch_ms = sorted(fleet.spike_ms(k, max(deficit_w, 1.0), CENTRAL_DEADLINE_S) for k in range(CENTRAL_TRIALS))
    finally:
        fleet.close()
    interval_s = float(sc["response"]["central_meter_interval_s"])
    wait_s = random.Random(int(sc["scenario"]["seed"])).uniform(0.0, interval_s)
    dispatch_s = dispatch_ms[len(dispatch_ms) // 2] / 1000
    samples, step_at = report["_samples"], report["_step_at"]
    lands_at = step_at + wait_s + dispatch_s + cal.INVERTER_MAX_S
    covered = max(0.0, deficit_w)
    series = [[t, (load - math.fsum(ch)) - (covered if t >= lands_at else 0.0), f, ch] for t, load, f, ch in samples]
    totals = measure([[t, load, f, []] for t, load, f, _ch in series], step_at, plan.limit_w, "mesh")
    totals["peak_discharge_kw"] = round(covered / 1000, 2)
    totals["messages_per_node"] = 2.0  # one CALL and its CALLRESULT per charger
    totals["bytes_per_node"] = float(cal.SET_PROFILE_BYTES)
    totals["central_dispatch_ms"] = {"measured": [round(x, 2) for x in dispatch_ms], "median": round(dispatch_s * 1000, 2)}
    totals["source"] = (f"dispatch timed for real: a CSMS and {n} OCPP 2.0.1 stations over WebSockets on loopback "
                        f"({CENTRAL_STATION_PROCESSES} station processes), median of {CENTRAL_TRIALS}; meter wait "
                        f"{wait_s:.3f} s of the {interval_s:g} s interval (seeded); inverter {cal.INVERTER_MAX_S:g} s "
                        "(design bound); the site series is the none trace with the deficit covered from then")
    report["_central_series"] = series
    return totals


def _detector_spikes(agents: list[Child], shares: list[list[int]], detectors: list[int]) -> dict[str, Any]:
    """What each detector planned (its ``GET /v1/spikes``, newest first), in brief: per spike,
    its rounds' deficit, answered, silent, applied and residual. Why a mesh did not answer
    is read here first."""
    out: dict[str, Any] = {}
    for child, share in zip(agents, shares, strict=True):
        local = [k for k, i in enumerate(share) if i in detectors]
        if not local:
            continue
        child.send(f"api /v1/spikes {','.join(map(str, local))}")
        bodies = json.loads(child.read_line(time.monotonic() + 30).split(" ", 1)[1])
        for k, body in zip(local, bodies, strict=True):
            name = f"agent-{share[k]:03d}"
            if not isinstance(body, dict) or "spikes" not in body:
                out[name] = body
                continue
            out[name] = [
                {"spike_id": sp.get("spike_id"),
                 "rounds": [{key: r.get(key) for key in ("deficit_w", "answered", "silent", "applied_w", "residual_w")}
                            for r in sp.get("rounds", [])[:4]]}
                for sp in body["spikes"][:4]
            ]
    return out


LOOP_KEYS = ("cycles", "missed_periods", "cycle_p50_ms", "cycle_p99_ms", "cycle_max_ms", "jitter_p99_ms",
             "jitter_max_ms", "meter_faults", "meter_missed_periods", "device_faults", "last_device_fault")


def _control_loops(agents: list[Child], shares: list[list[int]]) -> dict[str, Any]:
    """The control loop of the first agent in each process (its ``GET /v1/stats``): whether
    the loops kept their period is read here (a member whose cycle overran its sensor
    timeout latched ERR_SENSOR_LOST and offers nothing: see ``faults_at_end``)."""
    out: dict[str, Any] = {}
    for child, share in zip(agents, shares, strict=True):
        if not share:
            continue
        child.send("api /v1/stats 0")
        body = json.loads(child.read_line(time.monotonic() + 30).split(" ", 1)[1])[0]
        control = body.get("control") if isinstance(body, dict) else None
        out[f"agent-{share[0]:03d}"] = ({k: control.get(k) for k in LOOP_KEYS} if isinstance(control, dict)
                                        else body)
    return out


def _cpu(children: list[Child]) -> dict[str, tuple[float, float]]:
    """Each process's CPU seconds so far and when (its ``time.monotonic()``)."""
    out = {}
    for child in children:
        child.send("cpu")
        used, at = child.expect("cpu", time.monotonic() + 30)
        out[child.name] = (float(used), float(at))
    return out


def _live(agents: list[Child]) -> str:
    seen = []
    for child in agents:
        try:
            child.send("stats")
            line = child.read_line(time.monotonic() + 5)
            if line.startswith("stats "):
                seen += [row[3] for row in json.loads(line.split(" ", 1)[1])]
        except Exception:  # a diagnosis; the failure is reported anyway
            continue
    return f"fewest live members seen by an agent: {min(seen) if seen else 'unknown'}"


def _traces(samples: list[list[Any]], step_at: float, plan: SpikePlan, totals: dict[str, Any],
            central: list[list[Any]] | None) -> list[Any]:
    """The meter trace as ``sims.fleet.Trace`` columns for ``sims.report.write_plots`` (no
    transformer model here: those panels are left empty)."""
    try:
        import numpy as np

        from sims.fleet import Trace
    except ImportError:  # the sim extra is absent: the JSON report still stands
        return []
    t = np.asarray([s[0] - step_at for s in samples])
    freq = np.asarray([s[2] for s in samples])
    chargers = np.asarray([s[3] for s in samples]).reshape(len(samples), -1)
    blank = np.full(len(samples), np.nan)
    out = []
    for b in totals:
        site_kw = np.asarray([s[1] for s in (central if b == "central" and central else samples)]) / 1000
        if b == "none":
            site_kw = site_kw - chargers.sum(axis=1) / 1000
        node = np.maximum(-chargers[:, :48], 0.0) / 1000 if b == "mesh" else np.zeros((len(samples), 0))
        out.append(Trace(b, t, site_kw, plan.limit_w / 1000, freq, blank, blank, node, totals[b]))
    return out
