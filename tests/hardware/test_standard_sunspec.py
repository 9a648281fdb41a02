"""A charger that implements only the SunSpec Alliance's standard models (1, 701, 702, 704,
713), served by a real pymodbus server: the image checked by pysunspec2 (the Alliance's own
client and JSON models), every driver, the atomic setpoint, the reversion timer, and
``meshagent read`` through the console script. Real clock: the server is another thread."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from hardware.connect import open_charger
from hardware.interfaces import DeviceFault, FaultKind, InverterState
from hardware.modbus.registers import MODELS
from hardware.modbus.symbols import SYMBOLS
from hardware.simulated.images import ChargerUnit
from hardware.simulated.serve import SimServer, site_units
from tests.hardware.conftest import STALE_AFTER_S, TIMEOUT_S, make_site
from tests.hardware.test_cli import run

sunspec2 = pytest.importorskip("sunspec2", reason="pysunspec2 (the SunSpec Alliance models) is in the test extra")
sunspec_client = pytest.importorskip("sunspec2.modbus.client")


@pytest.fixture
async def std() -> AsyncIterator[tuple[Any, SimServer, Any]]:
    site = make_site()
    server = SimServer(site_units(site, standard=True))
    await server.start()
    ch = open_charger(server.url(11), timeout_s=TIMEOUT_S, stale_after_s=STALE_AFTER_S, clock=time.monotonic)
    ch.inverter.revert_after_s = 1
    try:
        yield site, server, ch
    finally:
        await ch.aclose()
        await server.stop()


async def until(pred: Any, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if pred():
                return
            await trio.sleep(0.005)


def _unit(server: SimServer) -> ChargerUnit:
    unit = server.units[11]
    assert isinstance(unit, ChargerUnit)
    return unit


def _models_json() -> dict[int, Any]:
    d = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")
    out = {}
    for mid in (1, 701, 702, 704, 713):
        with open(os.path.join(d, f"model_{mid}.json")) as f:
            out[mid] = json.load(f)
    return out


def _flat(group: dict[str, Any], prefix: str = "") -> list[tuple[str, str, int]]:
    out = [(prefix + p["name"], p["type"], p["size"]) for p in group.get("points", [])]
    for sub in group.get("groups", []):
        out += _flat(sub, prefix + sub["name"] + ".")
    return out


def test_tables_and_symbols_are_the_alliances() -> None:
    for mid, m in _models_json().items():
        ours = [(p.name, p.type, p.size) for p in MODELS[mid].points]
        assert ours == _flat(m["group"]), mid
        for name, syms in SYMBOLS[mid].items():
            point = next(p for p in _flat_points(m["group"]) if p[0] == name)
            assert syms == {s["value"]: s["name"] for s in point[1]}, (mid, name)


def _flat_points(group: dict[str, Any], prefix: str = "") -> list[tuple[str, list[Any]]]:
    out = [(prefix + p["name"], p.get("symbols", [])) for p in group.get("points", [])]
    for sub in group.get("groups", []):
        out += _flat_points(sub, prefix + sub["name"] + ".")
    return out


async def test_pysunspec2_reads_the_image(std: tuple[Any, SimServer, Any]) -> None:
    site, server, _ = std
    site.chargers[0].set_power(-5000.0)  # discharge: SunSpec W = +5000

    def scan() -> dict[str, Any]:
        host, port = server.host, server.port
        dev = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=11, ipaddr=host, ipport=port, timeout=2)
        try:
            dev.scan()
            return {"models": sorted(k for k in dev.models if isinstance(k, int)),
                    "W": dev.models[701][0].W.cvalue, "InvSt": dev.models[701][0].InvSt.value,
                    "WMaxRtg": dev.models[702][0].WMaxRtg.cvalue}
        finally:
            dev.close()

    await until(lambda: abs(site.chargers[0].snapshot().actual_power_w + 5000.0) <= 1, 10)
    got = await trio.to_thread.run_sync(scan)
    assert got["models"] == [1, 701, 702, 704, 713]
    assert got["W"] == 5000 and got["InvSt"] == 3  # RUNNING
    assert got["WMaxRtg"] == 11000


async def test_every_driver_works_without_model_64900(std: tuple[Any, SimServer, Any]) -> None:
    site, _, ch = std
    status = await ch.inverter.status()
    assert status.state is InverterState.IDLE and status.limits.max_discharge_w == 7000.0
    assert (await ch.thermal.read()).temperature_c == pytest.approx(site.chargers[0].snapshot().temperature_c, abs=0.1)
    assert (await ch.tamper.read()).open is False
    vehicle = await ch.vehicle.read()
    assert vehicle.connected and vehicle.parameters.battery_energy_capacity_wh == 39000.0
    with pytest.raises(DeviceFault) as info:
        await ch.inverter.open_contactors()
    assert info.value.kind is FaultKind.NOT_SUPPORTED and "not available" in str(info.value)
    assert (await ch.inverter.clear_faults()).cleared == ()
    await ch.inverter.set_safe_mode(True)
    assert (await ch.inverter.status()).state is InverterState.SAFE_MODE
    with pytest.raises(DeviceFault):
        await ch.inverter.set_power(-1000.0)
    await ch.inverter.set_safe_mode(False)
    assert ch.inverter.notes == []  # the image implements every point the driver uses


async def test_setpoint_is_one_atomic_write_with_the_sunspec_sign(std: tuple[Any, SimServer, Any]) -> None:
    site, server, ch = std
    unit = _unit(server)
    await ch.inverter.status()
    await ch.inverter.set_power(-5000.0)  # prepare once: later calls are the hot path
    unit.write_log.clear()
    assert await ch.inverter.set_power(-4321.5) == -4321.5
    start = unit.layout.starts()[704]
    first = start + MODELS[704].point("WSetEna").offset
    # one FC16: WSetEna, WSetMod, WSet, WSetRvrt; then the reversion timer renewed
    assert unit.write_log[0] == (first, 6)
    assert unit.write_log[1] == (start + MODELS[704].point("WSetEnaRvrt").offset, 3)
    assert (unit.wset_ena, unit.wset_w, unit.reversion.wset_rvrt_w, unit.reversion.wset_rvrt_tms) == (1, 4321.5, 0.0, 1)
    status = await ch.inverter.status()
    assert status.setpoint_w == -4321.5
    await ch.inverter.status()
    await until(lambda: site.chargers[0].snapshot().actual_power_w <= -4321, 2)
    assert (await ch.inverter.status()).state is InverterState.DISCHARGING
    await ch.inverter.set_power(0.0)
    assert unit.wset_ena == 0  # 0 W disables the setpoint


async def test_device_reverts_to_no_power_when_the_writes_stop(std: tuple[Any, SimServer, Any]) -> None:
    site, server, ch = std
    unit = _unit(server)
    await ch.inverter.set_power(-5000.0)
    t0 = time.monotonic()
    for _ in range(3):  # renewed: still discharging past the 1 s reversion time
        await trio.sleep(0.5)
        await ch.inverter.set_power(-5000.0)
    assert unit.reversion.reversions == 0 and site.chargers[0].snapshot().setpoint_w == -5000.0
    t0 = time.monotonic()
    await until(lambda: site.chargers[0].snapshot().actual_power_w == 0.0, 3)
    reverted_after = time.monotonic() - t0
    assert 0.9 <= reverted_after <= 1.5, reverted_after
    assert unit.reversion.reversions == 1 and unit.wset_ena == 0


class NoReversionUnit(ChargerUnit):
    def model_values(self, model_id: int) -> dict[str, object]:
        values = super().model_values(model_id)
        if model_id == 704:
            values.update(WSetRvrt=None, WSetEnaRvrt=None, WSetRvrtTms=None, WSetRvrtRem=None)
        return values


async def test_a_device_without_reversion_is_named_once() -> None:
    site = make_site()
    unit = NoReversionUnit.of(site.chargers[0], 11, site, standard=True)
    server = SimServer({11: unit})
    async with server:
        ch = open_charger(server.url(11), timeout_s=TIMEOUT_S, stale_after_s=STALE_AFTER_S, clock=time.monotonic)
        try:
            await ch.inverter.set_power(-1000.0)
            await ch.inverter.set_power(-2000.0)
            assert len(ch.inverter.notes) == 1 and "WSetRvrtTms" in ch.inverter.notes[0]
            assert unit.wset_w == 2000.0 and unit.reversion.deadline is None
        finally:
            await ch.aclose()


async def test_read_interprets_every_standard_model() -> None:
    site = make_site()
    site.chargers[0].set_power(-5000.0)
    site.set_grid(frequency_hz=60.02)
    async with SimServer(site_units(site, standard=True)) as server:
        await until(lambda: site.chargers[0].snapshot().actual_power_w == -5000.0, 5)
        done = await run("read", server.url(11))
        assert done.returncode == 0, done.stderr
        text = done.stdout.decode()
        assert "W = -5000 W (discharging)" in text
        assert "InvSt = RUNNING" in text and "ACType = SPLIT_PHASE" in text
        assert "Hz = 60.020 Hz" in text and "60.0199" not in text
        assert "VA = not implemented" in text
        assert "[model 713 (DERStorageCapacity)]" in text and "[vehicle]" in text
        done = await run("read", server.url(11), "--json")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.decode().strip().splitlines()[-1])
        m701 = out["model 701 (DERMeasureAC)"]
        assert m701["W"] == -5000 and m701["InvSt"] == "RUNNING" and m701["Hz"] == 60.02 and m701["VA"] is None
        raw = out["model 701 (DERMeasureAC) raw"]
        assert raw["W"] == 5000 and raw["Hz"] == 60020 and raw["Hz_SF"] == -3
        assert out["inverter"]["actual_power_w"] == -5000.0
        assert not math.isnan(out["thermal"]["temperature_c"])


async def test_one_shot_read_does_not_promise_a_retry() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = await run("read", f"modbus+tcp://127.0.0.1:{port}/1")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "cannot connect" in err and "retry in" not in err


async def test_setpoint_write_to_power_reached(std: tuple[Any, SimServer, Any]) -> None:
    """Figure for the note: set_power -> the device's own 701 W within 1 % of it, over TCP."""
    _, _, ch = std
    await ch.inverter.status()
    samples: list[float] = []
    with trio.fail_after(20):
        for i in range(40):
            target = 5000.0 if i % 2 else -5000.0
            t0 = time.perf_counter()
            applied = await ch.inverter.set_power(target)
            while abs((await ch.inverter.status()).actual_power_w - applied) > abs(applied) * 0.01:
                pass
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    p50, worst = samples[len(samples) // 2], samples[-1]
    print(f"\nsetpoint write -> power reached (standard SunSpec over TCP, n=40): p50 {p50:.1f} ms, max {worst:.1f} ms")
    assert p50 < 100.0  # the calibration limit of `meshagent test-discharge`
    await ch.inverter.set_power(0.0)


@pytest.mark.parametrize("standard", [True, False], ids=["standard", "with-64900"])
async def test_status_carries_the_702_nameplate_rating(standard: bool) -> None:
    """``InverterLimits.rated_w`` is 702 WMaxRtg, whatever the vehicle caps the limit to; our
    64900 has no rating point, so a device with it gives the rating through 702 too."""
    site = make_site()  # 11 kW inverter, the Leaf caps discharge at 7 kW
    async with SimServer(site_units(site, standard=standard)) as server:
        ch = open_charger(server.url(11), timeout_s=TIMEOUT_S, stale_after_s=STALE_AFTER_S, clock=time.monotonic)
        try:
            limits = (await ch.inverter.status()).limits
            assert (limits.max_discharge_w, limits.rated_w) == (7000.0, 11000.0)
            assert ch.inverter.notes == []
        finally:
            await ch.aclose()


async def test_droop_is_on_the_702_rating_with_a_vehicle_capping_below_it(tmp_path: Any) -> None:
    """The real control loop on a standard SunSpec charger over Modbus TCP, no
    inverter_nameplate: the Ford caps discharge at 9.6 kW under the 11 kW WMaxRtg, and the
    steady droop is the IEEE 1547-2018 curve on 11 kW within 1 %. (The old base, the largest
    limit seen, 9.6 kW, is 1.1-5.8 % off at these frequencies.) Real clock: the server is a
    thread; the open-loop response time is set to its 0.2 s minimum so each step settles fast
    (within 2.5 s, then held for 0.5 s)."""
    from hardware.connect import open_site_meter
    from hardware.simulated import SimulatedSite, VehicleConfig
    from meshagent.control.loop import ControlLoop, Devices
    from tests.meshagent.control.conftest import section
    from tests.meshagent.control.test_droop import reference_droop_pu

    site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=40_000.0,
                                       vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
    site.set_grid(frequency_hz=60.0)
    charger = site.chargers[0]
    errors = []
    async with SimServer(site_units(site, standard=True)) as server:
        meter = open_site_meter(server.url(1))
        ch = open_charger(server.url(11))
        loop = ControlLoop(section(cycle_budget="1s", response_time="200ms"),
                           Devices(meter, ch.inverter, ch.vehicle, ch.thermal, ch.tamper), node_id="n1",
                           scope_id="site-1", state_dir=tmp_path)
        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    await nursery.start(loop.run)
                    for f in (59.7, 59.0, 58.6):
                        site.set_grid(frequency_hz=f)
                        want_w = -reference_droop_pu(f) * 11_000.0

                        def error_w(want_w: float = want_w) -> float:
                            return abs(charger.snapshot().actual_power_w - want_w)

                        # settled: every sample for 0.5 s (2.5 response times) within 1 % of the
                        # nameplate (a ramp passing through the band is not settled), by 3 s after
                        # the step (it was one sample after a fixed 2.5 s)
                        held: list[float] = []
                        with trio.move_on_after(3.0):
                            while len(held) < 25 or max(held[-25:]) > 0.01 * 11_000.0:
                                held.append(error_w())
                                await trio.sleep(0.02)
                        held = held[-25:]
                        errors.append(max(held) / 11_000.0)
                        assert max(held) <= 0.01 * 11_000.0, (f, charger.snapshot().actual_power_w, want_w, held)
                    nursery.cancel_scope.cancel()
            assert (loop.logic.nameplate_source, loop.logic.nameplate_discharge_w) == ("device", 11_000.0)
            assert charger.limits().max_discharge_w == 9600.0
        finally:
            await meter.aclose()
            await ch.aclose()
    print(f"\ndroop on the 702 WMaxRtg (11 kW, vehicle cap 9.6 kW), standard SunSpec over Modbus TCP, "
          f"59.7/59.0/58.6 Hz: max error {max(errors) * 100:.3f} % of nameplate ({max(errors) * 11_000.0:.1f} W)")
