"""Link faults over real Modbus: exception codes, garbage frames, timeouts, a server that
stops mid-read, refused connections and the reconnect backoff, a unit without the model.
No value may ever come out of any of these; each is a typed ``DeviceFault``."""

from __future__ import annotations

import random
import struct
import time

import pytest
import trio

from hardware.connect import open_device, open_site_meter
from hardware.interfaces import DeviceFault, DeviceKind, FaultKind, parse_device_url
from hardware.modbus.link import TcpLink
from hardware.modbus.registers import CHARGER_LAYOUT
from hardware.modbus.sunspec import SunSpecUnit
from hardware.simulated.serve import SimServer, site_units
from tests.hardware.conftest import BASE_LOAD_W, Rig, make_site

MODBUS = pytest.mark.parametrize("rig", ["tcp", "rtu"], indirect=True)
TCP_ONLY = pytest.mark.parametrize("rig", ["tcp"], indirect=True)


async def fault_of(coro) -> DeviceFault:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceFault) as info:
        await coro
    return info.value


@MODBUS
async def test_exception_response_is_typed_with_its_code(rig: Rig) -> None:
    assert rig.server is not None
    await rig.meter.read()
    rig.server.faults.exception_code = 4
    fault = await fault_of(rig.meter.read())
    assert fault.kind is FaultKind.EXCEPTION_RESPONSE and fault.exception_code == 4
    assert "server device failure" in str(fault)
    rig.server.faults.exception_code = None
    assert (await rig.meter.read()).active_power_w == BASE_LOAD_W


@MODBUS
async def test_crafted_bad_frames(rig: Rig) -> None:
    assert rig.server is not None
    await rig.meter.read()
    if rig.kind == "tcp":
        # right length, protocol id 7 (must be 0)
        rig.server.faults.garbage = struct.pack(">HHHBBB", 1, 7, 3, 1, 3, 0)
    else:
        # unit 1, function 3, 2 bytes of data, wrong CRC
        rig.server.faults.garbage = bytes([1, 3, 2, 0, 1, 0xDE, 0xAD])
    fault = await fault_of(rig.meter.read())
    assert fault.kind is FaultKind.BAD_FRAME
    rig.server.faults.garbage = None
    assert (await rig.meter.read()).active_power_w == BASE_LOAD_W  # reconnected, re-synchronised


@MODBUS
async def test_random_garbage_never_yields_a_value(rig: Rig) -> None:
    assert rig.server is not None
    await rig.meter.read()
    rng = random.Random(4)
    kinds = set()
    for _ in range(6):
        rig.server.faults.garbage = rng.randbytes(rng.randrange(1, 40))
        fault = await fault_of(rig.meter.read())
        kinds.add(fault.kind)
        await trio.sleep(0.06)  # past the reconnect backoff
    assert kinds <= {FaultKind.BAD_FRAME, FaultKind.TIMEOUT, FaultKind.DISCONNECTED}
    rig.server.faults.garbage = None
    await trio.sleep(0.06)
    assert (await rig.meter.read()).active_power_w == BASE_LOAD_W


@MODBUS
async def test_no_reply_is_a_timeout(rig: Rig) -> None:
    assert rig.server is not None
    await rig.meter.read()
    rig.server.faults.delay_s = 0.5  # longer than the rig's 0.3 s timeout
    fault = await fault_of(rig.meter.read())
    assert fault.kind is FaultKind.TIMEOUT
    rig.server.faults.delay_s = 0.0
    await trio.sleep(0.3)  # let the late reply drain before the port is reopened
    reading = await _eventually(rig.meter.read)
    assert reading.active_power_w == BASE_LOAD_W


async def _eventually(read, attempts: int = 20):  # type: ignore[no-untyped-def]
    for _ in range(attempts):
        try:
            return await read()
        except DeviceFault as fault:
            assert fault.retryable, fault
            await trio.sleep(0.05)
    raise AssertionError("device did not recover")


@MODBUS
async def test_server_stopped_mid_read(rig: Rig) -> None:
    assert rig.server is not None
    await rig.meter.read()
    rig.server.faults.delay_s = 0.2
    async with trio.open_nursery() as nursery:
        results: list[DeviceFault] = []

        async def reader() -> None:
            results.append(await fault_of(rig.meter.read()))

        nursery.start_soon(reader)
        await trio.sleep(0.05)  # the request is in the server now
        if rig.kind == "tcp":
            await rig.server.stop()
        else:
            assert rig.line is not None
            rig.line.cut = True  # the RS-485 pair is pulled
    assert results[0].kind in (FaultKind.DISCONNECTED, FaultKind.TIMEOUT)
    fault = await fault_of(rig.meter.read())
    assert fault.kind in (FaultKind.DISCONNECTED, FaultKind.TIMEOUT)


@TCP_ONLY
async def test_a_read_cancelled_by_its_caller_drops_the_connection(rig: Rig) -> None:
    """The control loop's meter task gives up a read at its sensor deadline: the reply still
    on its way must not be taken as the answer to the next request (a BAD_FRAME before)."""
    assert rig.server is not None
    await rig.meter.read()
    link: TcpLink = rig.meter.unit.link
    connects = link.statistics().connects
    rig.server.faults.delay_s = 0.1
    with trio.move_on_after(0.03) as scope:
        await rig.meter.read()
    assert scope.cancelled_caught
    rig.server.faults.delay_s = 0.0
    assert (await rig.meter.read()).active_power_w == BASE_LOAD_W
    assert link.statistics().connects == connects + 1
    assert "bad_frame" not in link.statistics().faults


@MODBUS
async def test_not_supported_model(rig: Rig) -> None:
    # the meter unit has no inverter model: our 64900 is optional, the standard 701 is not
    url = rig.meter_url
    inverter = open_device(url, DeviceKind.INVERTER, link=rig.meter.unit.link, clock=time.monotonic)
    fault = await fault_of(inverter.status())
    assert fault.kind is FaultKind.NOT_SUPPORTED and "model 701" in str(fault)


@MODBUS
async def test_sunspec_sign_at_the_registers(rig: Rig) -> None:
    await rig.inverter.set_power(-5000.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == -5000.0)
    unit: SunSpecUnit = rig.inverter.unit
    assert (await unit.read_block(704, "WSet", "WSet")).get("WSet") == 5000.0  # + generation
    m701 = await unit.read_model(701)
    assert m701["W"] == 5000  # SunSpec: discharge counts as generation, positive
    starts = CHARGER_LAYOUT.starts()
    assert (await unit.models()) == starts


@TCP_ONLY
async def test_refused_connection_backs_off_then_recovers(rig: Rig) -> None:
    assert rig.server is not None
    port = rig.server.port
    await rig.server.stop()
    meter = open_site_meter(f"modbus+tcp://127.0.0.1:{port}/1", timeout_s=0.2, clock=time.monotonic)
    try:
        fault = await fault_of(meter.read())
        assert fault.kind is FaultKind.DISCONNECTED and "cannot connect" in str(fault)
        fault = await fault_of(meter.read())  # inside the backoff: fails at once, no connect
        assert fault.kind is FaultKind.DISCONNECTED and "reconnecting in" in str(fault)
        link: TcpLink = meter.unit.link
        assert link.statistics().reconnect_delay_s == pytest.approx(0.05)
        await trio.sleep(0.06)
        await fault_of(meter.read())
        assert link.statistics().reconnect_delay_s == pytest.approx(0.1)  # doubled
        server = SimServer(site_units(make_site()), port=port)
        async with server:
            reading = await _eventually(meter.read)
            assert reading.active_power_w == BASE_LOAD_W
            assert link.statistics().reconnect_delay_s == 0.0
    finally:
        await meter.aclose()


@TCP_ONLY
async def test_reply_from_the_wrong_unit_is_a_bad_frame(rig: Rig) -> None:
    # unit 99 does not exist; pymodbus answers nothing or an exception, never data
    link = TcpLink(parse_device_url(rig.meter_url), timeout_s=0.2)
    try:
        with pytest.raises(DeviceFault) as info:
            await link.read_registers(40000, 2, unit=99)
        assert info.value.kind in (FaultKind.TIMEOUT, FaultKind.EXCEPTION_RESPONSE)
    finally:
        await link.aclose()
