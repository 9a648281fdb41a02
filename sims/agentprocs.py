"""The processes of the real-network runners (``sims.realnet``): the site, and the agents' workers.

Theory of operation
-------------------
``python -m sims.agentprocs site HOST N BUILDING_W NOMINAL_HZ`` serves one simulated site (a
building, a meter and N chargers, each with a vehicle from the hardware table) over real
Modbus TCP on HOST, says ``ready HOST PORT[,PORT...]`` (one server per ``UNITS_PER_SERVER``
chargers, the meter on each: Modbus has 247 unit ids), samples its own meter every
``SAMPLE_S`` on CLOCK_MONOTONIC, and answers:

* ``record``: forget the samples so far and (re)start sampling; answers ``recording``;
* ``step W``: the building load steps by W; answers ``stepped T`` (T: ``time.monotonic()``);
* ``trip MW BASE_MW H D R TG SHARE``: a generator trip in the area from now on
  (``drive_frequency``); answers ``tripped T``; ``area``: ``area JSON``, the model's steps;
* ``trace``: ``trace JSON``, every sample since ``record``: ``[t, load_w, frequency_hz,
  [charger power_w ...]]`` (+ charging, - discharging);
* ``requests``: ``requests K``, the Modbus requests its servers have answered so far;
* ``cpu``: ``cpu S T``, the CPU seconds this process has used (``time.process_time``) at
  ``time.monotonic()`` T (workers answer it too): which process could not keep up.

The meter refreshes its registers every ``METER_REFRESH_S`` (``RefreshingSite``), as a real
meter's do (it computes RMS values over mains cycles, not per request): a read in between
gets the last sample, whose age the meter's timing registers report. Without it every read
advanced every charger's physics, O(N) per read and O(N^2) a second with N agents polling:
at 100 agents that was 58 % of the site process's CPU (py-spy, 2026-12-03).

``python -m sims.agentprocs worker N CONFIG...`` runs one agent per ``node.toml`` (the agent
``meshagent run`` starts: ``meshagent.agent.run_agent``) in one trio loop, says ``started``
when they all run and ``ready`` when each sees all N live and N offers, and answers:

* ``kill K,L``: its agents K and L (indices in its CONFIG list) stop dead; answers ``killed``;
* ``stats``: ``stats JSON``, per agent ``[node_id, datagrams_sent, bytes_sent, live members,
  faults in its own state record]``;
* ``api PATH K,L``: ``api JSON``, the bodies of ``GET PATH`` on its agents K and L's own API
  (with their operator token): how the parent reads a detector's ``/v1/spikes`` from inside
  a namespace it cannot reach.

Both speak through ``sims.procs`` and exit when their stdin closes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from sims.procs import command_lines, say

SITE = "sim-site"
SAMPLE_S = 0.005  # the site's own meter trace
METER_REFRESH_S = 0.005  # the meter's registers (a real meter's RMS over a mains cycle: 10-20 ms)
AREA_DT_S = 0.02  # the area's frequency model steps (the fleet runner's generator-trip dt)
UNITS_PER_SERVER = 236  # Modbus unit ids 11..246 for the chargers (1: the meter) on one server
MODELS = ("nissan-leaf-40", "ford-f150-lightning-er", "mitsubishi-outlander-phev")


def vehicle_of(i: int) -> tuple[str, float]:
    """Charger i's vehicle: (model from the hardware table, SoC %)."""
    return MODELS[i % len(MODELS)], 55.0 + (i * 7) % 30


# --- the site (its own process) --------------------------------------------------------------


def charger_unit(i: int) -> tuple[int, int]:
    """Charger i's (server index, Modbus unit id) on the site's servers."""
    return i // UNITS_PER_SERVER, 11 + i % UNITS_PER_SERVER


def refreshing_site(clock: Any, name: str, base_load_w: float, refresh_s: float = METER_REFRESH_S) -> Any:
    """A ``SimulatedSite`` whose meter refreshes every ``refresh_s`` (see the module's docstring)."""
    from hardware.simulated.site import MeterSnapshot, SimulatedSite

    @attrs.define(eq=False)
    class RefreshingSite(SimulatedSite):
        _last: MeterSnapshot | None = attrs.field(init=False, default=None)

        def snapshot(self) -> MeterSnapshot:
            with self.lock:
                last = self._last
                if last is not None and self.clock() - last.taken_at_s < refresh_s:
                    return last
                self._last = snap = super().snapshot()
                return snap

        def step_load(self, delta_w: float) -> None:
            with self.lock:
                super().step_load(delta_w)
                self._last = None  # the step shows at the next read

        def set_grid(self, *, frequency_hz: float | None = None, voltage_v: float | None = None) -> None:
            with self.lock:
                super().set_grid(frequency_hz=frequency_hz, voltage_v=voltage_v)
                self._last = None

    return RefreshingSite(clock, name, base_load_w=base_load_w)


async def site_main(host: str, n: int, building_w: float, nominal_hz: float) -> None:
    from hardware.simulated.serve import SimServer, site_units
    from hardware.simulated.vehicles import VehicleConfig

    site = refreshing_site(time.monotonic, SITE, building_w)
    for i in range(n):
        model, soc = vehicle_of(i)
        site.add_charger().connect_vehicle(attrs.evolve(VehicleConfig.of(model), present_soc_pct=soc))
    site.set_grid(frequency_hz=nominal_hz)
    units = site_units(site) if n <= UNITS_PER_SERVER else None
    samples: list[list[Any]] = []
    area_trace: list[float] = []
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        servers = []
        for k in range(0, max(1, -(-n // UNITS_PER_SERVER))):
            if units is None:  # the meter on every server; this server's share of the chargers
                from hardware.simulated.images import ChargerUnit, MeterUnit

                mine: dict[int, Any] = {1: MeterUnit.of(site, 1)}
                for i in range(k * UNITS_PER_SERVER, min(n, (k + 1) * UNITS_PER_SERVER)):
                    mine[charger_unit(i)[1]] = ChargerUnit.of(site.chargers[i], charger_unit(i)[1], site)
            else:
                mine = units
            servers.append(await stack.enter_async_context(SimServer(mine, host=host, port=0)))

        async def sample() -> None:
            last = None
            while True:
                snap = site.snapshot()
                if snap.taken_at_s != last:  # a new refresh of the meter
                    last = snap.taken_at_s
                    samples.append([snap.taken_at_s, snap.active_power_w, snap.frequency_hz,
                                    [round(c.power_w, 1) for c in site.chargers]])
                await trio.sleep(SAMPLE_S)

        say(f"ready {servers[0].host} {','.join(str(s.port) for s in servers)}")
        async for cmd in command_lines():
            if cmd[0] == "record":
                samples.clear()
                if not nursery.child_tasks:
                    nursery.start_soon(sample)
                say("recording")
            elif cmd[0] == "step":
                site.step_load(float(cmd[1]))
                say(f"stepped {time.monotonic()!r}")
            elif cmd[0] == "trip":
                trip = [float(x) for x in cmd[1:8]]
                nursery.start_soon(functools.partial(drive_frequency, site, area_trace, nominal_hz, *trip))
                say(f"tripped {time.monotonic()!r}")
            elif cmd[0] == "trace":
                say("trace " + json.dumps(samples))
            elif cmd[0] == "area":
                say("area " + json.dumps(area_trace))
            elif cmd[0] == "requests":
                say(f"requests {sum(s.requests for s in servers)}")
            elif cmd[0] == "cpu":
                say(f"cpu {time.process_time()!r} {time.monotonic()!r}")
            else:
                say(f"error unknown command {' '.join(cmd)}")
        nursery.cancel_scope.cancel()


async def drive_frequency(site: Any, trajectory: list[Any], nominal_hz: float, trip_mw: float, base_mw: float, h_s: float, d_pu: float,
                          r_pu: float, tg_s: float, fleet_share: float) -> None:
    """The area's frequency after a trip of ``trip_mw``, every AREA_DT_S, into the site's grid.

    The area (``sims.grid.frequency.Area``: swing equation, governor droop) sees the trip less
    the chargers' response: how far their power has moved from where it was at the trip,
    times ``fleet_share`` (the area holds that many such fleets, responding alike: the fleet
    runner's rule), so the agents' droop and plans feed back into the frequency they read.
    ``trajectory`` gets ``[frequency_hz, late_s]`` per step, the model's own time being
    ``k x AREA_DT_S`` from the trip (a step the process ran late still advances AREA_DT_S).
    """
    from sims.grid.frequency import Area, AreaParams

    model = Area(AreaParams(base_mw, h_s, d_pu, r_pu, tg_s, nominal_hz), AREA_DT_S)
    before_w = math.fsum(c.power_w for c in site.chargers)
    at = trio.current_time()
    while True:
        response_mw = (before_w - math.fsum(c.power_w for c in site.chargers)) * fleet_share / 1e6
        f = model.step(trip_mw - response_mw)
        site.set_grid(frequency_hz=f)
        trajectory.append([f, max(0.0, trio.current_time() - at)])
        at += AREA_DT_S
        await trio.sleep_until(at)


# --- a worker (its own process): a share of the agents ------------------------------------


async def worker_main(n: int, configs: list[str]) -> None:
    from meshagent.agent import run_agent
    from meshagent.config import load_config
    from protocol.state import Scope

    nodes: list[Any] = [None] * len(configs)
    scopes = [trio.CancelScope() for _ in configs]
    begun = time.monotonic()
    async with trio.open_nursery() as nursery:

        async def one(k: int, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with scopes[k]:
                await run_agent(load_config(Path(configs[k])), task_status=task_status)

        # one after the other: started all at once, 40 agents' first cycles (each discovering
        # its charger's SunSpec models over Modbus) crowded the process, and their devices
        # stayed unreadable (ERR device_unreadable, no cycle done in 25 s; measured 2026-12-03)
        for k in range(len(configs)):
            nodes[k] = await nursery.start(one, k)
        say(f"started {time.monotonic() - begun:.2f}")

        async def join() -> None:
            while not all(node.core.num_live == n and node.capacity(Scope.site(SITE)).nodes == n  # noqa: ASYNC110 (observer)
                          for node in nodes):
                await trio.sleep(0.1)
            say("ready")

        nursery.start_soon(join)
        async for cmd in command_lines():
            if cmd[0] == "kill":
                for k in (int(x) for x in cmd[1].split(",") if x):
                    scopes[k].cancel()
                say("killed")
            elif cmd[0] == "api":  # GET PATH of each agent whose index is listed, with its operator token
                bodies = []
                for k in (int(x) for x in cmd[2].split(",") if x):
                    bodies.append(await _api_get(configs[k], cmd[1]))
                say("api " + json.dumps(bodies))
            elif cmd[0] == "cpu":
                say(f"cpu {time.process_time()!r} {time.monotonic()!r}")
            elif cmd[0] == "stats":
                stats = []
                for node in nodes:
                    tr = node.endpoint.transport.statistics()
                    own = node.records.record(node.node_id)
                    stats.append([node.node_id, tr.datagrams_sent, tr.bytes_sent, node.core.num_live,
                                  list(own.faults) if own is not None else None])
                say("stats " + json.dumps(stats))
            else:
                say(f"error unknown command {' '.join(cmd)}")
        nursery.cancel_scope.cancel()


async def _api_get(config_path: str, path: str) -> Any:
    """``GET path`` of an agent's own API (in this process's namespace), or the error."""
    from meshagent.api.auth import read_token_file
    from meshagent.api.http import get_json
    from meshagent.config import load_config

    config = load_config(Path(config_path))
    host, port = config.section("mesh").api
    token_file = Path(config_path).parent / "state" / "api" / "operator.token"
    try:
        status, body = await get_json(host, port, path, token=read_token_file(token_file))
    except (OSError, trio.TooSlowError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return body if status == 200 else {"error": f"HTTP {status}", "body": body}


def main(argv: list[str]) -> None:
    """``python -m sims.agentprocs site HOST N BUILDING_W NOMINAL_HZ`` or ``... worker N CONFIG...``"""
    if argv[0] == "site":
        trio.run(site_main, argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
    elif argv[0] == "worker":
        trio.run(worker_main, int(argv[1]), argv[2:])
    else:
        raise SystemExit(f"unknown role {argv[0]!r}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
