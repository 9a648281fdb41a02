"""The simulated physics in virtual time: ramp and the 100 ms transition, SoC integration and
the BMS limits, contactor wear, heat, firmware caps. A hand-stepped clock (or trio's
autojump clock) drives it, so these are exact and instant."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hardware.connect import open_charger
from hardware.interfaces import (
    CHARGE_TO_DISCHARGE_MAX_S,
    BmsStatus,
    ContactorState,
    DeviceFault,
    FaultKind,
    InverterState,
)
from hardware.simulated import SimulatedCharger, SimulatedSite, SimWorld, VehicleConfig
from hardware.simulated.charger import UNDER_LOAD_WEAR


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, dt: float) -> None:
        self.now += dt


def charger_with(model: str = "nissan-leaf-40", **kw: object) -> tuple[ManualClock, SimulatedCharger]:
    clock = ManualClock()
    c = SimulatedCharger(clock, **kw)  # type: ignore[arg-type]
    c.connect_vehicle(VehicleConfig.of(model))
    return clock, c


def time_to_reach(clock: ManualClock, c: SimulatedCharger, target_w: float, step_s: float = 0.001) -> float:
    t0 = clock.now
    for _ in range(10_000):
        if abs(c.snapshot().actual_power_w - target_w) < 0.05:
            return clock.now - t0
        clock.step(step_s)
    raise AssertionError("never reached")


def test_full_charge_to_full_discharge_within_100_ms() -> None:
    clock, c = charger_with("ford-f150-lightning-er", max_charge_w=11_000, max_discharge_w=11_000)
    c.set_power(11_000)
    time_to_reach(clock, c, 11_000)
    c.set_power(-9_600)  # the F-150's export limit
    assert time_to_reach(clock, c, -9_600) <= CHARGE_TO_DISCHARGE_MAX_S


async def test_transition_through_the_interface_on_the_autojump_clock(autojump_clock: trio.testing.MockClock) -> None:
    world = SimWorld(trio.current_time)
    site = world.site("site-a")
    async with open_charger("sim://site-a/charger-1", world=world) as ch:
        with trio.fail_after(10):
            await ch.inverter.set_power(5_000)
            await trio.sleep(1)
            t0 = trio.current_time()
            await ch.inverter.set_power(-5_000)
            while True:
                if (await ch.inverter.status()).actual_power_w <= -5_000:
                    break
                await trio.sleep(0.001)
            elapsed = trio.current_time() - t0
    assert elapsed <= CHARGE_TO_DISCHARGE_MAX_S
    assert elapsed == pytest.approx(10_000 / site.chargers[0].ramp_w_per_s, abs=0.0011)


def test_soc_integrates_power_exactly() -> None:
    clock, c = charger_with()
    c.set_power(-7_000)
    clock.step(3600)
    s = c.snapshot()
    ramp_s = 7_000 / c.ramp_w_per_s
    exported_wh = 7_000 * (3600 - ramp_s / 2) / 3600
    assert s.energy_out_wh == pytest.approx(exported_wh, rel=1e-9)
    assert s.present_soc_pct == pytest.approx(60.0 - exported_wh / 39_000 * 100, abs=1e-9)


def test_bms_stops_discharge_at_minimum_soc() -> None:
    clock, c = charger_with()
    c.set_power(-7_000)
    clock.step(4 * 3600)  # more than the 40 % above MinimumSOC
    s = c.snapshot()
    assert s.present_soc_pct == pytest.approx(20.0)
    assert s.bms_status == BmsStatus.BATTERY_LOWER_LIMIT == 0x03
    assert s.actual_power_w == 0.0 and s.max_discharge_w == 0.0
    assert c.set_power(5_000) == 5_000  # charging is still allowed


def test_contactor_opens_when_idle_and_counts_cycles() -> None:
    clock, c = charger_with(contactor_open_delay_s=2.0)
    c.set_power(3_000)
    clock.step(1)
    c.advance()
    assert c.contactor is ContactorState.CLOSED and c.contactor_cycles == 1
    c.set_power(0)
    clock.step(1.9)
    c.advance()
    assert c.contactor is ContactorState.CLOSED
    clock.step(0.2)
    c.advance()
    assert c.contactor is ContactorState.OPEN


def test_emergency_openings_under_load_weld_a_worn_contactor() -> None:
    clock, c = charger_with(contactor_cycle_budget=25)
    for i in range(3):  # each: one close (1 unit) and one opening under load (UNDER_LOAD_WEAR)
        clock.step(2.0)  # long after the last opening: a gentle close
        c.close_contactors()
        c.set_power(-5_000)
        clock.step(0.1)
        c.advance()
        assert c.power_w == -5_000 and c.contactor is ContactorState.CLOSED
        result = c.open_contactors(emergency=True)
        assert c.contactor_wear == (i + 1) * (1 + UNDER_LOAD_WEAR)
        if c.contactor_wear <= 25:
            assert result.contactor is ContactorState.OPEN and result.under_load and c.power_w == 0
            assert c.snapshot().actual_power_w == 0.0  # at once, no ramp
    # the third opening under load took it past its budget: the contacts welded as they broke
    assert result.contactor is ContactorState.WELDED and c.state() is InverterState.FAULT
    assert c.faults == {"contactor_welded"} and c.power_w == 0


def test_rapid_switching_wears_the_contactor_until_it_welds() -> None:
    clock, c = charger_with(contactor_cycle_budget=200, contactor_open_delay_s=0.5, rapid_reclose_s=1.0)
    gentle_cycles = 0
    for _ in range(10):  # gentle: re-close long after opening, 1 wear unit each
        c.set_power(3_000)
        clock.step(1)
        c.set_power(0)
        clock.step(5)
        gentle_cycles += 1
    assert c.contactor_wear == gentle_cycles
    for _ in range(100):  # abuse: re-close right after opening, 10 units each
        try:
            c.set_power(3_000)
            clock.step(0.1)
            c.set_power(0)
            clock.step(0.6)
        except DeviceFault as fault:
            assert fault.kind is FaultKind.DEVICE_FAULT
            break
    else:
        raise AssertionError("never welded")
    assert c.contactor is ContactorState.WELDED and c.state() is InverterState.FAULT
    assert c.contactor_cycles < 10 + 100
    with pytest.raises(DeviceFault) as info:
        c.clear_faults()
    assert info.value.kind is FaultKind.CAUSE_PRESENT and "welded" in str(info.value)


def test_first_order_thermal_model() -> None:
    clock, c = charger_with(thermal_tau_s=300.0, thermal_r_k_per_w=0.06, loss_fraction=0.03, ambient_c=20.0)
    c.set_power(-7_000)
    clock.step(300)
    rise = 0.06 * 0.03 * 7_000  # 12.6 K at steady state
    assert c.snapshot().temperature_c == pytest.approx(20.0 + rise * (1 - math.exp(-1)), abs=0.05)
    clock.step(3000)
    assert c.snapshot().temperature_c == pytest.approx(20.0 + rise, abs=0.01)


def test_over_temperature_trips_and_clears_when_cool() -> None:
    clock, c = charger_with(thermal_r_k_per_w=1.0, ambient_c=50.0)  # a blocked fan
    c.set_power(7_000)
    clock.step(60)  # 85 deg C is crossed after about 55 s
    c.advance()
    assert c.state() is InverterState.FAULT and "over_temperature" in c.faults
    assert c.power_w == 0.0
    with pytest.raises(DeviceFault) as info:
        c.clear_faults()
    assert info.value.kind is FaultKind.CAUSE_PRESENT
    clock.step(3000)  # cools towards ambient with no power
    assert c.clear_faults().cleared == ("over_temperature",)


def test_ambient_outside_the_rating_is_refused() -> None:
    clock, c = charger_with()
    with pytest.raises(ValueError, match="rated"):
        c.set_ambient(51.0)
    with pytest.raises(ValueError, match="rated"):
        SimulatedCharger(clock, ambient_c=-26.0)
    c.set_ambient(-25.0)


def test_firmware_and_amps_caps() -> None:
    leaf = VehicleConfig.of("nissan-leaf-40")
    assert leaf.max_discharge_w() == 7_000
    assert VehicleConfig.of("mitsubishi-outlander-phev", firmware="old").max_discharge_w() == 3_700
    assert VehicleConfig.of("nissan-leaf-40", max_discharge_amps=10).max_discharge_w() == 3_500
    with pytest.raises(ValueError, match="unknown vehicle model"):
        VehicleConfig.of("tesla-cybertruck")
    with pytest.raises(ValueError, match="firmware"):
        VehicleConfig.of("nissan-leaf-40", firmware="beta")


def test_minimum_discharge_power_is_respected() -> None:
    clock = ManualClock()
    c = SimulatedCharger(clock)
    c.connect_vehicle(VehicleConfig.of("nissan-leaf-40", min_discharge_w=1_500))
    assert c.set_power(-1_000) == 0.0  # under EVMinimumDischargePower: the vehicle will not
    assert c.set_power(-2_000) == -2_000


def test_site_meter_integrates_energy() -> None:
    clock = ManualClock()
    site = SimulatedSite.with_chargers(clock, 1, base_load_w=10_000, vehicles=[VehicleConfig.of("nissan-leaf-40")])
    clock.step(3600)
    s = site.snapshot()
    assert s.energy_import_wh == pytest.approx(10_000)
    site.chargers[0].set_power(-7_000)
    site.step_load(-10_000)
    clock.step(3600)
    s = site.snapshot()
    assert s.active_power_w == -7_000
    assert s.energy_export_wh == pytest.approx(7_000 * (3600 - 7_000 / site.chargers[0].ramp_w_per_s / 2) / 3600)
