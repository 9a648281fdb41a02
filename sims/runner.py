"""``sims.run``: one scenario under every baseline, same world and seed, one report.

Theory of operation
-------------------
``run`` loads the scenario (a name in ``sims/scenarios/`` or a path), applies ``nodes``/``seed``
overrides, and steps the fleet level (``sims.fleet``) once per baseline. The world (arrivals,
vehicles, deaths) comes from a stream seeded by the scenario seed alone, so every baseline sees
the same vehicles at the same times; the result is deterministic for a seed.

``mesh_latency`` chooses where the mesh's delivery latency comes from:

* ``"calibrated"`` (default): the lognormal fitted to ``bench urgent`` (``sims.calibration``);
* ``"virtual"``: measured in this run by ``sims.packet`` with complete signed agents on the
  in-memory network under trio's MockClock;
* ``"real-network"``: measured in this run with agents over real UDP on their own loopback
  addresses.

Whichever it is, the report's ``calibration`` says so. ``allocator`` replaces the allocation
function of the coordinated baselines (the seam, ``sims.policy.allocate``).

``level="packet"`` runs the scenario with N complete agents instead (``sims.virtual``: mesh,
control loop, allocation and simulated devices in virtual time); that report has the mesh
only, in the same shape, with ``"level": "packet"`` and ``runner`` saying what ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sims import calibration as cal
from sims.fleet import BASELINES, Trace, run_fleet
from sims.policy import Allocator
from sims.scenario import Scenario, ScenarioError, load_scenario


def run(
    scenario: str | Path | Scenario,
    *,
    nodes: int | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    dt_s: float | None = None,
    baselines: tuple[str, ...] = BASELINES,
    allocator: Allocator | None = None,
    mesh_latency: str = "calibrated",
    out: Path | None = None,
    progress: Callable[[str, float], None] | None = None,
    traces: list[Trace] | None = None,
    level: str = "fleet",
    warm: bool = False,
) -> dict[str, Any]:
    """Run ``scenario`` under ``baselines``; return the report (and write it under ``out``).

    ``warm`` (packet level only): the agents start from one verified membership instead of
    joining through node 0 (``sims.virtual.run_packet``; the report says ``"start": "warm"``).
    """
    if warm and level != "packet":
        raise ScenarioError("warm: only at the packet level (level=\"packet\"); the fleet level has no join")
    if level == "packet":
        from sims.virtual import run_packet

        return run_packet(scenario, nodes=nodes, seed=seed, duration_s=duration_s, out=out, warm=warm,
                          progress=(lambda f: progress("mesh (packet level)", f)) if progress else None)
    if level != "fleet":
        raise ScenarioError(f"unknown level {level!r} (known: fleet, packet)")
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    sc = sc.with_overrides(nodes=nodes, seed=seed, duration_s=duration_s, dt_s=dt_s)
    for b in baselines:
        if b not in BASELINES:
            raise ScenarioError(f"unknown baseline {b!r} (known: {', '.join(BASELINES)})")
    calibration: dict[str, Any] = dict(cal.CALIBRATION)
    samples = None
    if mesh_latency != "calibrated":
        from sims.packet import measure_delivery

        measured = measure_delivery(mesh_latency, n=min(int(sc["scenario"]["nodes"]), 50), seed=int(sc["scenario"]["seed"]))
        samples = measured["samples_s"]
        calibration["mesh_delivery"] = {k: v for k, v in measured.items() if k != "samples_s"}
    wall = time.perf_counter()
    collected: list[Trace] = []
    for b in baselines:
        hook = (lambda f, b=b: progress(b, f)) if progress else None
        collected.append(run_fleet(sc, b, allocator=allocator, progress=hook, mesh_delivery_s=samples))
    report: dict[str, Any] = {
        "scenario": sc.name,
        "description": sc.description,
        "nodes": int(sc["scenario"]["nodes"]),
        "seed": int(sc["scenario"]["seed"]),
        "simulated_s": float(sc["scenario"]["duration_s"]),
        "dt_s": float(sc["scenario"]["dt_s"]),
        "level": "fleet",
        "mesh_latency": mesh_latency,
        "calibration": calibration,
        "baselines": {tr.baseline: tr.totals for tr in collected},
        "wall_s": round(time.perf_counter() - wall, 3),
    }
    if traces is not None:
        traces.extend(collected)
    if out is not None:
        from sims.report import write_json, write_plots

        report["files"] = {
            "json": str(write_json(report, out)),
            "plots": str(write_plots(collected, out, f"{sc.name}: {sc.description}")),
        }
        write_json(report, out)
    return report
