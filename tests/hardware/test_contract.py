"""One contract suite per device interface, run on the in-process simulation, over Modbus TCP
and over Modbus RTU on a pty pair (the ``rig`` fixture is parametrized over the three)."""

from __future__ import annotations

import math

import pytest
import trio

from hardware.interfaces import (
    ISO15118_20_NAMES,
    BmsStatus,
    ContactorResult,
    ContactorState,
    DeviceFault,
    FaultKind,
    Inverter,
    InverterState,
    SiteMeter,
    TamperSwitch,
    ThermalSensor,
    VehicleLink,
)
from hardware.simulated import VehicleConfig
from hardware.simulated.charger import UNDER_LOAD_WEAR
from tests.hardware.conftest import BASE_LOAD_W, STALE_AFTER_S, Rig


async def expect_fault(kind: FaultKind, coro) -> DeviceFault:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceFault) as info:
        await coro
    assert info.value.kind is kind, str(info.value)
    return info.value


async def test_implements_the_interfaces(rig: Rig) -> None:
    assert isinstance(rig.meter, SiteMeter)
    assert isinstance(rig.inverter, Inverter)
    assert isinstance(rig.thermal, ThermalSensor)
    assert isinstance(rig.tamper, TamperSwitch)
    assert isinstance(rig.vehicle, VehicleLink)


# --- site meter ------------------------------------------------------------------------------


async def test_meter_reads_the_site_at_its_resolution(rig: Rig) -> None:
    reading = await rig.meter.read()
    assert reading.active_power_w == BASE_LOAD_W
    assert reading.voltage_v == 230.0
    rig.site.step_load(1234.5)  # 0.1 W resolution through float32
    rig.site.set_grid(frequency_hz=49.987)  # 1 mHz resolution
    reading = await rig.meter.read()
    assert reading.active_power_w == BASE_LOAD_W + 1234.5
    assert reading.frequency_hz == 49.987


async def test_meter_reading_carries_when_it_was_taken(rig: Rig) -> None:
    clock = rig.site.clock
    before = clock()
    reading = await rig.meter.read()
    after = clock()
    assert before - 0.01 <= reading.taken_at_s <= after + 0.01


async def test_discharge_lowers_the_site_meter(rig: Rig) -> None:
    assert await rig.inverter.set_power(-5000.0) == -5000.0
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == -5000.0)
    reading = await rig.meter.read()
    assert reading.active_power_w == BASE_LOAD_W - 5000.0


@pytest.mark.parametrize("frequency_hz", [46.999, 63.001, math.nan, math.inf])
async def test_meter_refuses_out_of_range_frequency(rig: Rig, frequency_hz: float) -> None:
    rig.site.inject(frequency_hz=frequency_hz)
    await expect_fault(FaultKind.OUT_OF_RANGE, rig.meter.read())
    rig.site.inject()
    assert (await rig.meter.read()).frequency_hz == 50.0


async def test_meter_accepts_the_edges_of_its_measuring_range(rig: Rig) -> None:
    for f in (47.0, 63.0):
        rig.site.set_grid(frequency_hz=f)
        assert (await rig.meter.read()).frequency_hz == f


async def test_meter_refuses_nan_power(rig: Rig) -> None:
    rig.site.inject(active_power_w=math.nan)
    await expect_fault(FaultKind.OUT_OF_RANGE, rig.meter.read())


async def test_meter_that_stops_sampling_is_stale(rig: Rig) -> None:
    rig.site.freeze()
    await rig.meter.read()  # fresh enough right after the freeze
    fault = await rig.wait_for(_fault_of(rig.meter.read), lambda f: f is not None, timeout_s=1.0)
    assert fault.kind is FaultKind.STALE
    rig.site.unfreeze()
    assert (await rig.meter.read()).active_power_w == BASE_LOAD_W


def _fault_of(read):  # type: ignore[no-untyped-def]
    async def attempt() -> DeviceFault | None:
        try:
            await read()
        except DeviceFault as fault:
            return fault
        return None

    return attempt


# --- inverter --------------------------------------------------------------------------------


@pytest.mark.needs_64900("contactor cycle count and 0.1 W power read-back")
async def test_inverter_charges_then_discharges(rig: Rig) -> None:
    status = await rig.inverter.status()
    assert status.state is InverterState.IDLE
    assert status.contactor is ContactorState.OPEN and status.contactor_cycles == 0
    assert await rig.inverter.set_power(3000.0) == 3000.0
    status = await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 3000.0)
    assert status.state is InverterState.CHARGING
    assert status.setpoint_w == 3000.0
    assert status.contactor is ContactorState.CLOSED and status.contactor_cycles == 1
    await rig.inverter.set_power(-2500.5)
    status = await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == -2500.5)
    assert status.state is InverterState.DISCHARGING
    assert status.contactor_cycles == 1  # through zero without opening the contactor


async def test_inverter_clamps_to_the_vehicle_limits(rig: Rig) -> None:
    status = await rig.inverter.status()
    assert status.limits.max_discharge_w == 7000.0  # the Leaf's EVMaximumDischargePower
    assert status.limits.max_charge_w == 11000.0  # the charger's rating (the Leaf takes 46 kW)
    assert await rig.inverter.set_power(-1e6) == -7000.0
    assert await rig.inverter.set_power(1e6) == 11000.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_inverter_never_sends_a_non_finite_setpoint(rig: Rig, bad: float) -> None:
    with pytest.raises(ValueError):
        await rig.inverter.set_power(bad)
    assert rig.charger.setpoint_w == 0.0


async def test_safe_mode_holds_zero_and_refuses_setpoints(rig: Rig) -> None:
    await rig.inverter.set_power(4000.0)
    await rig.inverter.set_safe_mode(True)
    await rig.inverter.set_safe_mode(True)  # idempotent
    status = await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 0.0)
    assert status.state is InverterState.SAFE_MODE
    await expect_fault(FaultKind.DEVICE_FAULT, rig.inverter.set_power(1000.0))
    await rig.inverter.set_safe_mode(False)
    assert (await rig.inverter.status()).state is InverterState.IDLE
    assert await rig.inverter.set_power(1000.0) == 1000.0


@pytest.mark.needs_64900("latched faults and their clearing")
async def test_clear_faults_is_idempotent(rig: Rig) -> None:
    assert (await rig.inverter.clear_faults()).cleared == ()
    assert (await rig.inverter.clear_faults()).cleared == ()
    rig.charger.open_enclosure()
    rig.charger.close_enclosure()
    assert (await rig.inverter.clear_faults()).cleared == ("tamper",)
    assert (await rig.inverter.clear_faults()).cleared == ()
    assert not (await rig.tamper.read()).latched


@pytest.mark.needs_64900("latched faults and their clearing")
async def test_clear_faults_refuses_while_the_cause_is_present(rig: Rig) -> None:
    rig.charger.open_enclosure()
    fault = await expect_fault(FaultKind.CAUSE_PRESENT, rig.inverter.clear_faults())
    assert fault.codes == ("tamper",)
    assert (await rig.tamper.read()).latched  # nothing was cleared
    rig.charger.close_enclosure()
    assert (await rig.inverter.clear_faults()).cleared == ("tamper",)


@pytest.mark.needs_64900("contactor state and commands")
async def test_welded_contactor_is_a_fault_that_cannot_be_cleared(rig: Rig) -> None:
    rig.charger.contactor_cycle_budget = 0  # worn out: the next close welds it
    await rig.inverter.set_power(2000.0)
    status = await rig.wait_for(rig.inverter.status, lambda s: s.state is InverterState.FAULT)
    assert status.contactor is ContactorState.WELDED
    assert status.faults == ("contactor_welded",)
    assert status.actual_power_w == 0.0
    fault = await expect_fault(FaultKind.DEVICE_FAULT, rig.inverter.set_power(1000.0))
    assert "contactor_welded" in fault.codes
    fault = await expect_fault(FaultKind.CAUSE_PRESENT, rig.inverter.clear_faults())
    assert fault.codes == ("contactor_welded",)
    for emergency in (False, True):  # welded contacts cannot open, not even in an emergency
        fault = await expect_fault(FaultKind.DEVICE_FAULT, rig.inverter.open_contactors(emergency=emergency))
        assert fault.codes == ("contactor_welded",)
    rig.charger.contactor_cycle_budget = 100_000
    rig.charger.replace_contactor()
    assert (await rig.inverter.clear_faults()).cleared == ("contactor_welded",)
    assert (await rig.inverter.status()).state is InverterState.IDLE


@pytest.mark.needs_64900("contactor commands")
async def test_contactors_open_normally_only_at_zero_current(rig: Rig) -> None:
    await rig.inverter.set_power(3000.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 3000.0)
    fault = await expect_fault(FaultKind.UNDER_LOAD, rig.inverter.open_contactors())
    assert fault.power_w == 3000.0 and "3000.0 W flowing" in str(fault)
    status = await rig.inverter.status()  # refused: nothing changed
    assert status.contactor is ContactorState.CLOSED and not status.contactors_held_open
    assert status.actual_power_w == 3000.0
    await rig.inverter.set_power(0.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 0.0)
    wear = rig.charger.contactor_wear
    assert await rig.inverter.open_contactors() == ContactorResult(ContactorState.OPEN, held_open=True, changed=True)
    assert rig.charger.contactor_wear == wear  # no current broken: no wear
    assert await rig.inverter.open_contactors() == ContactorResult(ContactorState.OPEN, held_open=True, changed=False)
    # held open: the inverter does not close them to follow a setpoint; 0 W is still accepted
    fault = await expect_fault(FaultKind.DEVICE_FAULT, rig.inverter.set_power(2000.0))
    assert "held open" in str(fault)
    assert await rig.inverter.set_power(0.0) == 0.0
    status = await rig.inverter.status()
    assert status.contactor is ContactorState.OPEN and status.contactors_held_open and status.contactor_cycles == 1
    result = await rig.inverter.close_contactors()
    assert (result.held_open, result.changed) == (False, True)
    assert (await rig.inverter.close_contactors()).changed is False  # idempotent
    assert await rig.inverter.set_power(2000.0) == 2000.0
    status = await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 2000.0)
    assert status.contactor is ContactorState.CLOSED and status.contactor_cycles == 2
    assert not status.contactors_held_open


@pytest.mark.needs_64900("contactor commands")
async def test_emergency_open_breaks_the_current_with_heavy_wear(rig: Rig) -> None:
    await rig.inverter.set_power(-5000.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == -5000.0)
    wear = rig.charger.contactor_wear
    result = await rig.inverter.open_contactors(emergency=True)
    assert result == ContactorResult(ContactorState.OPEN, held_open=True, changed=True, under_load=True,
                                     broken_power_w=-5000.0)
    assert rig.charger.contactor_wear == wear + UNDER_LOAD_WEAR  # breaking DC under load
    status = await rig.inverter.status()  # at once, not after a ramp
    assert status.contactor is ContactorState.OPEN and status.actual_power_w == 0.0
    assert status.contactors_held_open and status.state is InverterState.IDLE
    again = await rig.inverter.open_contactors(emergency=True)  # idempotent, no more wear
    assert (again.changed, again.under_load) == (False, False)
    assert rig.charger.contactor_wear == wear + UNDER_LOAD_WEAR


@pytest.mark.needs_64900("contactor commands")
async def test_emergency_open_at_zero_current_costs_no_extra_wear(rig: Rig) -> None:
    await rig.inverter.set_power(1000.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 1000.0)
    await rig.inverter.set_power(0.0)
    await rig.wait_for(rig.inverter.status, lambda s: s.actual_power_w == 0.0)
    wear = rig.charger.contactor_wear
    result = await rig.inverter.open_contactors(emergency=True)
    assert (result.contactor, result.changed, result.under_load) == (ContactorState.OPEN, True, False)
    assert rig.charger.contactor_wear == wear


@pytest.mark.needs_64900("the sample age (Age)")
async def test_inverter_status_goes_stale(rig: Rig) -> None:
    rig.charger.freeze()
    await trio.sleep(STALE_AFTER_S + 0.05)  # the freeze itself is what is timed here
    await expect_fault(FaultKind.STALE, rig.inverter.status())
    await expect_fault(FaultKind.STALE, rig.thermal.read())
    rig.charger.unfreeze()
    await rig.inverter.status()


# --- thermal sensor and tamper switch --------------------------------------------------------


async def test_thermal_sensor_reads_the_power_stage(rig: Rig) -> None:
    reading = await rig.thermal.read()
    assert reading.temperature_c == pytest.approx(20.0, abs=0.05)


@pytest.mark.parametrize("bad", [math.nan, 200.0, -60.0])
@pytest.mark.needs_64900("a float temperature (SunSpec integer points cannot say NaN)")
async def test_thermal_sensor_refuses_impossible_values(rig: Rig, bad: float) -> None:
    rig.charger.inject(temperature_c=bad)
    await expect_fault(FaultKind.OUT_OF_RANGE, rig.thermal.read())


@pytest.mark.needs_64900("the tamper latch")
async def test_tamper_switch_latches(rig: Rig) -> None:
    r = await rig.tamper.read()
    assert (r.open, r.latched) == (False, False)
    rig.charger.open_enclosure()
    r = await rig.tamper.read()
    assert (r.open, r.latched) == (True, True)
    rig.charger.close_enclosure()
    r = await rig.tamper.read()
    assert (r.open, r.latched) == (False, True)


# --- vehicle link ----------------------------------------------------------------------------


@pytest.mark.needs_64900("the ISO 15118-20 vehicle link")
async def test_vehicle_parameters_are_the_iso15118_20_set(rig: Rig) -> None:
    status = await rig.vehicle.read()
    assert status.connected and status.bms_status is BmsStatus.NORMAL
    assert status.vehicle_id == "nissan-leaf-40"
    p = status.parameters
    assert p is not None
    assert p.ev_maximum_charge_power_w == 46_000.0
    assert p.ev_maximum_discharge_power_w == 7_000.0
    assert p.battery_energy_capacity_wh == 39_000.0
    assert p.present_soc_pct == pytest.approx(60.0, abs=0.01)
    assert (p.minimum_soc_pct, p.target_soc_pct) == (20.0, 80.0)
    assert set(p.iso_names()) == set(ISO15118_20_NAMES.values())


@pytest.mark.needs_64900("the ISO 15118-20 vehicle link and BMS status")
async def test_vehicle_at_minimum_soc_reports_battery_lower_limit(rig: Rig) -> None:
    rig.charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40", present_soc_pct=20.0, minimum_soc_pct=20.0))
    status = await rig.vehicle.read()
    assert status.bms_status is BmsStatus.BATTERY_LOWER_LIMIT
    assert int(status.bms_status) == 0x03
    assert status.parameters is not None and status.parameters.ev_maximum_discharge_power_w == 0.0
    assert (await rig.inverter.status()).limits.max_discharge_w == 0.0
    assert await rig.inverter.set_power(-5000.0) == 0.0


async def test_discharge_caps_old_firmware_and_max_discharge_amps(rig: Rig) -> None:
    rig.charger.connect_vehicle(VehicleConfig.of("mitsubishi-outlander-phev", firmware="old"))
    p = (await rig.vehicle.read()).parameters
    assert p is not None and p.ev_maximum_discharge_power_w == 3700.0  # 50 % of 7.4 kW charge
    rig.charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40", max_discharge_amps=10.0))
    p = (await rig.vehicle.read()).parameters
    assert p is not None and p.ev_maximum_discharge_power_w == 3500.0  # 10 A x 350 V


async def test_vehicle_disconnected(rig: Rig) -> None:
    rig.charger.disconnect_vehicle()
    status = await rig.vehicle.read()
    assert not status.connected and status.parameters is None
    assert (await rig.inverter.status()).limits.max_charge_w == 0.0


@pytest.mark.parametrize("field,value", [("present_soc_pct", -5.0), ("present_soc_pct", math.nan),
                                         ("ev_maximum_discharge_power_w", -1.0), ("bms_status", 0x42)])
@pytest.mark.needs_64900("the ISO 15118-20 vehicle link")
async def test_vehicle_link_refuses_bad_values(rig: Rig, field: str, value: float) -> None:
    rig.charger.inject(**{field: value})
    await expect_fault(FaultKind.OUT_OF_RANGE, rig.vehicle.read())
