"""The control loop's decisions, synchronous and clock-free: ``step(inputs, now) -> Decision``.

Theory of operation
-------------------
``ControlLogic`` is the sans-IO core of the control loop. The trio shell (``loop.py``) reads
the devices, calls ``step`` with what it read and the time on its clock, and carries out
the ``Decision``: the setpoint to write, whether the inverter should be in safe mode, what
to do with the contactors, the spikes to hand to the allocation and the fault events to
log. Tests drive the same object from tables, and simulations in virtual time.

One cycle, in order:

1. **Meter.** A valid sample (finite, and newer than the last one) feeds spike detection, the droop, the predictive PID, the trip
   windows and the return-to-service timer. No valid sample for ``sensor_timeout``
   (100 ms) raises the latched ``ERR_SENSOR_LOST``; until then the last response is held.
2. **Interlocks.** The tamper switch (``ERR_TAMPER``, latched, emergency opening of the
   contactors), welded contacts (``ERR_CONTACTOR_WELD``, latched), temperatures
   (``ERR_THERMAL``: derating, stop, cleared, with hysteresis), the vehicle's minimum SoC and
   BMS Battery_Lower_Limit (``ERR_BATTERY_LOWER_LIMIT``: the vehicle leaves the offer).
3. **Latches.** A latched fault is released only when ``clear_faults()`` has been called
   since it was raised *and* its release condition holds this cycle: the frequency inside
   the return-to-service band for its delay (grid sync), the enclosure closed (tamper), a
   valid meter sample (sensor), contacts not welded (weld). ``clear_faults`` is idempotent.
4. **Setpoint.** ``base_setpoint_w - share_w - frequency_response_w`` (+ charge,
   - discharge; the share and the response are discharge magnitudes), through
   ``limits.clamp_setpoint`` and nothing else. A latched fault or a device that could not
   be read forces 0 W.
5. **Contactors.** Safe mode (grid sync lost) opens them only once the AC power is at most
   ``contactor_open_below``; tamper opens them at once. Otherwise they may close again, but
   only as the ``ContactorGuard`` allows (dwell, cycles per hour): while it refuses, the
   setpoint stays 0 so the inverter does not close them itself. Contacts still closed
   ``contactor_weld_time`` after an open command are welded.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from meshagent.control.codes import LATCHED, Action, Code, FaultEvent
from meshagent.control.detect import DetectorSettings, Spike, SpikeDetector
from meshagent.control.frequency import (
    DroopResponse,
    FrequencyProfile,
    PidState,
    PredictivePid,
    ReturnToService,
    TripMonitor,
)
from meshagent.control.limits import (
    ContactorGuard,
    DeviceState,
    Limits,
    clamp_setpoint,
    thermal_factor,
)

LATENCY_REPORT_INTERVAL_S = 1.0  # at most one LATENCY_OVER_BUDGET line per source per second


@attrs.frozen
class MeterSample:
    load_w: float  # + import at the meter
    frequency_hz: float
    taken_at_s: float


@attrs.frozen
class Inputs:
    meter: MeterSample | None  # None: no valid reading this cycle
    device: DeviceState | None  # None: the devices could not be read this cycle
    share_w: float = 0.0  # discharge the allocation asks of this charger (magnitude)
    covered_w: float | None = None  # discharge the mesh applies in this scope (None: our own)
    base_setpoint_w: float = 0.0  # the charging session's own setpoint (+ charge)


class ContactorCommand(enum.StrEnum):
    NONE = "none"
    OPEN = "open"  # at zero current, after the dwell
    EMERGENCY_OPEN = "emergency_open"  # now, whatever the current (tamper)


class ThermalLevel(enum.StrEnum):
    NORMAL = "normal"
    DERATING = "derating"
    STOP = "stop"


@attrs.frozen
class Decision:
    setpoint_w: float  # + charge, - discharge; already clamped
    request_w: float  # what was asked before the clamp
    binding: str  # the limit that decided the setpoint ("request": none)
    safe_mode: bool  # hold the inverter in safe mode (grid sync lost, tamper, weld)
    contactor: ContactorCommand
    spikes: tuple[Spike, ...]
    events: tuple[FaultEvent, ...]
    offer_available: bool  # the vehicle may be offered to the mesh
    frequency_response_w: float  # discharge added for frequency (negative: over-frequency)
    pid: PidState | None
    faults: tuple[str, ...]  # active codes (latched and not), sorted


@attrs.define
class _Latch:
    raised_at_s: float
    clear_requested: bool = False


@attrs.frozen
class LogicStatistics:
    cycles: int
    spikes_started: int
    faults_raised: int
    latched: tuple[str, ...]
    contactor_closings_last_hour: int


@attrs.define
class ControlLogic:
    section: Any  # meshagent.control.config.ControlSection
    node_id: str = "node"
    scope_id: str = "site"
    profile: FrequencyProfile = attrs.field(init=False)
    limits: Limits = attrs.field(init=False)
    detector: SpikeDetector = attrs.field(init=False)
    droop: DroopResponse = attrs.field(init=False)
    pid: PredictivePid = attrs.field(init=False)
    trips: TripMonitor = attrs.field(init=False)
    rts: ReturnToService = attrs.field(init=False)
    guard: ContactorGuard = attrs.field(init=False)
    latched: dict[Code, _Latch] = attrs.field(factory=dict)
    thermal: ThermalLevel = ThermalLevel.NORMAL
    lower_limit: bool = False
    response_pu: float = 0.0
    last_meter: MeterSample | None = None
    last_decision: Decision | None = None
    _started_s: float | None = None
    _last_valid_s: float | None = None
    _open_sent_s: float | None = None
    _contactor_was_closed: bool | None = None
    _latency_last: dict[str, tuple[float, int]] = attrs.field(factory=dict)
    _cycles: int = 0
    _raised: int = 0

    def __attrs_post_init__(self) -> None:
        s = self.section
        self.profile = s.frequency_profile()
        self.limits = Limits.from_section(s)
        self.detector = SpikeDetector(
            DetectorSettings.from_section(s), scope=s.meter_scope, scope_id=self.scope_id, node_id=self.node_id
        )
        self.droop = DroopResponse(self.profile)
        self.pid = PredictivePid(self.profile)
        self.trips = TripMonitor(self.profile)
        self.rts = ReturnToService(self.profile)
        self.guard = ContactorGuard(s.contactor_min_dwell_s, s.contactor_max_cycles_per_hour)

    # --- operator and shell entry points ---------------------------------------------------

    def clear_faults(self, now_s: float) -> list[FaultEvent]:
        """Operator's clear: each latched fault is released once its condition also holds.

        Idempotent: a second call (or a call with nothing latched) changes nothing and
        returns no events.
        """
        events = []
        for code, latch in sorted(self.latched.items()):
            if not latch.clear_requested:
                latch.clear_requested = True
                events.append(FaultEvent(code, Action.CLEAR_REQUESTED, now_s, "clear-faults received",
                                         {"raised_at_s": latch.raised_at_s}))
        return events

    def restore_latched(self, codes: tuple[str, ...] | list[str], now_s: float) -> list[FaultEvent]:
        """Raise again the latched faults a previous run left (a restart never clears one)."""
        events: list[FaultEvent] = []
        for name in codes:
            try:
                code = Code(name)
            except ValueError:
                continue
            if code in LATCHED:
                self._raise(code, now_s, "latched before the restart: still latched", {"restored": True}, events)
        return events

    def report_latency(self, what: str, elapsed_s: float, budget_s: float, now_s: float) -> FaultEvent | None:
        """A cycle or round trip ran over its budget: one event per source per second at most."""
        if elapsed_s <= budget_s:
            return None
        last_s, suppressed = self._latency_last.get(what, (-math.inf, 0))
        if now_s - last_s < LATENCY_REPORT_INTERVAL_S:
            self._latency_last[what] = (last_s, suppressed + 1)
            return None
        self._latency_last[what] = (now_s, 0)
        return FaultEvent(Code.LATENCY_OVER_BUDGET, Action.REPORTED, now_s,
                          f"{what} took {elapsed_s * 1e3:.2f} ms (budget {budget_s * 1e3:g} ms)",
                          {"what": what, "elapsed_ms": elapsed_s * 1e3, "budget_ms": budget_s * 1e3,
                           "suppressed_since_last": suppressed})

    def active_faults(self) -> tuple[str, ...]:
        codes = {str(c) for c in self.latched}
        if self.thermal is not ThermalLevel.NORMAL:
            codes.add(str(Code.ERR_THERMAL))
        if self.lower_limit:
            codes.add(str(Code.ERR_BATTERY_LOWER_LIMIT))
        return tuple(sorted(codes))

    def statistics(self, now_s: float) -> LogicStatistics:
        return LogicStatistics(self._cycles, self.detector.spikes_started, self._raised,
                               tuple(sorted(str(c) for c in self.latched)), self.guard.closings_last_hour(now_s))

    # --- the cycle ------------------------------------------------------------------------

    def _raise(self, code: Code, now_s: float, message: str, figures: dict[str, Any], out: list[FaultEvent]) -> None:
        if code in LATCHED:
            if code in self.latched:
                return
            self.latched[code] = _Latch(now_s)
        self._raised += 1
        out.append(FaultEvent(code, Action.RAISED, now_s, message, figures))

    def step(self, inputs: Inputs, now_s: float) -> Decision:
        s = self.section
        self._cycles += 1
        events: list[FaultEvent] = []
        spikes: list[Spike] = []
        if self._started_s is None:
            self._started_s = self._last_valid_s = now_s
        share_w = inputs.share_w if math.isfinite(inputs.share_w) else 0.0
        covered_w = inputs.covered_w
        if covered_w is None:  # alone: what this charger has taken off the meter
            dev0 = inputs.device
            covered_w = max(0.0, inputs.base_setpoint_w - dev0.actual_power_w) if dev0 is not None else 0.0

        # 1. meter
        meter = inputs.meter
        # A sample is valid if its values are finite and it is newer than the last one: a
        # meter whose measurement stopped advancing (hung board) is lost, even if it answers.
        meter_ok = (meter is not None and math.isfinite(meter.load_w) and math.isfinite(meter.frequency_hz)
                    and (self.last_meter is None or meter.taken_at_s > self.last_meter.taken_at_s))
        in_rts_band = False
        pid_state: PidState | None = None
        if meter_ok:
            assert meter is not None
            # taken_at_s is on the device's clock (only compared with itself); age is ours
            self._last_valid_s, self.last_meter = now_s, meter
            spikes = self.detector.step(meter.load_w, now_s, covered_w)
            f = meter.frequency_hz
            droop_pu = self.droop.step(f, now_s)
            pid_state = self.pid.step(f, now_s)
            self.response_pu = max(droop_pu, pid_state.output_pu) if droop_pu >= 0 else droop_pu
            trip = self.trips.step(f, now_s)
            in_rts_band = self.rts.step(f, now_s)
            if trip is not None and Code.ERR_GRID_SYNC_LOST not in self.latched:
                self.rts.reset()
                in_rts_band = False
                self._raise(Code.ERR_GRID_SYNC_LOST, now_s,
                            f"frequency {f:.3f} Hz outside {trip.stage.name} ({trip.stage.limit_hz:g} Hz) "
                            f"for {trip.outside_for_s:.3f} s: safe mode",
                            {"stage": trip.stage.name, "frequency_hz": f, "limit_hz": trip.stage.limit_hz,
                             "clearing_time_s": trip.stage.clearing_time_s}, events)
        else:
            self.rts.reset()
            assert self._last_valid_s is not None
            silent_s = now_s - self._last_valid_s
            if silent_s >= s.sensor_timeout_s - 1e-9:
                self._raise(Code.ERR_SENSOR_LOST, now_s,
                            f"no valid meter reading for {silent_s * 1e3:.0f} ms: discharge to 0",
                            {"silent_ms": silent_s * 1e3, "timeout_ms": s.sensor_timeout_s * 1e3}, events)

        # 2. interlocks
        dev = inputs.device
        if dev is not None:
            self._interlocks(dev, now_s, events)

        # 3. latches
        for code, latch in sorted(self.latched.items()):
            if latch.clear_requested and self._released(code, dev, meter_ok, in_rts_band):
                del self.latched[code]
                events.append(FaultEvent(code, Action.CLEARED, now_s, "released: cleared by operator and condition holds",
                                         {"latched_for_s": now_s - latch.raised_at_s}))

        # 4. contactors and setpoint
        emergency = Code.ERR_TAMPER in self.latched
        want_open = bool({Code.ERR_GRID_SYNC_LOST, Code.ERR_TAMPER, Code.ERR_CONTACTOR_WELD} & self.latched.keys())
        safe_mode = want_open
        blocked = bool(self.latched) or dev is None
        command = ContactorCommand.NONE
        if dev is not None:
            command, dev = self._contactors(dev, now_s, want_open, emergency, events)
        rated_w = 0.0
        if dev is not None:
            rated_w = dev.inverter_max_discharge_w if self.response_pu >= 0 else dev.inverter_max_charge_w
            rated_w = rated_w if math.isfinite(rated_w) and rated_w > 0 else 0.0
        response_w = self.response_pu * rated_w
        request_w = inputs.base_setpoint_w - share_w - response_w
        if dev is None:
            setpoint_w, binding = 0.0, "device_unreadable"
        else:
            clamped = clamp_setpoint(request_w, dev, self.limits, blocked=blocked)
            setpoint_w, binding = clamped.setpoint_w, clamped.binding
        offer = (dev is not None and dev.vehicle_connected and not self.lower_limit and not self.latched
                 and self.thermal is not ThermalLevel.STOP)
        decision = Decision(
            setpoint_w=setpoint_w, request_w=request_w, binding=binding, safe_mode=safe_mode,
            contactor=command, spikes=tuple(spikes), events=tuple(events), offer_available=offer,
            frequency_response_w=response_w, pid=pid_state, faults=self.active_faults(),
        )
        self.last_decision = decision
        return decision

    def _interlocks(self, dev: DeviceState, now_s: float, events: list[FaultEvent]) -> None:
        s = self.section
        if dev.tamper:
            self._raise(Code.ERR_TAMPER, now_s, "enclosure opened: emergency shutdown of the HV bus",
                        {"open": dev.tamper}, events)
        if dev.contactor_welded:
            self._raise(Code.ERR_CONTACTOR_WELD, now_s, "contactor reports welded contacts",
                        {"source": "device"}, events)
        # thermal, with hysteresis on the way back
        hi, lo, h = dev.temperature_max_c, dev.temperature_min_c, s.thermal_hysteresis_c
        factor = thermal_factor(hi, lo, self.limits)
        if factor == 0.0:
            level = ThermalLevel.STOP
        elif factor < 1.0:
            level = ThermalLevel.DERATING
        else:
            level = ThermalLevel.NORMAL
        # leaving a level needs the hysteresis margin
        if self.thermal is ThermalLevel.STOP and level is not ThermalLevel.STOP and (
            hi > s.thermal_stop_c - h or lo < s.thermal_low_c + h
        ):
            level = ThermalLevel.STOP
        if self.thermal is not ThermalLevel.NORMAL and level is ThermalLevel.NORMAL and hi > s.thermal_derate_c - h:
            level = ThermalLevel.DERATING
        if level is not self.thermal:
            figures = {"level": str(level), "temperature_max_c": hi, "temperature_min_c": lo,
                       "derating_factor": factor}
            if level is ThermalLevel.NORMAL:
                events.append(FaultEvent(Code.ERR_THERMAL, Action.CLEARED, now_s, "temperature back in range", figures))
            else:
                what = "stop" if level is ThermalLevel.STOP else f"derating to {factor:.0%}"
                self._raise(Code.ERR_THERMAL, now_s, f"temperature {hi:g}/{lo:g} C: {what}", figures, events)
            self.thermal = level
        # minimum SoC / Battery_Lower_Limit: the vehicle leaves the offer
        soc, floor = dev.soc_pct, dev.min_soc_pct
        at_floor = dev.battery_lower_limit or not soc > floor
        if at_floor and not self.lower_limit:
            self.lower_limit = True
            self._raise(Code.ERR_BATTERY_LOWER_LIMIT, now_s, "vehicle at its minimum SoC: no discharge, leaves the offer",
                        {"soc_pct": soc, "min_soc_pct": floor, "bms_status": dev.bms_status}, events)
        elif self.lower_limit and not dev.battery_lower_limit and soc > floor + 100.0 * s.soc_hysteresis:
            self.lower_limit = False
            events.append(FaultEvent(Code.ERR_BATTERY_LOWER_LIMIT, Action.CLEARED, now_s, "vehicle back above its minimum SoC",
                                     {"soc_pct": soc, "min_soc_pct": floor}))

    def _released(self, code: Code, dev: DeviceState | None, meter_ok: bool, in_rts_band: bool) -> bool:
        if code is Code.ERR_GRID_SYNC_LOST:
            return in_rts_band
        if code is Code.ERR_SENSOR_LOST:
            return meter_ok
        if dev is None:
            return False
        if code is Code.ERR_TAMPER:
            return not dev.tamper
        if code is Code.ERR_CONTACTOR_WELD:
            return not dev.contactor_welded
        return True

    def _contactors(self, dev: DeviceState, now_s: float, want_open: bool, emergency: bool,
                    events: list[FaultEvent]) -> tuple[ContactorCommand, DeviceState]:
        s = self.section
        closed = dev.contactor_closed or dev.contactor_welded
        if self._contactor_was_closed is not None and closed != self._contactor_was_closed:
            (self.guard.closed if closed else self.guard.opened)(now_s)
        self._contactor_was_closed = closed
        if not closed:
            self._open_sent_s = None
        command = ContactorCommand.NONE
        if want_open and closed:
            if self._open_sent_s is not None and now_s - self._open_sent_s >= s.contactor_weld_time_s - 1e-9:
                self._raise(Code.ERR_CONTACTOR_WELD, now_s, "contacts still closed after the open command",
                            {"source": "feedback", "since_open_ms": (now_s - self._open_sent_s) * 1e3}, events)
            if emergency:
                command = ContactorCommand.EMERGENCY_OPEN
            elif abs(dev.actual_power_w) <= s.contactor_open_below_w and self.guard.may_open(now_s):
                command = ContactorCommand.OPEN
            if command is not ContactorCommand.NONE and self._open_sent_s is None:
                self._open_sent_s = now_s
        # While the contactors are open and may not close yet, the setpoint must stay 0, or
        # the inverter would close them itself to follow it.
        if not closed and not want_open and dev.vehicle_connected and self.guard.may_close(now_s):
            dev = attrs.evolve(dev, contactor_closed=True)
        return command, dev
