"""Physics of one simulated bidirectional charger: power stage, contactor, heat, tamper, vehicle.

Theory of operation
-------------------
The charger is a plain object advanced lazily: every public call first integrates the
physics from the last time it was touched up to ``clock()`` (``_advance``), then acts. So
it runs the same under a real clock, a ``trio.testing.MockClock`` or a clock a simulation
steps by hand, and costs nothing between calls. Integration is piecewise exact where it is
cheap to be (ramps, SoC as the integral of a piecewise-linear power, first-order heat with
power held over a step) and is cut at every event (ramp reached, contactor due to open,
step limit); a long jump of virtual time is cut into at most ``MAX_STEPS`` steps.

Models
    power stage  moves towards its target at ``ramp_w_per_s`` (default: a full charge to
                 full discharge swing in 80 ms, inside the 100 ms the design requires); the
                 target is the setpoint clamped to the charger rating and the vehicle's
                 ISO 15118-20 limits (a discharge under EVMinimumDischargePower becomes 0).
    contactor    closes when power is wanted, opens after ``contactor_open_delay_s`` at zero
                 power. Each close is a cycle; wear counts 1 per normal close, 10 for a close
                 within ``rapid_reclose_s`` of the last opening, 10 for an opening under load
                 (an emergency ``open_contactors`` or a trip while power flows). "Under load"
                 is more than ``ZERO_CURRENT_FRACTION`` of the rating. Wear past
                 ``contactor_cycle_budget`` welds the contacts: a latched fault that
                 ``clear_faults`` refuses while the contacts stay welded. ``open_contactors``
                 holds them open (target 0 W) until ``close_contactors`` releases the hold.
    heat         dT/dt = (T_ambient + R_th * loss_fraction * |P| - T) / tau; above
                 ``trip_c`` the stage trips (fault ``over_temperature``), clearable below
                 ``clear_c``. Ambient is rated -25..+50 deg C.
    tamper       a switch that latches ``tamper`` until cleared with the enclosure shut.
    vehicle      an ``EVBattery`` (SoC integration, BMS limits) or none.

Thread safety: a charger served over Modbus is touched by the server's thread and by the
simulation's, so every public method holds ``lock`` (shared with the site).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import attrs

from hardware.interfaces import (
    TEMPERATURE_RATED_C,
    ClearResult,
    ContactorResult,
    ContactorState,
    DeviceFault,
    FaultKind,
    InverterLimits,
    InverterState,
    VehicleParameters,
)
from hardware.simulated.faults import FaultHooks
from hardware.simulated.vehicles import EVBattery, VehicleConfig

MAX_STEPS = 2000
ZERO_CURRENT_FRACTION = 0.01  # at most 1 % of the rating flowing counts as zero current
UNDER_LOAD_WEAR = 10  # wear units of one opening under load (a normal close is 1)
FAULT_CODES = ("contactor_welded", "over_temperature", "tamper", "bms_fault")


def default_ramp_w_per_s(max_charge_w: float, max_discharge_w: float, swing_s: float = 0.080) -> float:
    return (max_charge_w + max_discharge_w) / swing_s


@attrs.define(eq=False)
class SimulatedCharger(FaultHooks):
    clock: Callable[[], float]
    name: str = "charger-1"
    max_charge_w: float = 11_000.0
    max_discharge_w: float = 11_000.0
    ramp_w_per_s: float | None = None  # None: a full swing in 80 ms
    contactor_open_delay_s: float = 2.0
    rapid_reclose_s: float = 1.0
    contactor_cycle_budget: int = 100_000
    ambient_c: float = 20.0
    thermal_tau_s: float = 300.0
    thermal_r_k_per_w: float = 0.06
    loss_fraction: float = 0.03
    trip_c: float = 85.0
    clear_c: float = 75.0
    lock: threading.RLock = attrs.field(factory=threading.RLock)

    # state
    setpoint_w: float = attrs.field(init=False, default=0.0)
    power_w: float = attrs.field(init=False, default=0.0)
    contactor: ContactorState = attrs.field(init=False, default=ContactorState.OPEN)
    contactor_cycles: int = attrs.field(init=False, default=0)
    contactor_wear: int = attrs.field(init=False, default=0)
    temperature_c: float = attrs.field(init=False)
    tamper_open: bool = attrs.field(init=False, default=False)
    tamper_latched: bool = attrs.field(init=False, default=False)
    safe_mode: bool = attrs.field(init=False, default=False)
    contactors_held_open: bool = attrs.field(init=False, default=False)  # by open_contactors()
    broken_power_w: float = attrs.field(init=False, default=0.0)  # AC power the last opening broke
    faults: set[str] = attrs.field(init=False, factory=set)
    vehicle: EVBattery | None = attrs.field(init=False, default=None)
    energy_in_wh: float = attrs.field(init=False, default=0.0)  # absorbed (charging)
    energy_out_wh: float = attrs.field(init=False, default=0.0)  # injected (discharging)
    frozen: ChargerSnapshot | None = attrs.field(init=False, default=None)  # measurements stopped
    overrides: dict[str, float] = attrs.field(init=False, factory=dict)  # injected raw values
    _t: float = attrs.field(init=False)
    _idle_since: float | None = attrs.field(init=False, default=None)
    _opened_at: float = attrs.field(init=False, default=-math.inf)

    def __attrs_post_init__(self) -> None:
        if self.ramp_w_per_s is None:
            self.ramp_w_per_s = default_ramp_w_per_s(self.max_charge_w, self.max_discharge_w)
        self._check_ambient(self.ambient_c)
        self.temperature_c = self.ambient_c
        self._t = self.clock()

    # --- physics ---------------------------------------------------------------------------

    @staticmethod
    def _check_ambient(c: float) -> None:
        lo, hi = TEMPERATURE_RATED_C
        if not lo <= c <= hi:
            raise ValueError(f"ambient {c} deg C outside the rated {lo:g}..{hi:g} deg C")

    @property
    def rated_w(self) -> float:
        """The nameplate rating (what the Modbus image serves as 702 ``WMaxRtg``)."""
        return max(self.max_charge_w, self.max_discharge_w)

    def limits(self) -> InverterLimits:
        if self.vehicle is None:
            return self._limits_from(None)
        v = self.vehicle
        return self._limits_w(v.charge_limit_w(), v.discharge_limit_w())

    def _limits_from(self, p: VehicleParameters | None) -> InverterLimits:
        """``limits()`` from the vehicle's parameters of this instant (None: no vehicle)."""
        if p is None:
            assert self.ramp_w_per_s is not None
            return InverterLimits(0.0, 0.0, self.ramp_w_per_s, self.rated_w)
        return self._limits_w(p.ev_maximum_charge_power_w, p.ev_maximum_discharge_power_w)

    def _limits_w(self, ev_charge_w: float, ev_discharge_w: float) -> InverterLimits:
        assert self.ramp_w_per_s is not None
        return InverterLimits(min(self.max_charge_w, ev_charge_w), min(self.max_discharge_w, ev_discharge_w),
                              self.ramp_w_per_s, self.rated_w)

    def _target_w(self, lim: InverterLimits | None = None) -> float:
        """The power the stage moves toward (``lim``: this instant's ``limits()``, if at hand)."""
        if self.faults or self.safe_mode or self.contactors_held_open or self.vehicle is None:
            return 0.0
        target = (lim or self.limits()).clamp(self.setpoint_w)
        if target < 0 and -target < self.vehicle.config.min_discharge_w:
            return 0.0
        return target

    def _under_load(self) -> bool:
        return abs(self.power_w) > ZERO_CURRENT_FRACTION * max(self.max_charge_w, self.max_discharge_w)

    def _open_contactor(self, now: float, *, under_load: bool) -> None:
        if self.contactor is ContactorState.CLOSED:
            self.contactor = ContactorState.OPEN
            self._opened_at = now
            self.broken_power_w = self.power_w
            self.power_w = 0.0  # no current through open contacts
            if under_load:
                self._wear(UNDER_LOAD_WEAR, now)

    def _close_contactor(self, now: float) -> None:
        self.contactor = ContactorState.CLOSED
        self.contactor_cycles += 1
        self._wear(10 if now - self._opened_at < self.rapid_reclose_s else 1, now)

    def _wear(self, units: int, now: float) -> None:
        self.contactor_wear += units
        if self.contactor_wear > self.contactor_cycle_budget and self.contactor is not ContactorState.WELDED:
            self.contactor = ContactorState.WELDED
            self.faults.add("contactor_welded")
            self.power_w = 0.0  # the stage stops switching; the contacts stay shut

    def _trip(self, code: str, now: float) -> None:
        under_load = self._under_load()
        self.faults.add(code)
        self._open_contactor(now, under_load=under_load)
        self.power_w = 0.0

    def _advance(self, now: float) -> None:
        t = self._t
        if now <= t:
            return
        max_step = max(0.05, (now - t) / MAX_STEPS)
        assert self.ramp_w_per_s is not None
        ramp = self.ramp_w_per_s
        for _ in range(MAX_STEPS + 100):
            if t >= now:
                break
            target = self._target_w()
            if target != 0 and self.contactor is ContactorState.OPEN:
                self._close_contactor(t)
            if self.contactor is not ContactorState.CLOSED:
                target = 0.0
            end = min(now, t + max_step)
            ramp_end = math.inf
            if self.power_w != target:
                ramp_end = t + abs(target - self.power_w) / ramp
                end = min(end, ramp_end)
            elif self.power_w == 0 and self.contactor is ContactorState.CLOSED and target == 0:
                if self._idle_since is None:
                    self._idle_since = t
                due = self._idle_since + self.contactor_open_delay_s
                if due <= t:
                    self._open_contactor(t, under_load=False)
                    continue
                end = min(end, due)
            dt = end - t
            p0 = self.power_w
            step = ramp * dt
            # a segment cut at the ramp's end reaches the target exactly: at large clock
            # values (t ~ 1e5 s) ramp * dt loses the last bits and would never get there
            reached = end >= ramp_end or abs(target - p0) <= step + 1e-6
            p1 = target if reached else p0 + math.copysign(step, target - p0)
            energy_wh = (p0 + p1) / 2.0 * dt / 3600.0
            if self.vehicle is not None:
                self.vehicle.integrate(energy_wh)
            # trapezoid of a sign-changing segment splits into in/out parts
            if energy_wh >= 0:
                self.energy_in_wh += energy_wh
            else:
                self.energy_out_wh -= energy_wh
            loss_w = self.loss_fraction * (abs(p0) + abs(p1)) / 2.0
            steady_c = self.ambient_c + self.thermal_r_k_per_w * loss_w
            self.temperature_c = steady_c + (self.temperature_c - steady_c) * math.exp(-dt / self.thermal_tau_s)
            self.power_w = p1
            t = end
            if p1 != 0 or target != 0:
                self._idle_since = None
            if self.temperature_c > self.trip_c and "over_temperature" not in self.faults:
                self._trip("over_temperature", t)
            if self.vehicle is not None and self.vehicle.bms_fault and "bms_fault" not in self.faults:
                self._trip("bms_fault", t)
        self._t = now

    def advance(self) -> float:
        """Bring the physics up to ``clock()``; returns that time."""
        with self.lock:
            now = self.clock()
            self._advance(now)
            return now

    # --- commands (the inverter interface's verbs) ----------------------------------------

    def state(self) -> InverterState:
        if self.faults:
            return InverterState.FAULT
        if self.safe_mode:
            return InverterState.SAFE_MODE
        if self.power_w >= 0.5:
            return InverterState.CHARGING
        if self.power_w <= -0.5:
            return InverterState.DISCHARGING
        return InverterState.IDLE

    def set_power(self, setpoint_w: float) -> float:
        if not isinstance(setpoint_w, int | float) or not math.isfinite(setpoint_w):
            raise ValueError(f"setpoint must be a finite number of watts, got {setpoint_w!r}")
        with self.lock:
            self.advance()
            if self.faults:
                raise DeviceFault(FaultKind.DEVICE_FAULT, f"refused: latched faults {', '.join(sorted(self.faults))}",
                                  self.name, codes=tuple(sorted(self.faults)))
            if self.safe_mode:
                raise DeviceFault(FaultKind.DEVICE_FAULT, "refused: inverter is in safe mode", self.name)
            setpoint_w = round(self.limits().clamp(float(setpoint_w)), 1)
            if self.contactors_held_open and setpoint_w != 0:
                raise DeviceFault(FaultKind.DEVICE_FAULT, "refused: contactors held open (close_contactors first)",
                                  self.name)
            self.setpoint_w = setpoint_w
            return self._target_w()

    def set_safe_mode(self, on: bool) -> None:
        with self.lock:
            self.advance()
            self.safe_mode = bool(on)
            self.setpoint_w = 0.0

    def open_contactors(self, *, emergency: bool = False) -> ContactorResult:
        """Open and hold open; normally only at zero current, in an emergency at once."""
        with self.lock:
            now = self.advance()
            if self.contactor is ContactorState.WELDED:
                raise DeviceFault(FaultKind.DEVICE_FAULT, "refused: contactor contacts are welded", self.name,
                                  codes=("contactor_welded",))
            if self.contactor is ContactorState.CLOSED and self._under_load() and not emergency:
                raise DeviceFault(FaultKind.UNDER_LOAD,
                                  f"refused: {self.power_w:.1f} W flowing; open at zero current (set 0 W first)",
                                  self.name, power_w=self.power_w)
            was_held = self.contactors_held_open
            self.contactors_held_open = True
            self.setpoint_w = 0.0  # an open never resumes a setpoint
            if self.contactor is ContactorState.OPEN:
                return ContactorResult(ContactorState.OPEN, True, changed=not was_held)
            under_load = self._under_load()
            self._open_contactor(now, under_load=under_load)
            # wear past the budget welds the contacts in this very opening
            return ContactorResult(self.contactor, True, changed=True, under_load=under_load,
                                   broken_power_w=round(self.broken_power_w, 1) + 0.0 if under_load else 0.0)

    def close_contactors(self) -> ContactorResult:
        """Release the hold: the contactors close again when there is power to deliver."""
        with self.lock:
            self.advance()
            was_held = self.contactors_held_open
            self.contactors_held_open = False
            return ContactorResult(self.contactor, False, changed=was_held)

    def latched(self) -> tuple[str, ...]:
        codes = set(self.faults)
        if self.tamper_latched:
            codes.add("tamper")
        return tuple(sorted(codes))

    def causes_present(self) -> tuple[str, ...]:
        present = []
        if self.contactor is ContactorState.WELDED:
            present.append("contactor_welded")
        if self.temperature_c > self.clear_c:
            present.append("over_temperature")
        if self.tamper_open:
            present.append("tamper")
        if self.vehicle is not None and self.vehicle.bms_fault:
            present.append("bms_fault")
        return tuple(present)

    def clear_faults(self) -> ClearResult:
        """Idempotent; all or nothing: refuses (CAUSE_PRESENT) if any latched cause persists."""
        with self.lock:
            self.advance()
            latched = self.latched()
            blocking = tuple(c for c in self.causes_present() if c in latched)
            if blocking:
                reasons = {"contactor_welded": "contactor contacts are welded (replace the contactor)",
                           "over_temperature": f"power stage at {self.temperature_c:.1f} deg C (clears below {self.clear_c:g})",
                           "tamper": "enclosure is open", "bms_fault": "vehicle BMS reports a fault"}
                raise DeviceFault(FaultKind.CAUSE_PRESENT, "cannot clear: " + "; ".join(reasons[c] for c in blocking),
                                  self.name, codes=blocking)
            self.faults.clear()
            self.tamper_latched = False
            if latched:
                self.setpoint_w = 0.0  # never resume a pre-fault setpoint
            return ClearResult(latched)

    # --- the world acting on the charger (tests, simulations, the emulator) ---------------

    def connect_vehicle(self, config: VehicleConfig) -> None:
        with self.lock:
            self.advance()
            self.vehicle = EVBattery(config)

    def disconnect_vehicle(self) -> None:
        with self.lock:
            self.advance()
            self.vehicle = None
            self.setpoint_w = 0.0

    def set_ambient(self, ambient_c: float) -> None:
        self._check_ambient(ambient_c)
        with self.lock:
            self.advance()
            self.ambient_c = ambient_c

    def open_enclosure(self) -> None:
        with self.lock:
            self.advance()
            self.tamper_open = True
            self.tamper_latched = True

    def close_enclosure(self) -> None:
        with self.lock:
            self.advance()
            self.tamper_open = False

    def replace_contactor(self) -> None:
        """Maintenance: a new contactor (wear 0); the welded fault can then be cleared."""
        with self.lock:
            self.advance()
            self.contactor = ContactorState.OPEN
            self.contactor_wear = 0

    def snapshot(self) -> ChargerSnapshot:
        """Everything the charger measures, as raw numbers, at ``clock()`` (or when frozen)."""
        with self.lock:
            now = self.advance()
            if self.frozen is not None:
                return self.frozen
            # one limits() and one state() for the whole snapshot (each was computed 3 and 2
            # times: the snapshot is taken every control cycle of every simulated agent)
            v = self.vehicle
            p = v.parameters() if v is not None else None
            lim = self._limits_from(p)
            state = self.state()
            snap = ChargerSnapshot(
                taken_at_s=now,
                state=state.value,
                setpoint_w=self._target_w(lim) if state not in (InverterState.FAULT, InverterState.SAFE_MODE) else 0.0,
                commanded_w=self.setpoint_w,
                actual_power_w=self.power_w,
                max_charge_w=lim.max_charge_w,
                max_discharge_w=lim.max_discharge_w,
                ramp_w_per_s=lim.ramp_w_per_s,
                rated_charge_w=self.max_charge_w,
                rated_discharge_w=self.max_discharge_w,
                rated_w=self.rated_w,
                contactor=self.contactor.value,
                contactor_cycles=self.contactor_cycles,
                contactor_cycle_budget=self.contactor_cycle_budget,
                contactors_held_open=self.contactors_held_open,
                broken_power_w=self.broken_power_w,
                faults=self.latched(),
                causes_present=self.causes_present(),
                temperature_c=self.temperature_c,
                tamper_open=self.tamper_open,
                tamper_latched=self.tamper_latched,
                vehicle_connected=v is not None,
                bms_status=int(v.bms_status()) if v is not None else 0,
                ev_maximum_charge_power_w=p.ev_maximum_charge_power_w if p else 0.0,
                ev_maximum_discharge_power_w=p.ev_maximum_discharge_power_w if p else 0.0,
                ev_minimum_discharge_power_w=p.ev_minimum_discharge_power_w if p else 0.0,
                present_soc_pct=v.soc_pct if v else 0.0,
                minimum_soc_pct=p.minimum_soc_pct if p else 0.0,
                target_soc_pct=p.target_soc_pct if p else 0.0,
                battery_energy_capacity_wh=p.battery_energy_capacity_wh if p else 0.0,
                vehicle_id=(v.config.vehicle_id or v.config.spec.model) if v else "",
                energy_in_wh=self.energy_in_wh,
                energy_out_wh=self.energy_out_wh,
                ev_old_firmware=bool(v and v.config.firmware == "old"),
                max_discharge_amps=(v.config.max_discharge_amps if v and v.config.max_discharge_amps is not None
                                    else math.nan),
                ev_discharge_spec_w=v.config.spec.discharge_kw * 1000.0 if v else 0.0,
                ev_charge_spec_w=v.config.spec.charge_kw * 1000.0 if v else 0.0,
                ev_nominal_v=v.config.spec.nominal_v if v else 0.0,
            )
            return self._measured(snap)



@attrs.frozen
class ChargerSnapshot:
    """Raw measured values of one charger (our sign convention), before any range check.

    The in-process devices and the Modbus server both build their answers from this, so a
    value injected here (NaN, a negative SoC) reaches every implementation the same way.
    """

    taken_at_s: float
    state: str
    setpoint_w: float  # in force
    commanded_w: float  # as last commanded (clamped to limits at the time)
    actual_power_w: float
    max_charge_w: float
    max_discharge_w: float
    ramp_w_per_s: float
    rated_charge_w: float
    rated_discharge_w: float
    contactor: str
    contactor_cycles: int
    contactor_cycle_budget: int
    contactors_held_open: bool
    broken_power_w: float  # AC power the last opening broke (under load or not)
    faults: tuple[str, ...]
    causes_present: tuple[str, ...]
    temperature_c: float
    tamper_open: bool
    tamper_latched: bool
    vehicle_connected: bool
    bms_status: int
    ev_maximum_charge_power_w: float
    ev_maximum_discharge_power_w: float
    ev_minimum_discharge_power_w: float
    present_soc_pct: float
    minimum_soc_pct: float
    target_soc_pct: float
    battery_energy_capacity_wh: float
    vehicle_id: str
    energy_in_wh: float
    energy_out_wh: float
    # the caps behind EVMaximumDischargePower (what `meshagent read` shows in force)
    ev_old_firmware: bool = False  # discharge capped at 50 % of the charge power
    max_discharge_amps: float = math.nan  # the charger's MAX_DISCHARGE_AMPS setting; NaN = none
    ev_discharge_spec_w: float = 0.0  # the vehicle's own discharge power, before the caps
    ev_charge_spec_w: float = 0.0
    ev_nominal_v: float = 0.0  # battery nominal DC voltage (MAX_DISCHARGE_AMPS x V)
    rated_w: float = 0.0  # nameplate rating (702 WMaxRtg); 0: not given


SimulatedCharger.SNAPSHOT_TYPE = ChargerSnapshot  # defined after the class that returns it
