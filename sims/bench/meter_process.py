"""A simulated site served over Modbus TCP from a process of its own, driven over stdin.

``python -m sims.bench.meter_process`` serves one site (its meter on unit 1, one charger on
unit 11) on 127.0.0.1 at a free port, as a device on the site's network would, so the control
loop under test shares neither its process nor its interpreter lock with the device. It prints
``ready METER_URL CHARGER_URL`` and then answers one line per command:

* ``freeze``: the meter keeps answering but its sample stops advancing; answers
  ``frozen T`` with ``T`` the ``time.monotonic()`` of the freeze (one clock for the machine);
* ``unfreeze``: answers ``unfrozen``.

It exits when its stdin closes (``sims.bench.children``).
"""

from __future__ import annotations

import sys
import time

import trio


async def serve() -> None:
    from hardware.simulated import SimulatedSite, VehicleConfig
    from hardware.simulated.serve import SimServer, site_units

    site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=400_000.0, frequency_hz=60.0,
                                       vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
    async with SimServer(site_units(site)) as server:
        _say(f"ready {server.url(1)} {server.url(11)}")
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buffer = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                command = line.decode().strip()
                if command == "freeze":
                    site.freeze()
                    _say(f"frozen {time.monotonic()!r}")
                elif command == "unfreeze":
                    site.unfreeze()
                    _say("unfrozen")
                else:
                    _say(f"error unknown command {command!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    trio.run(serve)
