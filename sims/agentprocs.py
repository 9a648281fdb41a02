"""The processes of the real-network runners (``sims.realnet``): the site, and the agents' workers.

Theory of operation
-------------------
``python -m sims.agentprocs site HOST N BUILDING_W NOMINAL_HZ`` serves one simulated site (a
building, a meter and N chargers, each with a vehicle from the hardware table) over real
Modbus TCP on HOST, samples its own meter every ``SAMPLE_S`` on CLOCK_MONOTONIC, and answers:

* ``record``: forget the samples so far and (re)start sampling; answers ``recording``;
* ``step W``: the building load steps by W; answers ``stepped T`` (T: ``time.monotonic()``);
* ``trace``: ``trace JSON``, every sample since ``record``: ``[t, load_w, frequency_hz,
  [charger power_w ...]]`` (+ charging, - discharging).

``python -m sims.agentprocs worker N CONFIG...`` runs one agent per ``node.toml`` (the agent
``meshagent run`` starts: ``meshagent.agent.run_agent``) in one trio loop, says ``started``
when they all run and ``ready`` when each sees all N live and N offers, and answers:

* ``kill K,L``: its agents K and L (indices in its CONFIG list) stop dead; answers ``killed``;
* ``stats``: ``stats JSON``, per agent ``[node_id, datagrams_sent, bytes_sent, live members]``;
* ``api PATH K,L``: ``api JSON``, the bodies of ``GET PATH`` on its agents K and L's own API
  (with their operator token): how the parent reads a detector's ``/v1/spikes`` from inside
  a namespace it cannot reach.

Both speak through ``sims.procs`` and exit when their stdin closes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from sims.procs import command_lines, say

SITE = "sim-site"
SAMPLE_S = 0.005  # the site's own meter trace
MODELS = ("nissan-leaf-40", "ford-f150-lightning-er", "mitsubishi-outlander-phev")


def vehicle_of(i: int) -> tuple[str, float]:
    """Charger i's vehicle: (model from the hardware table, SoC %)."""
    return MODELS[i % len(MODELS)], 55.0 + (i * 7) % 30


# --- the site (its own process) --------------------------------------------------------------


async def site_main(host: str, n: int, building_w: float, nominal_hz: float) -> None:
    from hardware.simulated.serve import SimServer, site_units
    from hardware.simulated.site import SimulatedSite
    from hardware.simulated.vehicles import VehicleConfig

    site = SimulatedSite(time.monotonic, SITE, base_load_w=building_w)
    for i in range(n):
        model, soc = vehicle_of(i)
        site.add_charger().connect_vehicle(attrs.evolve(VehicleConfig.of(model), present_soc_pct=soc))
    site.set_grid(frequency_hz=nominal_hz)
    samples: list[list[Any]] = []
    async with SimServer(site_units(site), host=host, port=0) as server, trio.open_nursery() as nursery:

        async def sample() -> None:
            while True:
                snap = site.snapshot()
                samples.append([snap.taken_at_s, snap.active_power_w, snap.frequency_hz,
                                [round(c.power_w, 1) for c in site.chargers]])
                await trio.sleep(SAMPLE_S)

        say(f"ready {server.host} {server.port}")
        async for cmd in command_lines():
            if cmd[0] == "record":
                samples.clear()
                if not nursery.child_tasks:
                    nursery.start_soon(sample)
                say("recording")
            elif cmd[0] == "step":
                site.step_load(float(cmd[1]))
                say(f"stepped {time.monotonic()!r}")
            elif cmd[0] == "trace":
                say("trace " + json.dumps(samples))
            else:
                say(f"error unknown command {' '.join(cmd)}")
        nursery.cancel_scope.cancel()


# --- a worker (its own process): a share of the agents ------------------------------------


async def worker_main(n: int, configs: list[str]) -> None:
    from meshagent.agent import run_agent
    from meshagent.config import load_config
    from protocol.state import Scope

    nodes: list[Any] = []
    scopes: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        for path in configs:
            config = load_config(Path(path))

            async def one(config: Any = config, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    await run_agent(config, task_status=task_status)

            nodes.append(await nursery.start(one))
        say("started")

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
            elif cmd[0] == "stats":
                stats = []
                for node in nodes:
                    tr = node.endpoint.transport.statistics()
                    stats.append([node.node_id, tr.datagrams_sent, tr.bytes_sent, node.core.num_live])
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
