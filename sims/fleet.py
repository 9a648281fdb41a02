"""The fleet level: a whole site's chargers stepped as arrays, under one baseline.

Theory of operation
-------------------
One step of ``dt_s`` is a handful of numpy operations over arrays of length N (one slot per
charger), never a loop over chargers:

1. timed events (surges, trips, deaths, partitions, CSMS outages) take effect;
2. vehicles whose dwell ended leave (their session's billing record is queued or delivered);
   arrivals (Poisson by hour plus surges) plug into free chargers;
3. each charger *wants* ``min(charger, vehicle)`` charge power until the target SoC; its
   *flexibility* is that plus the V2G discharge it can give above the minimum SoC;
4. the baseline's controller, when it is due, issues a plan: a curtailment per charger (W
   below what it wants; past the want it is discharge). Each charger applies its share after
   a latency drawn from ``sims.calibration`` (the fleet level does not send packets);
5. site load, transformer loads, area frequency (``sims.grid.frequency``) and transformer
   temperatures (``sims.grid.transformer``) advance; SoC integrates power exactly.

Baselines (one ``run_fleet`` each, same seed, same vehicles):

* ``none``: chargers charge flat out; nobody responds.
* ``droop``: each charger reads its own frequency and curtails/discharges in proportion to
  how far it is below ``frequency_trigger_hz`` (full at ``full_response_hz``); it knows nothing
  of the site limit or the transformers.
* ``central``: the CSMS reads the site meter every ``central_meter_interval_s``, computes the
  allocation and sends a profile to each charger one call after another (``OCPP_CALL_S``);
  while the CSMS is unreachable it cannot dispatch.
* ``mesh``: the node that reads the spike plans at the next 10 ms meter sample; shares arrive
  after the measured delivery time; the proposer re-plans once the last share landed. In a
  partition each part plans alone over its own members (and so over-responds, the safe side).
  A dead agent's charger keeps charging uncontrolled; the next plan leaves it out.

Both coordinated baselines call the same ``Allocator`` (``sims.policy``): the pluggable seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from sims import calibration as cal
from sims.grid.arrivals import PROFILES, Surge, arrivals_in_step, draw_vehicles
from sims.grid.frequency import Area, AreaParams
from sims.grid.transformer import ThermalParams, Transformers
from sims.policy import ALLOCATORS, Allocator
from sims.scenario import Scenario

BASELINES = ("none", "droop", "central", "mesh")
MAX_TRACE_POINTS = 4000
TRACE_NODES = 48
BILLING_DRAIN_PER_S = 489.0  # bench ocpp drain_10k_s: 10,000 events in 20.4 s


@attrs.define
class Trace:
    """What one baseline's run produced (time series, downsampled, and totals)."""

    baseline: str
    t_s: NDArray[np.float64]
    site_kw: NDArray[np.float64]
    limit_kw: float
    frequency_hz: NDArray[np.float64]
    tx_loading_max: NDArray[np.float64]
    hot_spot_max_c: NDArray[np.float64]
    node_discharge_kw: NDArray[np.float64]  # (points, up to TRACE_NODES)
    totals: dict[str, Any]


def _jain(x: NDArray[np.float64]) -> float | None:
    if len(x) == 0 or not np.any(x):
        return None
    return float(x.sum() ** 2 / (len(x) * (x * x).sum()))


def run_fleet(
    scenario: Scenario,
    baseline: str,
    *,
    allocator: Allocator | None = None,
    progress: Callable[[float], None] | None = None,
    record: bool = True,
    mesh_delivery_s: list[float] | None = None,
) -> Trace:
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}")
    allocate = allocator or ALLOCATORS.get(baseline, ALLOCATORS["mesh"])
    sc, site, area_p, arr, resp = (scenario[s] for s in ("scenario", "site", "area", "arrivals", "response"))
    n = int(sc["nodes"])
    dt = float(sc["dt_s"])
    steps = max(1, round(sc["duration_s"] / dt))
    t0 = sc["start_hour"] * 3600.0
    # Two streams: the world (arrivals, vehicles, deaths) is identical under every baseline;
    # the controller's latencies have their own stream.
    world = np.random.default_rng([sc["seed"], 1])
    lat_rng = np.random.default_rng([sc["seed"], 2, BASELINES.index(baseline)])

    n_tx = int(site["transformers"])
    tx = np.arange(n, dtype=np.int64) % n_tx
    rating_kw = np.full(n_tx, float(site["transformer_kva"]))
    base_tx_kw = np.full(n_tx, float(site["base_load_kw"]) / n_tx)
    charger_w = float(site["charger_kw"]) * 1000.0
    limit_w = float(site["limit_kw"]) * 1000.0
    limit_eff_w = limit_w * (1 - resp["site_margin"])
    min_soc, target_soc = float(arr["minimum_soc"]), float(arr["target_soc"])
    trig, full = float(resp["frequency_trigger_hz"]), float(resp["full_response_hz"])
    span = max(trig - full, 1e-9)

    area = Area(AreaParams(**{k: v for k, v in area_p.items() if k != "fleet_share"}), dt)
    fleet_share = float(area_p["fleet_share"])
    trans = Transformers(rating_kw, ThermalParams(ambient_c=float(site["ambient_c"])))

    occupied = np.zeros(n, dtype=bool)
    soc = np.zeros(n)
    batt = np.ones(n)
    vch = np.zeros(n)
    vdis = np.zeros(n)
    depart = np.zeros(n)
    session_dis_wh = np.zeros(n)
    finished_dis_wh: list[float] = []
    alive = np.ones(n, dtype=bool)
    group = np.zeros(n, dtype=np.int64)
    group_ids = [0]
    applied = np.zeros(n)
    pending = np.zeros(n)
    apply_at = np.full(n, math.inf)
    next_plan_at = 0.0
    last_key: tuple[float, ...] | None = None

    def plug(idx: NDArray[np.int64], now: float) -> None:
        v = draw_vehicles(world, len(idx))
        occupied[idx] = True
        soc[idx], batt[idx], vch[idx], vdis[idx] = v.soc, v.battery_wh, v.charge_w, v.discharge_w
        depart[idx] = now + v.dwell_s
        session_dis_wh[idx] = 0.0

    first = world.random(n) < arr["initial_occupancy"]
    plug(np.flatnonzero(first), 0.0)
    depart[first] = world.uniform(0, 8 * 3600, int(first.sum()))
    trans.settle(base_tx_kw + np.bincount(tx, weights=np.where(occupied, np.minimum(charger_w, vch), 0), minlength=n_tx) / 1000)

    surges = [Surge(e.at_s, e.args["count"], e.args["window_s"]) for e in scenario.events if e.kind == "surge"]
    timed = [e for e in scenario.events if e.kind != "surge"]
    next_event = 0
    disturbance_mw = 0.0
    csms_up = True
    sessions_ended = 0
    delivered = 0.0
    queued = 0.0
    per_day = float(arr["sessions_per_charger_day"]) * n
    profile = PROFILES[arr["profile"]]
    plans = 0
    plan_receivers = 0

    stride = max(1, steps // MAX_TRACE_POINTS)
    points = steps // stride
    rec_t = np.zeros(points)
    rec_site = np.zeros(points)
    rec_f = np.zeros(points)
    rec_load = np.zeros(points)
    rec_hot = np.zeros(points)
    shown = min(n, TRACE_NODES)
    rec_nodes = np.zeros((points, shown))
    peak_site = peak_loading = peak_hot = -math.inf
    nadir = math.inf
    rocof_min = 0.0
    last_f = area.frequency_hz
    violation_s = over_s = 0.0
    violations = 0
    tolerance_s = 2.0
    spike_at: float | None = None
    landed_at = 0.0
    latencies: list[float] = []
    report_every = max(1, steps // 100)

    for k in range(steps):
        t = (k + 1) * dt
        while next_event < len(timed) and timed[next_event].at_s <= t:
            ev = timed[next_event]
            next_event += 1
            if ev.kind == "generator_trip" or ev.kind == "load_step":
                disturbance_mw += ev.args["mw"]
            elif ev.kind == "kill_nodes":
                victims = world.choice(np.flatnonzero(alive), round(ev.args["fraction"] * int(alive.sum())), replace=False)
                alive[victims] = False
            elif ev.kind == "partition":
                group[:] = np.arange(n) * ev.args["groups"] // n
                group_ids = list(range(ev.args["groups"]))
            elif ev.kind == "heal":
                group[:] = 0
                group_ids = [0]
            elif ev.kind == "csms_down":
                csms_up = False
            elif ev.kind == "csms_up":
                csms_up = True
        # departures and arrivals
        leaving = occupied & (depart <= t)
        if leaving.any():
            count = int(leaving.sum())
            sessions_ended += count
            finished_dis_wh.extend(session_dis_wh[leaving].tolist())
            occupied[leaving] = False
            queued += count
        if csms_up and queued > 0:
            moved = min(queued, BILLING_DRAIN_PER_S * dt)
            queued -= moved
            delivered += moved
        coming = arrivals_in_step(world, t0 + t, dt, per_day, profile)
        for s in surges:
            coming += s.arrivals_in(t - dt, t)
        if coming:
            free = np.flatnonzero(~occupied)
            if len(free):
                plug(world.choice(free, min(coming, len(free)), replace=False), t)
        want = np.where(occupied & (soc < target_soc), np.minimum(charger_w, vch), 0.0)
        give = np.where(occupied & (soc > min_soc), np.minimum(charger_w, vdis), 0.0)
        flex = np.where(alive, want + give, 0.0)
        tx_want_w = base_tx_kw * 1000 + np.bincount(tx, weights=want, minlength=n_tx)
        site_req = max(0.0, float(tx_want_w.sum()) - limit_eff_w)
        tx_req = np.maximum(0.0, tx_want_w - rating_kw * 1000 * (1 - resp["site_margin"]))
        f_now = area.frequency_hz
        x = min(1.0, max(0.0, (trig - f_now) / span))
        total_req = max(site_req, float(tx_req.sum()), x * float(flex.sum()))
        # the controller
        if baseline == "droop":
            applied = np.where(alive, x * flex, 0.0)
        elif baseline in ("central", "mesh") and t >= next_plan_at and (total_req > 0 or applied.any()):
            key = (total_req, float(flex.sum()), int(alive.sum()), int(group.sum()), float(tx_req.sum()))
            if key == last_key and apply_at.min() == math.inf:
                next_plan_at = t + dt  # nothing the planner sees has changed: the plan stands
            elif baseline == "central" and not csms_up:
                next_plan_at = t + resp["central_meter_interval_s"]
            else:
                shares = np.zeros(n)
                groups = [alive] if baseline == "central" else ([alive] if len(group_ids) == 1 else [alive & (group == g) for g in group_ids])
                headroom = tx_want_w + rating_kw * 1000  # down to full rated export
                for members in groups:
                    if not members.any():
                        continue
                    lim = np.where(members, flex, 0.0)
                    part = np.zeros(n)
                    for t_i in np.flatnonzero(tx_req > 0):  # relieve overloaded transformers first
                        m = members & (tx == t_i)
                        part[m] = allocate(float(tx_req[t_i]), lim[m], np.ones(int(m.sum())), np.zeros(int(m.sum()), dtype=np.int64), np.array([np.inf]))
                    rest = total_req - float(part.sum())
                    if rest > 0:
                        room = headroom - np.bincount(tx, weights=part, minlength=n_tx)
                        part += allocate(rest, lim - part, np.ones(n), tx, room)
                    shares = np.maximum(shares, part)
                if not np.array_equal(shares, pending) or apply_at.min() < math.inf:
                    plans += 1
                    receivers = int(alive.sum())
                    plan_receivers += receivers
                    if baseline == "mesh":
                        lat = (
                            lat_rng.uniform(0, cal.METER_POLL_S)
                            + (lat_rng.choice(mesh_delivery_s, n) if mesh_delivery_s
                               else lat_rng.lognormal(cal.MESH_DELIVERY_MU, cal.MESH_DELIVERY_SIGMA, n))
                            + lat_rng.uniform(0, cal.INVERTER_MAX_S, n)
                        )
                        next_plan_at = t + max(dt, float(lat.max()) * 2)
                    else:
                        interval = resp["central_meter_interval_s"]
                        seen = t - dt
                        wait = interval - (seen % interval) if seen % interval else 0.0
                        order = lat_rng.permutation(n)
                        lat = wait + (order + 1) * cal.OCPP_CALL_S + lat_rng.uniform(0, cal.INVERTER_MAX_S, n)
                        next_plan_at = t + max(interval, float(lat.max()))
                    pending = shares
                    last_key = key
                    apply_at = np.where(alive, t - dt + lat, math.inf)  # observed at the step's start
                else:
                    next_plan_at = t + dt
        if baseline in ("central", "mesh"):
            due = apply_at <= t
            if due.any():
                landed_at = float(apply_at[due].max())
                applied = np.where(due, pending, applied)
                apply_at = np.where(due, math.inf, apply_at)
            applied = np.where(alive, applied, 0.0)
        curtail = np.minimum(applied, flex) if baseline != "none" else np.zeros(n)
        power = want - curtail
        # physics
        tx_kw = base_tx_kw + np.bincount(tx, weights=power, minlength=n_tx) / 1000
        site_kw = float(tx_kw.sum())
        f = area.step(disturbance_mw - fleet_share * float(curtail.sum()) / 1e6)
        trans.step(tx_kw, dt)
        e_wh = power * dt / 3600.0
        soc = np.clip(soc + np.where(occupied, e_wh / batt, 0.0), 0.0, 1.0)
        session_dis_wh += np.where(power < 0, -e_wh, 0.0)
        # measures
        loading = float((np.abs(tx_kw) / rating_kw).max())
        hot = float(trans.hot_spot_c.max())
        peak_site, peak_loading, peak_hot = max(peak_site, site_kw), max(peak_loading, loading), max(peak_hot, hot)
        nadir = min(nadir, f)
        rocof_min = min(rocof_min, (f - last_f) / dt)
        last_f = f
        if site_kw * 1000 > limit_w + 1e-6:
            violation_s += dt
            if violation_s > tolerance_s and violation_s - dt <= tolerance_s:
                violations += 1
        else:
            violation_s = 0.0
        if loading > 1.0 + 1e-9:
            over_s += dt
            if over_s > tolerance_s and over_s - dt <= tolerance_s:
                violations += 1
        else:
            over_s = 0.0
        if total_req > 0:
            if spike_at is None:
                spike_at = t - dt
            elif spike_at >= 0 and float(curtail.sum()) >= 0.9 * total_req:
                latencies.append(max(0.0, (landed_at if baseline in ('central', 'mesh') else t - dt) - spike_at))
                spike_at = -1.0
        elif spike_at is not None:
            spike_at = None
        if record and k % stride == 0 and k // stride < points:
            j = k // stride
            rec_t[j], rec_site[j], rec_f[j], rec_load[j], rec_hot[j] = t, site_kw, f, loading, hot
            rec_nodes[j] = np.maximum(-power[:shown], 0.0) / 1000
        if progress is not None and k % report_every == 0:
            progress(k / steps)
    finished_dis_wh.extend(session_dis_wh[occupied].tolist())
    dis = np.asarray(finished_dis_wh)
    took_part = occupied
    seconds = steps * dt
    if baseline == "mesh":
        msgs = cal.GOSSIP_PACKETS_PER_NODE_S * seconds + 2 * plan_receivers / n
        byts = cal.GOSSIP_BYTES_PER_NODE_S * seconds + (cal.PLAN_BYTES + cal.ACK_BYTES) * plan_receivers / n
    elif baseline == "central":
        msgs = 2 * plan_receivers / n
        byts = cal.SET_PROFILE_BYTES * plan_receivers / n
    else:
        msgs = byts = 0.0
    totals = {
        "spike_to_response_s": {
            "p50": float(np.median(latencies)) if latencies else None,
            "max": float(max(latencies)) if latencies else None,
            "episodes": len(latencies),
        },
        "peak_site_kw": round(peak_site, 2),
        "site_limit_kw": site["limit_kw"],
        "peak_transformer_loading": round(peak_loading, 4),
        "peak_hot_spot_c": round(peak_hot, 2),
        "frequency_nadir_hz": round(nadir, 4),
        "rocof_hz_per_s": round(rocof_min, 4),
        "energy_discharged_per_vehicle_kwh": {
            "mean": round(float(dis.mean()) / 1000, 4) if len(dis) else 0.0,
            "max": round(float(dis.max()) / 1000, 4) if len(dis) else 0.0,
            "vehicles": len(dis),
        },
        "soc_fairness_jain": _jain(soc[took_part]),
        "limits_violated": violations,
        "plans": plans,
        "messages_per_node": round(msgs, 2),
        "bytes_per_node": round(byts, 1),
        "billing_completeness": 1.0 if sessions_ended == 0 else round(min(1.0, delivered / sessions_ended + 1e-9), 4),
        "sessions_ended": sessions_ended,
        "simulated_s": seconds,
    }
    return Trace(baseline, rec_t, rec_site, float(site["limit_kw"]), rec_f, rec_load, rec_hot, rec_nodes, totals)
