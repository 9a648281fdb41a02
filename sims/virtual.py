"""The packet level in virtual time: N complete agents on one simulated site, one process.

Theory of operation
-------------------
``run_packet(scenario, nodes=..., seed=...)`` runs the scenario's world with every charger's
agent assembled as ``meshagent run`` assembles it, under ``trio.testing.MockClock``:

* the mesh: a ``MeshNode`` per charger (Ed25519 on every packet, certificates from the
  deterministic ``sims.testpki``), on ``meshagent.transport.memory`` (one-way delay 0.2-1 ms
  as ``bench gossip``'s LAN; ``link=`` sets loss, delay, duplication), all joined through
  node 0 before the scenario starts (or, ``warm=True``, started with the membership formed:
  ``sims.packet.warm_snapshot``; docs/simulation.md §10);
* the control loop and the allocation: ``meshagent.agent.run_control``, the agent's own
  wiring (``ControlLoop`` on ``sim://`` devices, the ``Allocator`` with the loop's
  ``set_share``, the offer published as the state record), each agent handed the one shared
  ``SimWorld`` exactly as ``run_agent(sim_world=...)`` does for ``meshagent demo``. Node 0's
  certificate carries the ``detector`` role (and, in a scenario that partitions the mesh, the
  first node of each part's): its loop's spikes plan over the others;
* the world: one ``SimulatedSite`` whose meter measures the building, the scenario's arrivals
  and every agent's charger. Each charger has a V2G vehicle parked (model and SoC drawn from
  the seed), which is what the mesh can discharge; a surge's vehicles arrive on the site's
  other chargers as uncontrolled load (evenly over the window, as the fleet level counts
  them); a generator trip drives the area frequency (``sims.grid.frequency``, the agents'
  discharge fed back at the scenario's ``fleet_share``) which the meter reports; ``kill_nodes``
  cancels agents, never a detector (their inverters keep their last setpoint); ``partition``
  cuts the in-memory network by index, ``heal`` lifts it. CSMS events have nothing to act on
  here (no CSMS in this runner): billing is not measured.

Every control loop runs on one 10 ms grid (they start at the same virtual instant), so the
meter is read by N agents at the same instants: the site computes one sample per instant and
hands it to every reader (``_SharedMeterSite``), as one meter's registers would be, instead
of advancing N chargers N times.

What is measured (``totals``, the fleet runner's shape plus packet-level keys):

* ``spike_to_response_s``: as the fleet level: from the first 10 ms sample where the
  uncontrolled load (meter less every agent's charger) needs a response until the agents'
  response covers 90 % of it;
* ``spike_to_applied_ms``: from that first sample to each member's inverter write of its
  share of the first plan that followed (its ``set_power``, virtual ms): ``p50`` and ``max``
  over members, per episode, and ``plan_s`` (first sample to the detector's plan);
* peak site load against the limit, transformer loading and hot spot (C57.91 on the
  sampled loads), frequency nadir and RoCoF, limits violated (over 2 s, the fleet's rule);
* ``messages_per_node`` / ``bytes_per_node``: datagrams each agent's transport sent during
  the scenario (membership, records, PLANs, ACKs; TCP push-pull streams are not counted).

Deterministic for a seed within one interpreter: the network's RNG, every node's RNG, the
vehicles, and trio's own scheduling order are all seeded (across interpreters also fix
PYTHONHASHSEED, as for ``sims.packet``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from hardware.simulated.charger import SimulatedCharger
from hardware.simulated.site import MeterSnapshot, SimulatedSite, SimWorld
from sims.collector import many_objects
from sims.packet import warm_snapshot
from sims.scenario import Scenario, load_scenario
from sims.testpki import NOW_MS, Pki

SITE = "site-1"
PERIOD_S = 0.010  # the world's sampling grid: the control loops' meter period
JOIN_TIMEOUT_S = 900.0
SETTLE_S = 3.0  # after the loops start: first records published and gossiped (record_period 1 s)
TOLERANCE_S = 2.0  # a limit exceeded for longer than this is a violation (the fleet's rule)
VEHICLES = ("nissan-leaf-40", "ford-f150-lightning-er", "mitsubishi-outlander-phev")


@attrs.define(eq=False)
class _SharedMeterSite(SimulatedSite):
    """One meter sample per instant, whoever reads it (see the module docstring)."""

    _cached: MeterSnapshot | None = attrs.field(init=False, default=None)

    def snapshot(self) -> MeterSnapshot:
        c = self._cached
        if c is not None and c.taken_at_s == self.clock() and self.frozen is None:
            return c
        snap = super().snapshot()
        self._cached = snap
        return snap

    def set_grid(self, *, frequency_hz: float | None = None, voltage_v: float | None = None) -> None:
        self._cached = None
        super().set_grid(frequency_hz=frequency_hz, voltage_v=voltage_v)


@attrs.define(eq=False)
class _TimedCharger(SimulatedCharger):
    """A simulated charger that notes when its setpoint was written (virtual time)."""

    writes: list[tuple[float, float]] = attrs.field(factory=list)

    def set_power(self, setpoint_w: float) -> float:
        if not self.writes or self.writes[-1][1] != setpoint_w:
            self.writes.append((self.clock(), float(setpoint_w)))
        return super().set_power(setpoint_w)


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _seed_trio_scheduler(seed: int) -> None:
    from sims.packet import _seed_trio_scheduler as seed_it

    seed_it(seed)


@attrs.define
class _Agent:
    index: int
    node: Any
    transport: Any
    charger: _TimedCharger
    transformer: int
    scope: trio.CancelScope
    allocation: dict[str, Any] = attrs.field(factory=dict)
    nursery: Any = None
    alive: bool = True


class _Run:
    """One packet-level run: the world, the agents, the samples."""

    def __init__(self, sc: Scenario, link: Any, progress: Callable[[float], None] | None,
                 settle_s: float = SETTLE_S, member_period_s: float = PERIOD_S, warm: bool = False) -> None:
        self.sc = sc
        self.warm = warm
        self.member_period_s = member_period_s
        self.settle_s = settle_s
        s, site = sc["scenario"], sc["site"]
        self.n = int(s["nodes"])
        self.seed = int(s["seed"])
        self.duration_s = float(s["duration_s"])
        self.limit_w = float(site["limit_kw"]) * 1000
        self.detect_w = self.limit_w * (1 - float(sc["response"]["site_margin"]))
        self.n_tx = int(site["transformers"])
        self.rating_kw = float(site["transformer_kva"])
        self.charger_w = float(site["charger_kw"]) * 1000
        self.link = link
        self.progress = progress
        self.agents: list[_Agent] = []
        # node 0 detects; a scenario that partitions the mesh gets one detector per part (the
        # first node of each), so each part can plan alone as the fleet level assumes
        self.detectors = {0} | {
            next(i for i in range(self.n) if i * int(e.args["groups"]) // self.n == part)
            for e in sc.events if e.kind == "partition" for part in range(int(e.args["groups"]))
        }
        self.applied: list[tuple[float, int, Any, float]] = []  # (t, agent, plan key, share W)
        self.t0: float | None = None

    # --- the world --------------------------------------------------------------------------

    def surge_w(self, t_abs: float) -> float:
        if self.t0 is None:
            return 0.0  # the scenario has not started (join and settle)
        t = t_abs - self.t0
        arrived = 0
        for e in self.sc.events:
            if e.kind != "surge" or t <= e.at_s:
                continue
            count, window = int(e.args["count"]), float(e.args["window_s"])
            arrived += count if window <= 0 or t >= e.at_s + window else int(count * (t - e.at_s) / window)
        return arrived * self.charger_w

    def make_world(self) -> tuple[SimWorld, _SharedMeterSite]:
        from hardware.simulated.vehicles import VehicleConfig

        nominal = float(self.sc["area"]["nominal_hz"])
        site = _SharedMeterSite(trio.current_time, SITE, base_load_w=float(self.sc["site"]["base_load_kw"]) * 1000,
                                load_profile=self.surge_w, frequency_hz=nominal)
        rng = random.Random(self.seed * 7919 + 1)
        lo, hi = 100 * float(self.sc["arrivals"]["minimum_soc"]) + 15, 100 * float(self.sc["arrivals"]["target_soc"])
        for i in range(self.n):
            ch = _TimedCharger(site.clock, name=f"{SITE}/charger-{i + 1}", lock=site.lock,
                               max_charge_w=self.charger_w, max_discharge_w=self.charger_w)
            site.chargers.append(ch)
            model = VEHICLES[rng.randrange(len(VEHICLES))]
            ch.connect_vehicle(attrs.evolve(VehicleConfig.of(model), present_soc_pct=round(rng.uniform(lo, max(lo, hi)), 1)))
        world = SimWorld(clock=trio.current_time)
        world.add(site)
        return world, site

    def config(self, i: int, node_id: str) -> Any:
        from meshagent.config import config_from_dict

        ratings = [f"tx-{t}={self.rating_kw:g}kW" for t in range(self.n_tx)]
        control = {"PEAK_LOAD_LIMIT": f"{self.detect_w:.1f}W",
                   "nominal_frequency": f"{float(self.sc['area']['nominal_hz']):g}Hz"}
        p = self.member_period_s
        if i not in self.detectors and abs(p - PERIOD_S) > 1e-12:
            # members polling slower (as the demo's do): fewer cycles to simulate; a member then
            # applies a share at its next cycle, up to one period later
            control |= {"meter_period": f"{p * 1000:g}ms", "device_period": f"{p * 1000:g}ms",
                        "sensor_timeout": f"{max(100.0, 10 * p * 1000):g}ms",
                        "telemetry_period": f"{max(100.0, 10 * p * 1000):g}ms"}
        return config_from_dict({
            "node": {"id": node_id},
            "devices": {"meter": f"sim://{SITE}/meter", "charger": f"sim://{SITE}/charger-{i + 1}"},
            "control": control,
            "allocation": {"transformers": ratings},
        })

    # --- the agents -------------------------------------------------------------------------

    async def start_nodes(self, nursery: trio.Nursery) -> None:
        from meshagent.mesh.node import MeshNode
        from meshagent.transport.memory import LinkConditions, MemoryNetwork
        from protocol.swim import SwimConfig

        self.net = MemoryNetwork(
            random.Random(self.seed),
            default=self.link or LinkConditions(delay_s=0.0002, jitter_s=0.0008),
            delivery_quantum_s=0.0002 if self.n > 200 else 0.0,
        )
        await nursery.start(self.net.run)
        pki = Pki(seed=self.seed)
        clock = lambda: NOW_MS + int(trio.current_time() * 1000)  # noqa: E731
        seed_address = None
        idents = [pki.identity(f"agent-{i:05d}", site_id=SITE, transformer_id=f"tx-{i % self.n_tx}",
                               roles=("detector",) if i in self.detectors else ()) for i in range(self.n)]
        transports = [self.net.endpoint() for _ in range(self.n)]
        # warm: every node starts with the membership formed (sims.packet.warm_snapshot), no join
        snapshot = warm_snapshot(pki, idents, [t.address for t in transports], NOW_MS) if self.warm else None
        for i in range(self.n):
            tx = i % self.n_tx
            ident, transport = idents[i], transports[i]
            node = MeshNode(ident, pki.trust(), transport, SwimConfig.lan(), boot_epoch=1,
                            seeds=[seed_address] if seed_address and snapshot is None else [], wall_clock_ms=clock,
                            rng=random.Random(self.seed * 100_003 + i), snapshot=snapshot)
            seed_address = seed_address or transport.address
            agent = _Agent(i, node, transport, self.site.chargers[i], tx, trio.CancelScope())  # type: ignore[arg-type]
            self.agents.append(agent)
            await nursery.start(self._run_node, agent)

    async def _run_node(self, agent: _Agent, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with agent.scope:
            async with trio.open_nursery() as inner:
                agent.nursery = inner
                await inner.start(agent.node.run)
                task_status.started()
        agent.alive = False

    async def start_control(self) -> None:
        from meshagent.agent import run_control
        from meshagent.csms.authsync import RecordPublisher

        for agent in self.agents:
            inner = agent.nursery
            cfg = self.config(agent.index, agent.node.node_id)
            await inner.start(run_control, cfg, agent.node, None, RecordPublisher(agent.node), {},
                              agent.allocation, None, self.world)
            allocator = agent.allocation["allocator"]
            allocator.on_applied = lambda _scope, key, share, i=agent.index: self.applied.append(
                (trio.current_time(), i, key, share))

    async def converge(self) -> float:
        t = trio.current_time()
        with trio.fail_after(JOIN_TIMEOUT_S):
            while not all(a.node.core.num_live == self.n for a in self.agents):  # noqa: ASYNC110 (observer)
                await trio.sleep(0.2)
        return trio.current_time() - t

    # --- the scenario -----------------------------------------------------------------------

    async def drive(self) -> dict[str, Any]:
        import numpy as np

        from sims.grid.frequency import Area, AreaParams
        from sims.grid.transformer import ThermalParams, Transformers
        from sims.report import SeriesRecorder

        sc = self.sc
        area_p = sc["area"]
        area = Area(AreaParams(**{k: v for k, v in area_p.items() if k != "fleet_share"}), PERIOD_S)
        fleet_share = float(area_p["fleet_share"])
        rating = np.full(self.n_tx, self.rating_kw)
        trans = Transformers(rating, ThermalParams(ambient_c=float(sc["site"]["ambient_c"])))
        base_tx_kw = float(sc["site"]["base_load_kw"]) / self.n_tx
        tx_of = np.array([a.transformer for a in self.agents])
        trans.settle(np.full(self.n_tx, base_tx_kw))
        timed = [e for e in sc.events if e.kind != "surge"]
        rng = random.Random(self.seed * 31 + 7)
        disturbance_mw = 0.0
        nominal = float(area_p["nominal_hz"])
        peak_site = peak_loading = peak_hot = -math.inf
        nadir, rocof, last_f = math.inf, 0.0, area.frequency_hz
        violations, over_s, tx_over_s = 0, 0.0, 0.0
        episodes: list[dict[str, Any]] = []
        peak_uncontrolled_w = -math.inf
        open_ep: dict[str, Any] | None = None
        steps = max(1, round(self.duration_s / PERIOD_S))
        report_every = max(1, steps // 100)
        series = self.series = SeriesRecorder(steps, self.n)  # for the plots (sims.report)
        ns0 = self.net.statistics()
        net0 = [(a.transport.statistics().datagrams_sent, a.transport.statistics().bytes_sent) for a in self.agents]
        chargers = self.site.chargers
        response_w = 0.0
        t0 = trio.current_time()
        self.t0 = t0
        for k in range(1, steps + 1):
            await trio.sleep_until(t0 + k * PERIOD_S)
            t = k * PERIOD_S
            while timed and timed[0].at_s <= t:
                ev = timed.pop(0)
                if ev.kind in ("generator_trip", "load_step"):
                    disturbance_mw += float(ev.args["mw"])
                elif ev.kind == "kill_nodes":
                    live = [a for a in self.agents if a.alive and a.index not in self.detectors]
                    for a in rng.sample(live, min(len(live), round(float(ev.args["fraction"]) * self.n))):
                        a.alive = False
                        a.scope.cancel()
                elif ev.kind == "partition":
                    g = int(ev.args["groups"])
                    for part in range(g):
                        side = [a.transport.address for a in self.agents if a.index * g // self.n == part]
                        self.net.partition(side)
                elif ev.kind == "heal":
                    self.net.heal_all()
            f_before = area.frequency_hz
            f = area.step(disturbance_mw - fleet_share * response_w / 1e6)
            if abs(f - f_before) > 1e-9:
                self.site.set_grid(frequency_hz=f)
            snap = self.site.snapshot()  # advances every charger to now
            powers = np.fromiter((c.power_w for c in chargers), float, self.n)
            response_w = float(-powers.sum())
            site_w = snap.active_power_w
            tx_kw = base_tx_kw + self.surge_w(trio.current_time()) / 1000 / self.n_tx + np.bincount(
                tx_of, weights=powers, minlength=self.n_tx) / 1000
            trans.step(tx_kw, PERIOD_S)
            loading = float((np.abs(tx_kw) / rating).max())
            peak_site = max(peak_site, site_w / 1000)
            peak_loading = max(peak_loading, loading)
            peak_hot = max(peak_hot, float(trans.hot_spot_c.max()))
            nadir = min(nadir, f)
            rocof = min(rocof, (f - last_f) / PERIOD_S)
            last_f = f
            if site_w > self.limit_w + 1e-6:
                over_s += PERIOD_S
                if over_s > TOLERANCE_S >= over_s - PERIOD_S:
                    violations += 1
            else:
                over_s = 0.0
            if loading > 1.0 + 1e-9:
                tx_over_s += PERIOD_S
                if tx_over_s > TOLERANCE_S >= tx_over_s - PERIOD_S:
                    violations += 1
            else:
                tx_over_s = 0.0
            # the need at the site meter, as the fleet level counts it: the load over the limit
            # (less its margin) had no agent responded (the meter less every agent's charger)
            need_w = site_w + response_w - self.detect_w
            peak_uncontrolled_w = max(peak_uncontrolled_w, site_w + response_w)
            if need_w > 0:
                if open_ep is None:
                    open_ep = {"start": trio.current_time(), "t_s": round(t, 3), "need_w": need_w, "covered_at": None}
                    episodes.append(open_ep)
                open_ep["need_w"] = max(open_ep["need_w"], need_w)
                if open_ep["covered_at"] is None and response_w >= 0.9 * need_w:
                    open_ep["covered_at"] = trio.current_time()
            else:
                open_ep = None
            if k % series.every == 0:
                series.add(t, site_w / 1000, f, loading, float(trans.hot_spot_c.max()), powers)
            if self.progress is not None and k % report_every == 0:
                self.progress(k / steps)
        sent = [(a.transport.statistics().datagrams_sent - m, a.transport.statistics().bytes_sent - b)
                for a, (m, b) in zip(self.agents, net0, strict=True)]
        ns = self.net.statistics()
        network = {k: getattr(ns, k) - getattr(ns0, k) for k in ("sent", "delivered", "lost", "duplicated", "cut")}
        if nadir < nominal - 10:  # pragma: no cover - a broken area model, not a result
            raise RuntimeError("area frequency diverged")
        return {
            "episodes": episodes, "peak_site_kw": peak_site, "peak_loading": peak_loading, "peak_hot": peak_hot,
            "nadir": nadir, "rocof": rocof, "violations": violations, "sent": sent,
            "peak_uncontrolled_kw": peak_uncontrolled_w / 1000, "final_site_kw": site_w / 1000,
            "network": network,
        }

    # --- the figures ------------------------------------------------------------------------

    def applied_after(self, start: float) -> dict[str, Any] | None:
        """The first plan a member applied at or after ``start``; each member's inverter write."""
        first = next((x for x in self.applied if x[0] >= start), None)
        if first is None:
            return None
        key = first[2]
        latencies: list[float] = []
        for t_applied, i, k, share in self.applied:
            if k != key or share <= 0:
                continue
            written = next((tw for tw, w in self.agents[i].charger.writes if tw >= t_applied and w < 0), None)
            if written is not None:
                latencies.append(written - start)
        return {"plan_s": round(first[0] - start, 4), "members": len(latencies),
                "p50_ms": None if not latencies else round(1000 * _quantile(latencies, 0.5), 2),  # type: ignore[operator]
                "max_ms": None if not latencies else round(1000 * max(latencies), 2)}

    def totals(self, m: dict[str, Any], wall_s: float) -> dict[str, Any]:
        eps = m["episodes"]
        responses = [e["covered_at"] - e["start"] for e in eps if e["covered_at"] is not None]
        applied = [a for a in (self.applied_after(e["start"]) for e in eps) if a is not None]
        max_ms = [a["max_ms"] for a in applied if a["max_ms"] is not None]
        socs, discharged = [], []
        for a in self.agents:
            snap = a.charger.snapshot()
            if snap.vehicle_connected:
                socs.append(snap.present_soc_pct / 100)
                discharged.append(snap.energy_out_wh / 1000)
        sent = m["sent"]
        per_node = [x for x, a in zip(sent, self.agents, strict=True) if a.alive] or sent
        return {
            "spike_to_response_s": {
                "p50": _quantile(responses, 0.5), "max": max(responses) if responses else None,
                "episodes": len(eps), "covered": len(responses),
            },
            "spike_to_applied_ms": {
                "p50": _quantile(max_ms, 0.5), "max": max(max_ms) if max_ms else None,
                "per_episode": applied[:20],
                "what": "first sample needing a response -> every member's inverter write of its share "
                        "of the first plan (virtual ms)",
            },
            "peak_site_kw": round(m["peak_site_kw"], 2),
            "site_limit_kw": self.limit_w / 1000,
            "peak_uncontrolled_kw": round(m["peak_uncontrolled_kw"], 2),
            "final_site_kw": round(m["final_site_kw"], 2),
            "peak_transformer_loading": round(m["peak_loading"], 4),
            "peak_hot_spot_c": round(m["peak_hot"], 2),
            "frequency_nadir_hz": round(m["nadir"], 4),
            "rocof_hz_per_s": round(m["rocof"], 4),
            "energy_discharged_per_vehicle_kwh": {
                "mean": round(sum(discharged) / len(discharged), 4) if discharged else 0.0,
                "max": round(max(discharged), 4) if discharged else 0.0, "vehicles": len(discharged),
            },
            "soc_fairness_jain": (sum(socs) ** 2 / (len(socs) * sum(x * x for x in socs))) if socs else None,
            "limits_violated": m["violations"],
            "plans": len({x[2] for x in self.applied}),
            "messages_per_node": round(sum(x[0] for x in per_node) / len(per_node), 2),
            "bytes_per_node": round(sum(x[1] for x in per_node) / len(per_node), 1),
            "network": m["network"],  # the in-memory network's datagrams during the scenario
            "billing_completeness": None,
            "sessions_ended": 0,
            "simulated_s": self.duration_s,
            "wall_s": round(wall_s, 2),
        }

    async def main(self) -> dict[str, Any]:
        wall = time.perf_counter()
        async with trio.open_nursery() as nursery:
            self.world, self.site = self.make_world()
            await self.start_nodes(nursery)
            converged = await self.converge()
            join_wall = time.perf_counter() - wall
            await self.start_control()
            await trio.sleep(self.settle_s)
            self.site._cached = None
            run_wall, run_cpu = time.perf_counter(), time.process_time()
            measured = await self.drive()
            run_wall, run_cpu = time.perf_counter() - run_wall, time.process_time() - run_cpu
            nursery.cancel_scope.cancel()
        out = self.totals(measured, run_wall)
        out["start"] = "warm" if self.warm else "join"
        out["join_converged_sim_s"] = round(converged, 2)
        out["join_wall_s"] = round(join_wall, 2)
        out["sim_s_per_wall_s"] = round(self.duration_s / run_wall, 3) if run_wall > 0 else None
        # this process's CPU time over the window: what the rate would be on a core of its own
        out["sim_s_per_cpu_s"] = round(self.duration_s / run_cpu, 3) if run_cpu > 0 else None
        return out


def run_packet(
    scenario: str | Path | Scenario,
    *,
    nodes: int | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    link: Any = None,
    progress: Callable[[float], None] | None = None,
    out: Path | None = None,
    settle_s: float = SETTLE_S,
    member_period_s: float = PERIOD_S,
    warm: bool = False,
) -> dict[str, Any]:
    """Run ``scenario`` with N complete agents in virtual time; the report (see the module).

    ``member_period_s``: the members' meter period (the detectors always poll every
    10 ms, as in the field); slower members cost less to simulate and apply shares later.
    ``warm``: no join; every agent starts with the membership formed (``warm_snapshot``):
    for studies of a spike at a size whose join alone would take long (the report says
    ``"start": "warm"``; ``join_wall_s`` is then building the agents)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    sc = sc.with_overrides(nodes=nodes, seed=seed, duration_s=duration_s)
    n = int(sc["scenario"]["nodes"])
    if n < 2:
        from sims.scenario import ScenarioError

        raise ScenarioError("--nodes: the packet level needs at least 2 agents (a detector and a member)")
    s = int(sc["scenario"]["seed"])
    _seed_trio_scheduler(s)
    wall = time.perf_counter()
    run = _Run(sc, link, progress, settle_s, member_period_s, warm)
    with many_objects():
        totals = trio.run(run.main, clock=trio.testing.MockClock(autojump_threshold=0))
    report: dict[str, Any] = {
        "scenario": sc.name,
        "description": sc.description,
        "nodes": n,
        "seed": s,
        "simulated_s": float(sc["scenario"]["duration_s"]),
        "dt_s": PERIOD_S,
        "level": "packet",
        "runner": "virtual: complete agents (MeshNode, ControlLoop, Allocator, simulated devices) "
                  "on the in-memory network under trio's MockClock, one process",
        "member_meter_period_s": member_period_s,
        "mesh_latency": "measured in this run (virtual time)",
        "calibration": {"mesh_delivery": {"source": f"measured in this run: {n} complete agents, virtual"}},
        "baselines": {"mesh": totals},
        "wall_s": round(time.perf_counter() - wall, 3),
    }
    if out is not None:
        from sims.report import write_json, write_series_plots

        report["files"] = {"json": str(write_json(report, out)), "plots": str(write_series_plots(
            run.series, out, f"{sc.name}: {sc.description} (packet level, {n} agents)", run.limit_w / 1000, totals))}
        write_json(report, out)
    return report


def bench_scenario(n: int, window_s: float) -> Scenario:
    """``bench sim``'s packet-level case: n chargers, one surge a quarter into the window that
    takes the site 10 % past its limit, so the window holds a spike, its plans and ACKs."""
    from sims.scenario import parse_scenario

    # one meter reads at most 10 MW (hardware.interfaces.MAX_POWER_W: beyond, a reading is out
    # of range, a fault): past about 730 chargers the limit stays at 8 MW and the surge is 20 %
    # of it, so the site peaks near 8.8 MW, 10 % over its limit, as at every N
    limit_kw = min(11.0 * n, 8000.0)
    surge = max(1, round(0.2 * limit_kw / 11.0))
    return parse_scenario({
        "scenario": {"name": "bench-packet", "duration_s": window_s, "dt_s": PERIOD_S, "nodes": n, "seed": 1},
        "site": {"limit_kw": limit_kw, "base_load_kw": 0.9 * limit_kw, "charger_kw": 11,
                 "transformers": max(1, n // 100), "transformer_kva": 2.0 * limit_kw / max(1, n // 100)},
        "events": [{"kind": "surge", "at_s": window_s / 4, "count": surge, "window_s": 0}],
    }, "bench")


def complete_agents_rate(n: int, window_s: float = 2.0, settle_s: float = SETTLE_S,
                         member_period_s: float = PERIOD_S, warm: bool = False) -> dict[str, Any]:
    """Simulated seconds per wall second of N complete agents over a scenario window (virtual
    time; the join and the settle are timed apart): ``bench sim``'s complete-agent row."""
    report = run_packet(bench_scenario(n, window_s), settle_s=settle_s, member_period_s=member_period_s,
                        warm=warm)
    mesh = report["baselines"]["mesh"]
    return {
        "nodes": n,
        "agent": f"complete (MeshNode + ControlLoop: detector 10 ms, members {member_period_s * 1000:g} ms "
                 "+ Allocator + simulated devices)",
        "sim_s_per_wall_s": mesh["sim_s_per_wall_s"],
        "sim_s_per_cpu_s": mesh["sim_s_per_cpu_s"],
        "window_sim_s": window_s,
        "window_wall_s": mesh["wall_s"],
        "start": mesh["start"],
        "join_converged_sim_s": mesh["join_converged_sim_s"],
        "join_wall_s": mesh["join_wall_s"],
        "run_wall_s": report["wall_s"],
        "spike_to_applied_max_ms": mesh["spike_to_applied_ms"]["max"],
        "limits_violated": mesh["limits_violated"],
    }
