"""The simulated site and chargers behind the device interfaces, in process.

Theory of operation
-------------------
Each class wraps a ``SimulatedSite`` or ``SimulatedCharger`` and implements one interface of
``hardware.interfaces``. They read the physics' raw snapshot and pass it through the same
range checks (``MeterReading.checked`` ...) and staleness rule as the Modbus drivers, so the
one contract suite holds for both: a NaN injected into the physics is a fault here exactly as
it is after a trip through a Modbus server.

Staleness: a reading whose sample is older than ``stale_after_s`` on the device's clock
raises ``STALE`` (the physics only goes stale when a test freezes it).

Every async method checkpoints, as trio requires of async functions.
"""

from __future__ import annotations

import math

import attrs
import trio

from hardware.interfaces import (
    ClearResult,
    ContactorResult,
    ContactorState,
    DeviceFault,
    FaultKind,
    InverterLimits,
    InverterState,
    InverterStatus,
    MeterReading,
    TamperReading,
    ThermalReading,
    VehicleParameters,
    VehicleStatus,
    require_fresh,
)
from hardware.simulated.charger import ChargerSnapshot, SimulatedCharger
from hardware.simulated.site import SimulatedSite

DEFAULT_STALE_AFTER_S = 0.5


def _enum(cls: type, value: str, field: str, device: str):  # type: ignore[no-untyped-def]
    try:
        return cls(value)
    except ValueError:
        raise DeviceFault(FaultKind.OUT_OF_RANGE, f"unknown {field} {value!r}", device) from None


def inverter_status_from(s: ChargerSnapshot, device: str) -> InverterStatus:
    return InverterStatus.checked(
        state=_enum(InverterState, s.state, "inverter state", device),
        setpoint_w=s.setpoint_w, actual_power_w=s.actual_power_w,
        limits=InverterLimits(s.max_charge_w, s.max_discharge_w, s.ramp_w_per_s, s.rated_w),
        contactor=_enum(ContactorState, s.contactor, "contactor state", device),
        contactor_cycles=s.contactor_cycles, contactor_cycle_budget=s.contactor_cycle_budget,
        faults=s.faults, taken_at_s=s.taken_at_s, contactors_held_open=s.contactors_held_open, device=device,
    )


def vehicle_status_from(s: ChargerSnapshot, device: str) -> VehicleStatus:
    params = None
    if s.vehicle_connected:
        params = VehicleParameters(
            s.ev_maximum_charge_power_w, s.ev_maximum_discharge_power_w, s.ev_minimum_discharge_power_w,
            s.present_soc_pct, s.minimum_soc_pct, s.target_soc_pct, s.battery_energy_capacity_wh,
        )
    return VehicleStatus.checked(connected=s.vehicle_connected, parameters=params, bms_status=s.bms_status,
                                 vehicle_id=s.vehicle_id, taken_at_s=s.taken_at_s, device=device)


@attrs.define(eq=False)
class _SimDevice:
    url: str
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    closed: bool = attrs.field(init=False, default=False)

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise DeviceFault(FaultKind.DISCONNECTED, "device closed", self.url)

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()

    async def __aenter__(self):  # type: ignore[no-untyped-def]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@attrs.define(eq=False)
class SimSiteMeter(_SimDevice):
    site: SimulatedSite = attrs.field(kw_only=True)

    async def read(self) -> MeterReading:
        await self._enter()
        s = self.site.snapshot()
        require_fresh(s.taken_at_s, self.site.clock(), self.stale_after_s, self.url)
        return MeterReading.checked(s.active_power_w, s.frequency_hz, s.voltage_v, s.taken_at_s, self.url)


@attrs.define(eq=False)
class _SimChargerDevice(_SimDevice):
    charger: SimulatedCharger = attrs.field(kw_only=True)

    def _snapshot(self) -> ChargerSnapshot:
        s = self.charger.snapshot()
        require_fresh(s.taken_at_s, self.charger.clock(), self.stale_after_s, self.url)
        return s


@attrs.define(eq=False)
class SimInverter(_SimChargerDevice):
    async def status(self) -> InverterStatus:
        await self._enter()
        return inverter_status_from(self._snapshot(), self.url)

    async def energy_registers(self) -> tuple[float, float]:
        """(imported Wh, exported Wh) as the charger's energy registers count them."""
        await self._enter()
        s = self._snapshot()
        return s.energy_in_wh, s.energy_out_wh

    async def set_power(self, setpoint_w: float) -> float:
        if not isinstance(setpoint_w, int | float) or not math.isfinite(setpoint_w):
            raise ValueError(f"setpoint must be a finite number of watts, got {setpoint_w!r}")
        await self._enter()
        try:
            return self.charger.set_power(setpoint_w)
        except DeviceFault as fault:
            raise attrs.evolve(fault, device=self.url) from None

    async def set_safe_mode(self, on: bool) -> None:
        await self._enter()
        self.charger.set_safe_mode(on)

    async def clear_faults(self) -> ClearResult:
        await self._enter()
        try:
            return self.charger.clear_faults()
        except DeviceFault as fault:
            raise attrs.evolve(fault, device=self.url) from None

    async def open_contactors(self, *, emergency: bool = False) -> ContactorResult:
        await self._enter()
        try:
            return self.charger.open_contactors(emergency=emergency)
        except DeviceFault as fault:
            raise attrs.evolve(fault, device=self.url) from None

    async def close_contactors(self) -> ContactorResult:
        await self._enter()
        return self.charger.close_contactors()


@attrs.define(eq=False)
class SimThermalSensor(_SimChargerDevice):
    async def read(self) -> ThermalReading:
        await self._enter()
        s = self._snapshot()
        return ThermalReading.checked(s.temperature_c, s.taken_at_s, self.url)


@attrs.define(eq=False)
class SimTamperSwitch(_SimChargerDevice):
    async def read(self) -> TamperReading:
        await self._enter()
        s = self._snapshot()
        return TamperReading(bool(s.tamper_open), bool(s.tamper_latched), s.taken_at_s)


@attrs.define(eq=False)
class SimVehicleLink(_SimChargerDevice):
    async def read(self) -> VehicleStatus:
        await self._enter()
        return vehicle_status_from(self._snapshot(), self.url)
