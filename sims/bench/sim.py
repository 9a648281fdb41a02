"""``meshagent bench sim``: how fast the simulator runs, packet level and fleet level.

* ``rows``: N signed mesh nodes, membership only (``MeshNode``, Ed25519 on every packet; no
  control loop, no allocation) on the in-memory network under MockClock
  (``sims.packet.agents_sim_rate``): simulated seconds per wall second over a steady-state
  window. N = 100 joins through one seed first (the join is timed apart); N = 1,000 and
  10,000 start **warm** (``"start": "warm"``: every node begins with the membership formed,
  ``sims.packet.warm_snapshot``), because a 1,000-node join through one seed takes longer
  than the bench can wait (see ``join_rows``). 10,000 is attempted only when the 1,000-node
  rate says its window would take under ``WARM_10K_BUDGET_S``; otherwise the row says why.
  Each row says ``"agent": "membership only"``, and ``sim_s_per_cpu_s`` beside the wall
  figure (the process's CPU time: the machine may be shared).
* ``join_rows``: the join itself, cold, through one seed: N = 100 (from its row) and 1,000,
  abandoned after ``JOIN_1000_WALL_BUDGET_S`` of wall time (the row then says how far it got).
* ``complete_agent_rows``: N complete agents (``sims.virtual``: the mesh node, the control loop
  on its 10 ms grid, the allocation, simulated devices on one site) through a window holding
  one spike (``sims.virtual.complete_agents_rate``); N = 100 joins cold, 1,000 and 10,000
  start warm. A larger N is attempted only when the smaller N's window and settle, scaled
  linearly, fit in ``COMPLETE_BUDGET_S`` of wall time; otherwise the row says why it was
  skipped and what was predicted.
* ``fleet_1000_1min_sim_s_per_wall_s``: the fleet level (``sims.fleet``), 1,000 chargers on 10
  transformers, 1-minute steps, one weekday, mesh baseline (allocation, drawn latencies,
  message counts, area frequency and transformer heat all on).
* ``fleet_year_1000_wall_s``: the same for 365 days (not in ``--quick``).
* Every part runs in a spawned process of its own (``fresh``), so that no figure depends on
  what ran before it in the same interpreter.
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
COMPLETE_BUDGET_S = 900.0  # wall time a complete-agent row may take (settle and window), predicted
JOIN_WALL_BUDGET_S = 900.0  # the 100-node membership-only join abandoned after this much wall time
JOIN_1000_WALL_BUDGET_S = 300.0  # the cold 1,000-node join (join_rows) abandoned after this
WARM_10K_BUDGET_S = 900.0  # the 10,000-node warm row runs only if predicted under this
WARM_FROM = 1000  # rows of this many agents and more start warm


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


def fresh(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new interpreter (spawned, not forked), its result returned.

    Each figure of this bench is measured in a process of its own: one that has just held ten
    thousand simulated nodes, or stepped a fleet through a year, leaves a heap that slows the
    next part (2026-12-04, same code and machine: 1,000 nodes 1.948x first in the process,
    1.561x after the fleet year; a fleet day 99,817x after the packet rows, 485,586x and more
    first)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


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
            # the control loops cost O(N) per simulated second (the mesh more): a linear
            # extrapolation of the settle and the window is a lower bound
            factor = n / last["nodes"]
            spent = last["run_wall_s"] - last["join_wall_s"]
            predicted = factor * spent
            if predicted > COMPLETE_BUDGET_S:
                out.append({"nodes": n, "sim_s_per_wall_s": None, "agent": "complete",
                            "start": "warm" if n >= WARM_FROM else "join",
                            "skipped": f"predicted at least {predicted:.0f} s wall (from {last['nodes']} agents: "
                                       f"{spent:.0f} s for the {SETTLE_S:g} s settle and the "
                                       f"{window:g} s window, x{factor:g}), over the {COMPLETE_BUDGET_S:.0f} s budget"})
                continue
        last = fresh(complete_agents_rate, n, window, warm=n >= WARM_FROM)
        out.append(last)
    return out


def join_rows(rows: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    """The cold join through one seed, timed apart: 100 from its row, 1,000 attempted."""
    from sims.packet import join_time

    out = [{"nodes": r["nodes"], "join_converged_sim_s": r.get("join_converged_sim_s"),
            "join_wall_s": r.get("join_wall_s"), "skipped": r.get("skipped")}
           for r in rows if r["nodes"] < WARM_FROM and r.get("start") != "warm"]
    if quick:
        out.append({"nodes": 1000, "join_wall_s": None, "skipped": "--quick"})
    else:
        out.append(fresh(join_time, 1000, wall_budget_s=JOIN_1000_WALL_BUDGET_S))
    return out


FLEET_DAY_RUNS = 5  # the one-day fleet figure is the median of this many days (0.15-0.3 s each)


def _fleet_days(runs: int, days: float) -> list[dict[str, Any]]:
    return [fleet_rate(days) for _ in range(runs)]


def fleet_day_rate(runs: int, days: float) -> dict[str, Any]:
    """The fleet level's rate over ``runs`` runs of ``days``: the median run, with every run's
    rate beside it (a day takes a fraction of a second: one run alone is noise)."""
    results = sorted(fresh(_fleet_days, runs, days), key=lambda r: r["sim_s_per_wall_s"])
    return {**results[len(results) // 2], "runs": runs,
            "runs_sim_s_per_wall_s": [r["sim_s_per_wall_s"] for r in results]}


def run(quick: bool = False) -> BenchResult:
    from sims.packet import agents_sim_rate

    # every part in a process of its own (``fresh``)
    day = fleet_day_rate(1 if quick else FLEET_DAY_RUNS, 0.25 if quick else 1.0)
    year = None if quick else fresh(fleet_rate, 365.0)
    ev = ev2gym_rate()
    rows_data: list[dict[str, Any]] = []
    window = 2.0 if quick else 10.0
    for n in (20,) if quick else (100, 1000):
        rows_data.append({**fresh(agents_sim_rate, n, window, join_wall_budget_s=JOIN_WALL_BUDGET_S,
                                  warm=n >= WARM_FROM),
                          "agent": "membership only (MeshNode)"})
    rate_1000 = rows_data[-1]["sim_s_per_wall_s"]
    if quick:
        rows_data.append({"nodes": 1000, "sim_s_per_wall_s": None, "skipped": "--quick"})
    # the cost per node grows with N (each push-pull carries every member): x10 per node is
    # optimistic, so the prediction is x100 of the 1,000-node window
    predicted = window / rate_1000 * 100 if rate_1000 else None
    if not quick and predicted is not None and predicted < WARM_10K_BUDGET_S:
        rows_data.append({**fresh(agents_sim_rate, 10_000, window, warm=True), "agent": "membership only (MeshNode)"})
    else:
        rows_data.append({"nodes": 10_000, "sim_s_per_wall_s": None, "start": "warm",
                          "skipped": "--quick" if quick else "no 1,000-node rate" if predicted is None
                          else f"at the 1,000-agent rate ({rate_1000}x) the {window:g} s window would take "
                               f"about {predicted:.0f} s wall (x100: ten times the nodes, each costing more), "
                               f"over the {WARM_10K_BUDGET_S:.0f} s budget"})
    joins = join_rows(rows_data, quick)
    complete = complete_rows(quick)
    data: dict[str, Any] = {
        "rows": rows_data,
        "join_rows": joins,
        "complete_agent_rows": complete,
        "fleet_1000_1min_sim_s_per_wall_s": day["sim_s_per_wall_s"],
        "fleet_day": day,
        "fleet_year_1000_wall_s": year["wall_s"] if year else None,
        "ev2gym": ev,
        "target_fleet_sim_s_per_wall_s": TARGET_FLEET,
        "machine": machine(),
        "quick": quick,
    }
    def rate(r: dict[str, Any]) -> str:
        start = "warm start" if r.get("start") == "warm" else f"after a join of {r.get('join_wall_s')} s wall"
        return (f"{r['sim_s_per_wall_s']}x real time ({r.get('sim_s_per_cpu_s')}x per CPU second; {start})"
                if r.get("sim_s_per_wall_s") else str(r.get("skipped")))

    rows = [(f"{r['nodes']} mesh nodes (membership only), virtual time, signed", rate(r)) for r in rows_data]
    rows += [(f"join of {r['nodes']} mesh nodes through one seed, virtual time",
              f"{r['join_converged_sim_s']} s simulated in {r['join_wall_s']} s wall"
              if r.get("join_wall_s") is not None and not r.get("skipped") else str(r.get("skipped")))
             for r in joins]
    rows += [(f"{r['nodes']} complete agents (mesh + 10 ms control + allocation), virtual time, signed",
              rate(r) + ("; no member applied a share in the window" if r.get("sim_s_per_wall_s")
                         and r.get("spike_to_applied_max_ms") is None else ""))
             for r in complete]
    rows.append(("fleet 1,000 chargers, 1-min steps", f"{day['sim_s_per_wall_s']:,}x real time "
                 f"({day['us_per_charger_step']} us per charger-step; median of {day['runs']} days: "
                 f"{', '.join(f'{r:,}' for r in day['runs_sim_s_per_wall_s'])}; target {TARGET_FLEET:,}x)"))
    rows.append(("fleet year of 1,000 chargers", f"{year['wall_s']} s wall" if year else "not run (--quick)"))
    rows.append(("ev2gym, same fleet and steps", f"{ev['sim_s_per_wall_s']:,.0f}x real time "
                 f"({ev['us_per_charger_step']:.2f} us per charger-step)" if ev.get("run") else ev["reason"]))
    return BenchResult(name="sim", rows=rows, data=data)
