"""A simulated site over real Modbus TCP for the end-to-end allocation test (a process).

``python -m tests.meshagent.allocation.site_server HOST PORT N STEP_AT_S STEP_W DURATION_S OUT``
serves a site meter (unit 1) and N chargers with vehicles (units 11...), adds STEP_W to the
building load when the file OUT.step appears (the test makes it once the agents are ready)
or STEP_AT_S after it starts, whichever comes first, and writes the meter's load and each
charger's power to OUT (JSON, every 20 ms) until DURATION_S.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from hardware.simulated.serve import SimServer, site_units
from hardware.simulated.site import SimulatedSite
from hardware.simulated.vehicles import VEHICLE_SPECS, VehicleConfig


def _write(out: str, body: dict) -> None:
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, out)


async def main(host: str, port: int, n: int, step_at_s: float, step_w: float, duration_s: float, out: str) -> None:
    model = sorted(VEHICLE_SPECS)[0]
    vehicles = [VehicleConfig.of(model, present_soc_pct=60.0, minimum_soc_pct=20.0, vehicle_id=f"EV{i}") for i in range(n)]
    site = SimulatedSite.with_chargers(time.monotonic, n, name="e2e", vehicles=vehicles, base_load_w=40_000.0)
    server = SimServer(site_units(site), kind="tcp", host=host, port=port)
    await server.start()
    try:
        start = trio.current_time()
        stepped = False
        while trio.current_time() - start < duration_s:
            if not stepped and (trio.current_time() - start >= step_at_s or os.path.exists(out + ".step")):  # noqa: ASYNC240 (a tiny local file, polled)
                site.step_load(step_w)
                stepped = True
            snap = site.snapshot()
            body = {"t": trio.current_time() - start, "stepped": stepped, "load_w": snap.active_power_w,
                    "chargers_w": [c.power_w for c in site.chargers]}
            _write(out, body)  # a small file, written whole: the test polls it
            await trio.sleep(0.02)
    finally:
        await server.stop()


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4]), float(a[5]), a[6])
