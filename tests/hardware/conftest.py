"""The rig every device contract test runs on: one simulated site, reached three ways.

``sim``: the in-process simulated devices; ``tcp``: the same site behind a real pymodbus
server on 127.0.0.1 (ephemeral port); ``rtu``: behind a pymodbus serial server on a pty
pair (``PtyLine``); ``std``: over TCP to a charger that implements only the standard SunSpec
models 1, 701, 702, 704, 713. A test marked ``needs_64900`` (what only our model 64900
offers) is deselected on ``std``; that a standard charger answers "not available" there is
asserted in test_standard_sunspec.py. The physics handles (``rig.site``, ``rig.charger``)
let a test change the world; the devices are what the test checks.

These run on the real clock: the servers live in another thread and answer over real
sockets, which an autojump clock would race. Waits are condition polls bounded by
``trio.fail_after``; timing itself is checked in ``test_physics.py`` in virtual time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from hardware.connect import open_charger, open_device, open_site_meter
from hardware.interfaces import DeviceKind
from hardware.simulated import SimulatedSite, SimWorld, VehicleConfig
from hardware.simulated.serve import PtyLine, SimServer, site_units

STALE_AFTER_S = 0.2
TIMEOUT_S = 0.3
BASE_LOAD_W = 40_000.0


@attrs.define
class Rig:
    kind: str
    site: SimulatedSite
    meter: Any
    inverter: Any
    thermal: Any
    tamper: Any
    vehicle: Any
    server: SimServer | None = None
    line: PtyLine | None = None
    meter_url: str = ""
    charger_url: str = ""

    @property
    def charger(self) -> Any:
        return self.site.chargers[0]

    async def wait_for(self, read: Callable[[], Awaitable[Any]], pred: Callable[[Any], bool], timeout_s: float = 2.0) -> Any:
        with trio.fail_after(timeout_s):
            while True:
                value = await read()
                if pred(value):
                    return value
                await trio.sleep(0.005)


def make_site() -> SimulatedSite:
    return SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=BASE_LOAD_W,
                                       vehicles=[VehicleConfig.of("nissan-leaf-40")])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test of what only our model 64900 offers runs on every rig but the standard one."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        wanted = item.get_closest_marker("needs_64900") is None or callspec is None or callspec.params.get("rig") != "std"
        (kept if wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sim", "tcp", "rtu", "std"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    kind = request.param
    site = make_site()
    opts: dict[str, Any] = {"stale_after_s": STALE_AFTER_S, "clock": time.monotonic}
    if kind == "sim":
        world = SimWorld(time.monotonic)
        world.add(site)
        meter = open_site_meter("sim://site-a/meter", world=world, stale_after_s=STALE_AFTER_S)
        ch = open_charger("sim://site-a/charger-1", world=world, stale_after_s=STALE_AFTER_S)
        yield Rig(kind, site, meter, ch.inverter, ch.thermal, ch.tamper, ch.vehicle)
        await meter.aclose()
        await ch.aclose()
        return
    line = PtyLine().open() if kind == "rtu" else None
    # "std": Modbus TCP to a charger with only the SunSpec Alliance's standard models (no 64900)
    server = SimServer(site_units(site, standard=kind == "std"), kind="rtu" if kind == "rtu" else "tcp",
                       serial_path=line.server_path if line else "")
    try:
        await server.start()
        if line is not None:
            meter_url = f"modbus+rtu://{line.client_path}?baud=115200&unit=1"
            charger_url = f"modbus+rtu://{line.client_path}?baud=115200&unit=11"
        else:
            meter_url, charger_url = server.url(1), server.url(11)
        # RTU is one line: the meter shares the charger's port, as two units on an RS-485 bus.
        ch = open_charger(charger_url, timeout_s=TIMEOUT_S, **opts)
        if line is not None:
            meter = open_device(meter_url, DeviceKind.METER, link=ch._link, **opts)
        else:
            meter = open_site_meter(meter_url, timeout_s=TIMEOUT_S, **opts)
        rig = Rig(kind, site, meter, ch.inverter, ch.thermal, ch.tamper, ch.vehicle, server, line, meter_url, charger_url)
        try:
            yield rig
        finally:
            await meter.aclose()
            await ch.aclose()
    finally:
        await server.stop()
        if line is not None:
            line.close()
