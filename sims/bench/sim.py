"""``meshagent bench sim``: how fast the simulator runs, packet level and fleet level.

* ``rows``: N signed mesh nodes, membership only (``MeshNode``, Ed25519 on every packet; no
  control loop, no allocation) on the in-memory network under MockClock
  (``sims.packet.agents_sim_rate``): simulated seconds per wall second over a steady-state
  window after the join (the join is timed apart). 10,000 are attempted only when the
  1,000-node rate says the window would take under 10 minutes; otherwise the row says why it
  was skipped. Each row says ``"agent": "membership only"``.
* ``complete_agent_rows``: N complete agents (``sims.virtual``: the mesh node, the control loop
  on its 10 ms grid, the allocation, simulated devices on one site) through a window holding
  one spike (``sims.virtual.complete_agents_rate``). A larger N is attempted only when the
  smaller N's rate says the run would take under ``COMPLETE_BUDGET_S`` of wall time;
  otherwise the row says why it was skipped and what was predicted.
* ``fleet_1000_1min_sim_s_per_wall_s``: the fleet level (``sims.fleet``), 1,000 chargers on 10
  transformers, 1-minute steps, one weekday, mesh baseline (allocation, drawn latencies,
  message counts, area frequency and transformer heat all on).
* ``fleet_year_1000_wall_s``: the same for 365 days (not in ``--quick``).
* ``ev2gym``: the anchor in the same run, when an interpreter with ev2gym is named by
  ``MESHAGENT_EV2GYM_PYTHON`` or ev2gym imports here (``sims/bench/ev2gym_anchor.py``);
  otherwise the row says it was not run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sims.bench import BenchResult, machine

TARGET_FLEET = 70_000
COMPLETE_BUDGET_S = 600.0
JOIN_WALL_BUDGET_S = 900.0  # a membership-only join abandoned after this much wall time  # wall time a complete-agent row may take (join, settle and window)


def fleet_scenario(days: float) -> Any:
    from sims.scenario import parse_scenario

    return parse_scenario({
        "scenario": {"name": "bench-fleet", "duration_s": days * 86400, "dt_s": 60, "nodes": 1000, "seed": 1},
        "site": {"limit_kw": 4000, "base_load_kw": 1500, "charger_kw": 11, "transformers": 10,
                 "transformer_kva": 600},
        "arrivals": {"sessions_per_charger_day": 1.0, "initial_occupancy": 0.0},
        "area": {"base_mw": 500},
        "events": [{"kind": "generator_trip", "at_s": 3600 * 18, "mw": 40}],
    }, "bench")


def fleet_rate(days: float) -> dict[str, Any]:
    from sims.fleet import run_fleet

    sc = fleet_scenario(days)
    run_fleet(fleet_scenario(0.01), "mesh")  # warm: imports and first allocations off the clock
    t0 = time.perf_counter()
    trace = run_fleet(sc, "mesh")
    wall = time.perf_counter() - t0
    return {"days": days, "wall_s": round(wall, 2), "sim_s_per_wall_s": round(days * 86400 / wall),
            "us_per_charger_step": round(wall / (1000 * days * 1440) * 1e6, 3),
            "plans": trace.totals["plans"], "peak_site_kw": trace.totals["peak_site_kw"]}


def ev2gym_rate() -> dict[str, Any]:
    python = os.environ.get("MESHAGENT_EV2GYM_PYTHON")
    if not python and importlib.util.find_spec("ev2gym") is not None:
        python = sys.executable
    if not python:
        return {"run": False, "reason": "ev2gym not installed (set MESHAGENT_EV2GYM_PYTHON to an interpreter that has it)"}
    script = Path(__file__).with_name("ev2gym_anchor.py")
    try:
        out = subprocess.run([python, str(script), "1000", "1440"], capture_output=True, text=True,
                             timeout=1800, check=True, cwd="/tmp")
    except (subprocess.SubprocessError, OSError) as exc:
        return {"run": False, "reason": f"ev2gym failed: {str(exc)[:200]}"}
    return {"run": True, **json.loads(out.stdout.strip().splitlines()[-1])}


def complete_rows(quick: bool) -> list[dict[str, Any]]:
    """Complete agents at 100, 1,000, 10,000 (quick: 10), each only if the last rate says it fits."""
    from sims.virtual import SETTLE_S, complete_agents_rate

    window = 1.0 if quick else 2.0
    out: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    for n in (10,) if quick else (100, 1000, 10_000):
        if last is not None:
            # the control loops cost O(N) per simulated second and the join more (each node
            # verifies every certificate): a linear extrapolation is a lower bound
            factor = n / last["nodes"]
            predicted = factor * (last["run_wall_s"])
            if predicted > COMPLETE_BUDGET_S:
                out.append({"nodes": n, "sim_s_per_wall_s": None, "agent": "complete",
                            "skipped": f"predicted at least {predicted:.0f} s wall (from {last['nodes']} agents: "
                                       f"{last['run_wall_s']} s for join, {SETTLE_S:g} s settle and a "
                                       f"{window:g} s window, x{factor:g}), over the {COMPLETE_BUDGET_S:.0f} s budget"})
                continue
        last = complete_agents_rate(n, window)
        out.append(last)
    return out


def run(quick: bool = False) -> BenchResult:
    from sims.packet import agents_sim_rate

    rows_data: list[dict[str, Any]] = []
    window = 2.0 if quick else 10.0
    for n in (20,) if quick else (100, 1000):
        rows_data.append({**agents_sim_rate(n, window, join_wall_budget_s=JOIN_WALL_BUDGET_S),
                          "agent": "membership only (MeshNode)"})
    rate_1000 = rows_data[-1]["sim_s_per_wall_s"]
    if quick:
        rows_data.append({"nodes": 1000, "sim_s_per_wall_s": None, "skipped": "--quick"})
    if not quick and rate_1000 and window / rate_1000 * 10 < 600:
        rows_data.append({**agents_sim_rate(10_000, window, converge_timeout_s=900,
                                            join_wall_budget_s=JOIN_WALL_BUDGET_S),
                          "agent": "membership only (MeshNode)"})
    else:
        rows_data.append({"nodes": 10_000, "sim_s_per_wall_s": None,
                          "skipped": "--quick" if quick else "no 1,000-node rate (its join was abandoned)" if not rate_1000
                          else f"at the 1,000-agent rate ({rate_1000}x) the {window:g} s window alone would "
                               f"take about {window / max(rate_1000, 1e-9) * 10:.0f} s wall plus the join"})
    complete = complete_rows(quick)
    day = fleet_rate(0.25 if quick else 1.0)
    year = None if quick else fleet_rate(365.0)
    ev = ev2gym_rate()
    data: dict[str, Any] = {
        "rows": rows_data,
        "complete_agent_rows": complete,
        "fleet_1000_1min_sim_s_per_wall_s": day["sim_s_per_wall_s"],
        "fleet_day": day,
        "fleet_year_1000_wall_s": year["wall_s"] if year else None,
        "ev2gym": ev,
        "target_fleet_sim_s_per_wall_s": TARGET_FLEET,
        "machine": machine(),
        "quick": quick,
    }
    rows = [(f"{r['nodes']} mesh nodes (membership only), virtual time, signed",
             f"{r['sim_s_per_wall_s']}x real time" if r["sim_s_per_wall_s"] is not None else str(r.get("skipped")))
            for r in rows_data]
    rows += [(f"{r['nodes']} complete agents (mesh + 10 ms control + allocation), virtual time, signed",
              f"{r['sim_s_per_wall_s']}x real time (join {r['join_wall_s']} s wall)" if r.get("sim_s_per_wall_s")
              else str(r.get("skipped"))) for r in complete]
    rows.append(("fleet 1,000 chargers, 1-min steps", f"{day['sim_s_per_wall_s']:,}x real time "
                 f"({day['us_per_charger_step']} us per charger-step; target {TARGET_FLEET:,}x)"))
    rows.append(("fleet year of 1,000 chargers", f"{year['wall_s']} s wall" if year else "not run (--quick)"))
    rows.append(("ev2gym, same fleet and steps", f"{ev['sim_s_per_wall_s']:,.0f}x real time "
                 f"({ev['us_per_charger_step']:.2f} us per charger-step)" if ev.get("run") else ev["reason"]))
    return BenchResult(name="sim", rows=rows, data=data)
