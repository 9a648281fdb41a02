"""The central baseline: a CSMS dispatches each spike's shares with OCPP 2.0.1 SetChargingProfile.

Theory of operation
-------------------
What the mesh replaces, run on the same machine with the same spikes: one CSMS process
(asyncio, the ``ocpp`` package's ``ocpp.v201.ChargePoint`` on each ``websockets`` server
connection, schema validation on, as in ``sims/csms_server.py``) and the N stations as
``ocpp.v201.ChargePoint`` clients over real WebSockets on 127.0.0.1, spread over a few
station processes. None of it is trio code, and none of it shares a process with the agents.

On ``spike K DEFICIT`` (from the parent, over stdin) the CSMS reads ``time.monotonic()``,
computes the same allocation the mesh's detector computes (``protocol.allocation.plan.plan``
over the N stations' offers: the same limit and weight as the agents'), sends every
station a SetChargingProfile (TxDefaultProfile, absolute, one period, the share as a
negative limit in W: discharge) at once, and reads the clock again when the last station
has answered (its CALLRESULT). It reports ``central K MS ANSWERED``: the whole dispatch, in
one process and on one clock. The time the spike takes to reach the CSMS from the meter is
not counted, in the central side's favour. A station that has not answered within the
deadline makes the spike *missed* (infinitely slow).

Each station "applies" the profile at its simulated inverter (it keeps the limit) before it
answers ``Accepted``. The processes exit when their stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from typing import Any

from ocpp.v201 import ChargePoint, call, call_result
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from protocol.allocation.plan import MemberOffer, plan
from sims.bench.allocation_mesh import LIMIT_W, WEIGHT, agent_id
from sims.csms_server import on  # the ocpp package's route decorator, typed
from sims.procs import Child, stop_all
from sims.procs import say as _say

SUBPROTOCOL = Subprotocol("ocpp2.0.1")
CONNECT_CONCURRENCY = 32  # stations opening their WebSocket at once (the listen backlog is 100)


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)  # it logs every message at INFO


async def _stdin_lines() -> Any:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().split()


def _profile(trial: int, share_w: float) -> call.SetChargingProfile:
    return call.SetChargingProfile(evse_id=1, charging_profile={
        "id": trial + 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute",
        "charging_schedule": [{
            "id": trial + 1, "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": -round(share_w, 1)}],
        }],
    })


# --- the CSMS (its own process) ----------------------------------------------------------------


async def csms(n: int, deadline_s: float) -> None:
    stations: dict[str, ChargePoint] = {}
    all_connected = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        station_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1] if connection.request else "?"
        cp = ChargePoint(station_id, connection, response_timeout=deadline_s)
        stations[station_id] = cp
        if len(stations) == n:
            all_connected.set()
        with contextlib.suppress(ConnectionClosed):
            await cp.start()

    offers = [MemberOffer(agent_id(i), "tx-1", LIMIT_W, WEIGHT) for i in range(n)]
    async with serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        _say(f"listening {next(iter(server.sockets)).getsockname()[1]}")
        await all_connected.wait()
        _say("ready")
        async for cmd in _stdin_lines():
            if cmd[0] != "spike":
                _say(f"error unknown command {' '.join(cmd)}")
                continue
            trial, deficit_w = int(cmd[1]), float(cmd[2])
            t0 = time.monotonic()
            shares = plan(offers, deficit_w).shares_units
            calls = [stations[sid].call(_profile(trial, units / 10), suppress=False) for sid, units in shares.items()]
            done, pending = await asyncio.wait([asyncio.ensure_future(c) for c in calls], timeout=deadline_s)
            elapsed_ms = (time.monotonic() - t0) * 1000
            for task in pending:
                task.cancel()
            answered = sum(1 for t in done if t.exception() is None and t.result().status == "Accepted")
            _say(f"central {trial} {elapsed_ms if answered == n else math.inf!r} {answered}")


# --- the stations (one or more processes) ------------------------------------------------------


class Station(ChargePoint):  # type: ignore[misc]
    setpoint_w = 0.0  # the simulated inverter: what it was told to export

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        self.setpoint_w = -charging_profile["charging_schedule"][0]["charging_schedule_period"][0]["limit"]
        return call_result.SetChargingProfile(status="Accepted")


async def stations(port: int, lo: int, hi: int) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    async with contextlib.AsyncExitStack() as stack:

        async def open_station(i: int) -> Station:
            async with gate:
                ws = await stack.enter_async_context(
                    connect(f"ws://127.0.0.1:{port}/ocpp/{agent_id(i)}", subprotocols=[SUBPROTOCOL]))
            return Station(agent_id(i), ws)

        opened = await asyncio.gather(*(open_station(i) for i in range(lo, hi)))
        tasks = [asyncio.create_task(s.start()) for s in opened]
        _say("connected")
        async for _ in _stdin_lines():
            pass  # no commands: runs until stdin closes
        for task in tasks:
            task.cancel()


# --- the parent's side -------------------------------------------------------------------------


class CentralFleet:
    """The CSMS and N stations over ``station_processes``; ``spike_ms`` times one dispatch."""

    def __init__(self, n: int, station_processes: int, deadline_s: float) -> None:
        self.n = n
        self.csms = Child("csms", "sims.bench.allocation_central", ["csms", str(n), str(deadline_s)])
        self.stations: list[Child] = []
        try:
            port = self.csms.expect("listening", time.monotonic() + 30)[0]
            bounds = [round(n * s / station_processes) for s in range(station_processes + 1)]
            for s in range(station_processes):
                self.stations.append(Child(f"stations-{s}", "sims.bench.allocation_central",
                                           ["stations", port, str(bounds[s]), str(bounds[s + 1])]))
            deadline = time.monotonic() + 60 + 0.2 * n
            for child in self.stations:
                child.expect("connected", deadline)
            self.csms.expect("ready", deadline)
        except BaseException:
            self.close()
            raise

    def spike_ms(self, trial: int, deficit_w: float, deadline_s: float) -> float:
        self.csms.send(f"spike {trial} {deficit_w!r}")
        fields = self.csms.expect("central", time.monotonic() + deadline_s + 30)
        if int(fields[0]) != trial:
            raise RuntimeError(f"the CSMS answered spike {fields[0]} for {trial}")
        return float(fields[1])

    def close(self) -> None:
        stop_all([*self.stations, self.csms])


def main(argv: list[str]) -> None:
    """``python -m sims.bench.allocation_central csms N DEADLINE_S | stations PORT LO HI``"""
    _quiet()
    if argv[0] == "csms":
        asyncio.run(csms(int(argv[1]), float(argv[2])))
    else:
        asyncio.run(stations(int(argv[1]), int(argv[2]), int(argv[3])))


if __name__ == "__main__":
    main(sys.argv[1:])
