"""The one clamp between any request and the inverter, and the contactor guard.

Theory of operation
-------------------
Whatever the allocation asks for, and whatever the frequency response adds, the setpoint
that reaches the inverter passes through ``clamp_setpoint`` and nothing else. It takes a
snapshot of the devices (``DeviceState``), the interlock limits and whether a fault blocks
power, and returns the request cut to the largest power of its sign that breaks no limit:

* a blocking fault (ours latched, or the inverter's own), a thermal stop, open or welded
  contactors, an open enclosure or no vehicle -> 0 W;
* discharge <= inverter rating, the vehicle's EVMaximumDischargePower, thermal derating;
  and 0 at or below the vehicle's MinimumSOC or while the BMS reports Battery_Lower_Limit
  (0x03), over-temperature (0x02) or a fault (0x04);
* charge <= inverter rating, EVMaximumChargePower, thermal derating; 0 at or above
  TargetSOC or on Battery_Upper_Limit (0x01), 0x02 or 0x04;
* a device figure that is missing, negative or not finite counts as 0 (fail safe), and so
  does a request that is not finite.

Sign convention: the project's (``hardware.interfaces``): setpoints are + charge,
- discharge; caps are magnitudes.

``ContactorGuard`` enforces the contactor's life limits: a minimum dwell between switchings
and a cap on closings per rolling hour. Emergencies (tamper) bypass it; nothing else does.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import attrs


@attrs.frozen
class DeviceState:
    """What the clamp needs to know about the devices, read this cycle."""

    inverter_max_charge_w: float
    inverter_max_discharge_w: float
    ev_max_charge_w: float  # EVMaximumChargePower
    ev_max_discharge_w: float  # EVMaximumDischargePower
    soc_pct: float  # PresentSOC
    min_soc_pct: float  # MinimumSOC: the owner's reserve
    target_soc_pct: float = 100.0  # TargetSOC
    bms_status: int = 0  # hardware.interfaces.BmsStatus: 0 normal, 1 upper, 2 over-temp, 3 lower, 4 fault
    temperature_max_c: float = 25.0
    temperature_min_c: float = 25.0
    contactor_closed: bool = True
    contactor_welded: bool = False
    inverter_fault: bool = False  # the inverter reports a latched fault of its own (it refuses power)
    actual_power_w: float = 0.0  # at the AC terminals; ~0 means ~0 current
    vehicle_connected: bool = True
    tamper: bool = False
    inverter_rated_w: float = 0.0  # nameplate (SunSpec 702 WMaxRtg), the droop's base; 0: not given

    @property
    def battery_lower_limit(self) -> bool:
        return self.bms_status == BMS_LOWER_LIMIT


BMS_UPPER_LIMIT, BMS_OVER_TEMPERATURE, BMS_LOWER_LIMIT, BMS_FAULT = 0x01, 0x02, 0x03, 0x04


@attrs.frozen
class Limits:
    thermal_derate_c: float = 40.0
    thermal_stop_c: float = 50.0
    thermal_low_c: float = -25.0

    @classmethod
    def from_section(cls, section: Any) -> Limits:
        return cls(section.thermal_derate_c, section.thermal_stop_c, section.thermal_low_c)


@attrs.frozen
class Clamped:
    setpoint_w: float  # + charge, - discharge
    binding: str  # which limit decided it ("request" when none did)
    discharge_cap_w: float
    charge_cap_w: float


def _cap(value: float) -> float:
    """A device figure as a usable cap: missing, negative or not finite counts as 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


def thermal_factor(temperature_max_c: float, temperature_min_c: float, limits: Limits) -> float:
    """1 below the derating temperature, falling linearly to 0 at the stop; 0 below the low limit."""
    hi, lo = temperature_max_c, temperature_min_c
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return 0.0
    if hi >= limits.thermal_stop_c or lo <= limits.thermal_low_c:
        return 0.0
    if hi <= limits.thermal_derate_c:
        return 1.0
    return (limits.thermal_stop_c - hi) / (limits.thermal_stop_c - limits.thermal_derate_c)


def clamp_setpoint(request_w: float, state: DeviceState, limits: Limits, blocked: bool = False, *,
                   thermal_cap: float = 1.0, no_discharge: bool = False) -> Clamped:
    """The setpoint to send (+ charge, - discharge): ``request_w`` cut to every limit.

    ``blocked``: a fault forbids any power. ``thermal_cap``: the derating factor an active
    ERR_THERMAL holds (the logic's hysteresis: 0 while stopped, however the temperature has
    moved since); the lower of it and today's temperature's factor wins. ``no_discharge``:
    an active ERR_BATTERY_LOWER_LIMIT holds discharge at 0 until it clears (with its
    hysteresis), whatever the SoC reads in between.
    """
    factor = thermal_factor(state.temperature_max_c, state.temperature_min_c, limits)
    cap = thermal_cap if isinstance(thermal_cap, int | float) and math.isfinite(thermal_cap) else 0.0
    factor = min(factor, max(0.0, cap))
    inv_d, inv_c = _cap(state.inverter_max_discharge_w), _cap(state.inverter_max_charge_w)
    caps_d = [("inverter", inv_d), ("vehicle", _cap(state.ev_max_discharge_w)), ("thermal", factor * inv_d)]
    caps_c = [("inverter", inv_c), ("vehicle", _cap(state.ev_max_charge_w)), ("thermal", factor * inv_c)]
    soc = state.soc_pct
    # Comparisons with NaN are False, so an unknown SoC blocks both directions.
    if (state.bms_status in (BMS_LOWER_LIMIT, BMS_OVER_TEMPERATURE, BMS_FAULT) or not soc > state.min_soc_pct
            or no_discharge):
        caps_d.append(("battery_lower_limit" if state.bms_status in (0, BMS_LOWER_LIMIT) else "bms", 0.0))
    if state.bms_status in (BMS_UPPER_LIMIT, BMS_OVER_TEMPERATURE, BMS_FAULT) or not soc < state.target_soc_pct:
        caps_c.append(("battery_upper_limit" if state.bms_status in (0, BMS_UPPER_LIMIT) else "bms", 0.0))
    for why, stop in (
        ("fault", blocked),
        ("inverter_fault", state.inverter_fault),
        ("tamper", state.tamper),
        ("no_vehicle", not state.vehicle_connected),
        ("contactor", state.contactor_welded or not state.contactor_closed),
    ):
        if stop:
            caps_d.append((why, 0.0))
            caps_c.append((why, 0.0))
    d_name, d_cap = min(caps_d, key=lambda c: c[1])
    c_name, c_cap = min(caps_c, key=lambda c: c[1])
    if isinstance(request_w, bool) or not isinstance(request_w, int | float) or not math.isfinite(request_w):
        return Clamped(0.0, "request_not_finite", d_cap, c_cap)
    # "+ 0.0" turns -0.0 into 0.0, so logs never show a negative zero
    if request_w < -d_cap:
        return Clamped(-d_cap + 0.0, d_name, d_cap, c_cap)
    if request_w > c_cap:
        return Clamped(c_cap, c_name, d_cap, c_cap)
    return Clamped(float(request_w) + 0.0, "request", d_cap, c_cap)


@attrs.define
class ContactorGuard:
    """Minimum dwell between switchings and a cap on closings per rolling hour."""

    min_dwell_s: float
    max_cycles_per_hour: int
    last_switch_s: float | None = None
    _closings: collections.deque[float] = attrs.field(factory=collections.deque)

    def _trim(self, now_s: float) -> None:
        while self._closings and now_s - self._closings[0] >= 3600.0:
            self._closings.popleft()

    def dwell_ok(self, now_s: float) -> bool:
        return self.last_switch_s is None or now_s - self.last_switch_s >= self.min_dwell_s

    def may_close(self, now_s: float) -> bool:
        self._trim(now_s)
        return self.dwell_ok(now_s) and len(self._closings) < self.max_cycles_per_hour

    def may_open(self, now_s: float, *, emergency: bool = False) -> bool:
        return emergency or self.dwell_ok(now_s)

    def closed(self, now_s: float) -> None:
        self.last_switch_s = now_s
        self._closings.append(now_s)

    def opened(self, now_s: float) -> None:
        self.last_switch_s = now_s

    def closings_last_hour(self, now_s: float) -> int:
        self._trim(now_s)
        return len(self._closings)
