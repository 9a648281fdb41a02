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
   windows and the return-to-service timer. A meter silent or frozen is caught within
   ``sensor_timeout`` (100 ms): once the newest sample is ``sensor_timeout - 2 x meter_period``
   old, the latched ``ERR_SENSOR_LOST`` is raised; until then the last response is held.
   The judgement is ``MeterJudge``'s (``meterjudge.py``); who asks it: ``step`` itself
   when driven from a table (``Inputs.meter_judged`` false);
   in the loop, the meter's own task (``meter.py``), through ``observe_meter`` after each
   read and ``judge_silence`` at ``sensor_deadline_s``, so that no device read of the cycle
   can delay the raise.
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
    FastFrequencyResponse,
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
from meshagent.control.meterjudge import MeterJudge
from meshagent.control.meterjudge import (
    MeterSample as MeterSample,  # importable from here, as before the split
)

LATENCY_REPORT_INTERVAL_S = 60.0  # a repeating LATENCY_OVER_BUDGET: the first, then a count per minute
RESPONSE_SEEN_PU = 0.01  # a frequency response above this (of nameplate) counts as answering an event
RESPONSE_RELEASE_MARGIN_S = 1.0  # the other chargers' droop may let go a little after this one's

# What an operator must do, or wait for, to clear each code (the clear-faults answer says it).
CLEAR_NEEDS: dict[Code, str] = {
    Code.ERR_GRID_SYNC_LOST: "frequency inside the return-to-service band for its delay (300 s at 60 Hz), then clear-faults",
    Code.ERR_TAMPER: "enclosure shut (tamper switch closed, inverter latch reset), then clear-faults",
    Code.ERR_SENSOR_LOST: "the site meter answering with fresh samples, then clear-faults",
    Code.ERR_CONTACTOR_WELD: "contactor replaced (no longer reported welded), then clear-faults",
    Code.ERR_THERMAL: "clears by itself: temperature back inside the limits by thermal_hysteresis",
    Code.ERR_BATTERY_LOWER_LIMIT: "clears by itself: SoC above the minimum by soc_hysteresis and BMS status not 0x03",
}


@attrs.frozen
class Inputs:
    meter: MeterSample | None  # None: no valid reading this cycle
    device: DeviceState | None  # None: the devices could not be read this cycle
    share_w: float = 0.0  # discharge the allocation asks of this charger (magnitude)
    covered_w: float | None = None  # discharge the mesh applies in this scope (None: our own)
    base_setpoint_w: float = 0.0  # the charging session's own setpoint (+ charge)
    read_at_s: float | None = None  # the loop's clock when the meter answered (None: ``now``)
    offer_hold: str = ""  # why the vehicle stays out of the offer though plugged in ("": it need not)
    # True: ``meter`` was already judged fresh by ``observe_meter`` (the meter's own task),
    # which is then also the one to raise ERR_SENSOR_LOST; None there means no fresh sample
    meter_judged: bool = False


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
    clear_outcomes: tuple[ClearOutcome, ...] = ()  # the answer to a clear-faults carried out this cycle
    offer_hold: str = ""  # ``Inputs.offer_hold`` when it kept the vehicle out of the offer


@attrs.frozen
class ClearOutcome:
    """What a clear-faults did to one active code."""

    code: str
    cleared: bool
    cause: str  # why it was refused ("" when cleared)
    needs: str  # what the code needs to clear

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "cleared": self.cleared, "cause": self.cause, "needs": self.needs}


@attrs.define
class _Latch:
    raised_at_s: float


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
    ffr: FastFrequencyResponse | None = attrs.field(init=False)
    nameplate_discharge_w: float = 0.0  # the droop's base: config, else the device's rating, else learned
    nameplate_charge_w: float = 0.0
    nameplate_source: str = ""  # "config", "device" (702 WMaxRtg), "learned" (the largest limit seen)
    trips: TripMonitor = attrs.field(init=False)
    rts: ReturnToService = attrs.field(init=False)
    guard: ContactorGuard = attrs.field(init=False)
    latched: dict[Code, _Latch] = attrs.field(factory=dict)
    thermal: ThermalLevel = ThermalLevel.NORMAL
    thermal_peak_c: float = -math.inf  # hottest reading since ERR_THERMAL derating began
    lower_limit: bool = False
    response_pu: float = 0.0
    _response_seen_s: float = -math.inf  # the last cycle whose frequency response was over RESPONSE_SEEN_PU
    last_meter: MeterSample | None = None
    last_decision: Decision | None = None
    _started_s: float | None = None
    meter_judge: MeterJudge = attrs.field(init=False)  # the meter's freshness and silence
    _clear_pending: bool = False
    _open_sent_s: float | None = None
    _contactor_was_closed: bool | None = None
    _latency_last: dict[str, list[Any]] = attrs.field(factory=dict)  # what -> [since, count, worst, budget]
    _cycles: int = 0
    _raised: int = 0

    def __attrs_post_init__(self) -> None:
        s = self.section
        self.profile = s.frequency_profile()
        self.limits = Limits.from_section(s)
        self.detector = SpikeDetector(
            DetectorSettings.from_section(s), scope=s.meter_scope, scope_id=self.scope_id, node_id=self.node_id
        )
        self.droop = DroopResponse(self.profile, s.response_ramp_pu_per_s)
        self.pid = PredictivePid(self.profile)
        self.ffr = FastFrequencyResponse(s.ffr_curve, s.ffr_ramp_pu_per_s) if s.ffr_curve else None
        self.nameplate_discharge_w = self.nameplate_charge_w = s.inverter_nameplate_w
        self.nameplate_source = "config" if s.inverter_nameplate_w else ""
        self.trips = TripMonitor(self.profile)
        self.rts = ReturnToService(self.profile)
        self.guard = ContactorGuard(s.contactor_min_dwell_s, s.contactor_max_cycles_per_hour)
        self.meter_judge = MeterJudge(s, self._sensor_lost)

    # --- operator and shell entry points ---------------------------------------------------

    def clear_faults(self, now_s: float) -> list[FaultEvent]:
        """Operator's clear, carried out by the next ``step`` (``Decision.clear_outcomes``).

        There, each latched code whose release condition holds *that cycle* is cleared; any
        other is refused with its cause (a ``clear_refused`` line) and stays latched: a
        refused clear is not remembered, so it never releases a latch later by itself.
        Idempotent: with nothing latched it changes nothing and logs nothing.
        """
        self._clear_pending = True
        return []

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
        """A cycle or round trip ran over its budget: the first occurrence is logged, the
        repeats only counted (``latency_summaries`` logs the count once a minute)."""
        if elapsed_s <= budget_s:
            return None
        window = self._latency_last.get(what)
        if window is not None:
            window[1] += 1
            window[2] = max(window[2], elapsed_s)
            return None
        self._latency_last[what] = [now_s, 0, 0.0, budget_s]
        return FaultEvent(Code.LATENCY_OVER_BUDGET, Action.REPORTED, now_s,
                          f"{what} took {elapsed_s * 1e3:.2f} ms (budget {budget_s * 1e3:g} ms); "
                          "repeats are counted once a minute",
                          {"what": what, "elapsed_ms": elapsed_s * 1e3, "budget_ms": budget_s * 1e3})

    def latency_summaries(self, now_s: float) -> list[FaultEvent]:
        """Once a minute per source: how many overruns were not logged (none: the source is
        quiet again, and its next overrun is a first occurrence)."""
        out = []
        for what, window in list(self._latency_last.items()):
            since, count, worst, budget = window
            if now_s - since < LATENCY_REPORT_INTERVAL_S - 1e-9:
                continue
            if count == 0:
                del self._latency_last[what]
                continue
            out.append(FaultEvent(Code.LATENCY_OVER_BUDGET, Action.REPORTED, now_s,
                                  f"{what} over budget {count} more times in the last {now_s - since:.0f} s "
                                  f"(worst {worst * 1e3:.2f} ms)",
                                  {"what": what, "repeated": count, "max_elapsed_ms": worst * 1e3,
                                   "budget_ms": budget * 1e3, "window_s": now_s - since}))
            self._latency_last[what] = [now_s, 0, 0.0, budget]
        return out

    # --- the meter's judgement (``MeterJudge``), for the meter's own task -------------------

    @property
    def sensor_raise_after_s(self) -> float:
        """Silence (since the newest valid sample was taken) at which ERR_SENSOR_LOST is raised
        (``MeterJudge.sensor_raise_after_s``)."""
        return self.meter_judge.sensor_raise_after_s

    def sensor_deadline_s(self) -> float:
        """Loop time at which the meter's silence reaches ``sensor_raise_after_s``
        (``inf``: ERR_SENSOR_LOST is latched already, or no read was judged yet)."""
        if Code.ERR_SENSOR_LOST in self.latched:
            return math.inf
        return self.meter_judge.sensor_deadline_s()

    def observe_meter(self, meter: MeterSample | None, read_at_s: float,
                      sent_at_s: float | None = None) -> tuple[bool, list[FaultEvent]]:
        """After each read by the meter's own task: is the sample fresh, and has the silence
        reached the raise point? (``MeterJudge.observe_meter``)."""
        return self.meter_judge.observe_meter(meter, read_at_s, sent_at_s)

    def judge_silence(self, now_s: float, event_at_s: float | None = None) -> list[FaultEvent]:
        """Raise ERR_SENSOR_LOST if the newest valid sample is ``sensor_raise_after_s`` old at
        ``now_s`` (``MeterJudge.judge_silence``)."""
        return self.meter_judge.judge_silence(now_s, event_at_s)

    @property
    def last_sample_at_s(self) -> float | None:
        """When (loop clock) the newest valid meter sample was taken, as judged from its age."""
        return self.meter_judge.last_valid_s

    def _sensor_lost(self, at_s: float, silent_s: float, events: list[FaultEvent]) -> None:
        """The judge's sink: the meter is silent past the raise point."""
        self.rts.reset()
        self._raise(Code.ERR_SENSOR_LOST, at_s,
                    f"no valid meter reading for {silent_s * 1e3:.0f} ms: discharge to 0",
                    {"silent_ms": silent_s * 1e3, "timeout_ms": self.section.sensor_timeout_s * 1e3}, events)

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
            self._started_s = now_s
        judge = self.meter_judge
        if judge.last_valid_s is None:
            judge.last_valid_s = now_s
        share_w = inputs.share_w if math.isfinite(inputs.share_w) else 0.0
        covered_w = inputs.covered_w
        if covered_w is None:  # alone: what this charger has taken off the meter
            dev0 = inputs.device
            covered_w = max(0.0, inputs.base_setpoint_w - dev0.actual_power_w) if dev0 is not None else 0.0

        # 1. meter
        meter = inputs.meter
        # Freshness is judged on the clock at the read, not on the grid deadline: a late
        # cycle must neither make a sample look older nor hide how long the meter is silent.
        clock_s = now_s if inputs.read_at_s is None else max(now_s, inputs.read_at_s)
        if inputs.meter_judged:
            meter_ok = meter is not None
        else:
            meter_ok = meter is not None and judge.fresh(meter, clock_s)
        in_rts_band = False
        pid_state: PidState | None = None
        if meter_ok:
            assert meter is not None
            self.last_meter = meter
            # While the chargers answer a frequency event (this one's droop stands for all of
            # them: same grid, same curve) and for one spike_window after, the load returning
            # as the droop lets go is not a spike: the rise criterion waits; the limit holds.
            if abs(self.response_pu) > RESPONSE_SEEN_PU:
                self._response_seen_s = now_s
            rise_armed = now_s - self._response_seen_s >= s.spike_window_s + RESPONSE_RELEASE_MARGIN_S
            spikes = self.detector.step(meter.load_w, now_s, covered_w, rise_armed=rise_armed)
            f = meter.frequency_hz
            # the predictor is timing only: armed (below the fast-response threshold, or on
            # its way there), it brings the droop forward to the predicted frequency
            pid_state = self.pid.step(f, now_s)
            lead_hz = min(f, pid_state.predicted_hz) if pid_state.armed else None
            droop_pu = self.droop.step(f, now_s, lead_hz=lead_hz)
            self.response_pu = droop_pu
            if self.ffr is not None:
                ffr_pu = self.ffr.step(f, now_s, lead_hz=lead_hz)
                self.response_pu = max(droop_pu, ffr_pu) if droop_pu >= 0 else droop_pu
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
        last_valid_s = judge.last_valid_s
        assert last_valid_s is not None
        silent_s = clock_s - last_valid_s  # since the newest valid sample was taken
        # A frozen meter must be caught within sensor_timeout of the freeze
        # (``sensor_raise_after_s``). A judged meter was judged by its own task, which
        # raises; the cycle only drops the return-to-service band while silent.
        if silent_s >= judge.sensor_raise_after_s - 1e-9:
            in_rts_band = False
            if inputs.meter_judged:
                self.rts.reset()
            else:
                events.extend(judge.judge_silence(clock_s, now_s))

        # 2. interlocks
        dev = inputs.device
        if dev is not None:
            self._interlocks(dev, now_s, events)

        # 3. latches: released only by a clear-faults that finds the condition holding now
        outcomes: list[ClearOutcome] = []
        if self._clear_pending:
            self._clear_pending = False
            # judged by the meter's task, a fresh sample may have come a moment before this
            # cycle took it: the meter answers with fresh samples if the newest is recent
            meter_answers = meter_ok or (inputs.meter_judged and silent_s <= 2 * s.meter_period_s + 1e-9)
            outcomes = self._carry_out_clear(dev, meter_answers, in_rts_band, now_s, events)

        # 4. contactors and setpoint
        emergency = Code.ERR_TAMPER in self.latched
        want_open = bool({Code.ERR_GRID_SYNC_LOST, Code.ERR_TAMPER, Code.ERR_CONTACTOR_WELD} & self.latched.keys())
        safe_mode = want_open
        blocked = bool(self.latched) or dev is None
        thermal_cap = self._thermal_cap(dev)
        command = ContactorCommand.NONE
        if dev is not None:
            command, dev = self._contactors(dev, now_s, want_open, emergency, events)
        if dev is not None and self.nameplate_source != "config":
            self._nameplate(dev)
        # IEEE 1547-2018: the droop is per unit of the nameplate, not of today's limit; the
        # clamp then keeps it inside the limit in force
        rated_w = self.nameplate_discharge_w if self.response_pu >= 0 else self.nameplate_charge_w
        response_w = self.response_pu * rated_w
        request_w = inputs.base_setpoint_w - share_w - response_w
        if dev is None:
            setpoint_w, binding = 0.0, "device_unreadable"
        else:
            clamped = clamp_setpoint(request_w, dev, self.limits, blocked=blocked, thermal_cap=thermal_cap,
                                     no_discharge=self.lower_limit)
            setpoint_w, binding = clamped.setpoint_w, clamped.binding
        offer = (dev is not None and dev.vehicle_connected and not self.lower_limit and not self.latched
                 and self.thermal is not ThermalLevel.STOP and not inputs.offer_hold)
        decision = Decision(
            setpoint_w=setpoint_w, request_w=request_w, binding=binding, safe_mode=safe_mode,
            contactor=command, spikes=tuple(spikes), events=tuple(events), offer_available=offer,
            frequency_response_w=response_w, pid=pid_state, faults=self.active_faults(),
            clear_outcomes=tuple(outcomes), offer_hold=inputs.offer_hold,
        )
        self.last_decision = decision
        return decision

    def _nameplate(self, dev: DeviceState) -> None:
        """The droop's base when ``inverter_nameplate`` is not set: the inverter's own rating
        (SunSpec 702 ``WMaxRtg``, both ways, as 1547 takes per unit of ``P_rated``); only a
        device that gives none leaves the last resort, the largest limit seen, which is too
        small for as long as a vehicle or a derating caps the inverter below its rating."""
        rated = dev.inverter_rated_w
        if isinstance(rated, int | float) and math.isfinite(rated) and rated > 0:
            self.nameplate_discharge_w = self.nameplate_charge_w = float(rated)
            self.nameplate_source = "device"
            return
        if self.nameplate_source == "device":
            return  # a rating once read stays: a read without it says nothing new
        for name in ("discharge", "charge"):
            seen = getattr(dev, f"inverter_max_{name}_w")
            if isinstance(seen, int | float) and math.isfinite(seen) and seen > getattr(self, f"nameplate_{name}_w"):
                setattr(self, f"nameplate_{name}_w", float(seen))
                self.nameplate_source = "learned"

    def _thermal_cap(self, dev: DeviceState | None) -> float:
        """The derating an active ERR_THERMAL holds, with the hysteresis on the power too.

        Stopped: 0 until the code clears. Derating: the curve at the hottest reading since
        it began, handed back only as the temperature falls more than the hysteresis
        (``min(peak, t + hysteresis)``), so power reaches 1 exactly where the code clears.
        """
        if self.thermal is ThermalLevel.STOP:
            return 0.0
        if self.thermal is ThermalLevel.DERATING and dev is not None:
            hi = min(self.thermal_peak_c, dev.temperature_max_c + self.section.thermal_hysteresis_c)
            return thermal_factor(hi, dev.temperature_min_c, self.limits)
        return 1.0

    def _carry_out_clear(self, dev: DeviceState | None, meter_ok: bool, in_rts_band: bool, now_s: float,
                         events: list[FaultEvent]) -> list[ClearOutcome]:
        outcomes: list[ClearOutcome] = []
        for code, latch in sorted(self.latched.items()):
            cause = self._cause(code, dev, meter_ok, in_rts_band, now_s)
            needs = CLEAR_NEEDS.get(code, "")
            if cause:
                outcomes.append(ClearOutcome(str(code), False, cause, needs))
                events.append(FaultEvent(code, Action.CLEAR_REFUSED, now_s, f"clear-faults refused: {cause}",
                                         {"cause": cause, "needs": needs, "raised_at_s": latch.raised_at_s}))
            else:
                del self.latched[code]
                outcomes.append(ClearOutcome(str(code), True, "", needs))
                events.append(FaultEvent(code, Action.CLEARED, now_s, "released: cleared by operator and condition holds",
                                         {"latched_for_s": now_s - latch.raised_at_s}))
        for code, active in ((Code.ERR_THERMAL, self.thermal is not ThermalLevel.NORMAL),
                             (Code.ERR_BATTERY_LOWER_LIMIT, self.lower_limit)):
            if active:
                outcomes.append(ClearOutcome(str(code), False, "not latched: the cause is still present",
                                             CLEAR_NEEDS[code]))
        return outcomes

    def _cause(self, code: Code, dev: DeviceState | None, meter_ok: bool, in_rts_band: bool, now_s: float) -> str:
        """Why ``code`` cannot be released now ("" when it can)."""
        p = self.profile
        if code is Code.ERR_GRID_SYNC_LOST:
            if in_rts_band:
                return ""
            since = self.rts.inside_since_s
            f = self.last_meter.frequency_hz if self.last_meter is not None else math.nan
            if since is None or not meter_ok:
                return (f"frequency {f:.3f} Hz outside the return-to-service band "
                        f"{p.rts_low_hz:g}-{p.rts_high_hz:g} Hz")
            return (f"frequency inside {p.rts_low_hz:g}-{p.rts_high_hz:g} Hz for {now_s - since:.1f} s "
                    f"of {p.rts_delay_s:g} s")
        if code is Code.ERR_SENSOR_LOST:
            return "" if meter_ok else "no fresh meter sample"
        if dev is None:
            return "devices could not be read"
        if code is Code.ERR_TAMPER:
            return "enclosure still open (or the inverter's tamper latch still set)" if dev.tamper else ""
        if code is Code.ERR_CONTACTOR_WELD:
            return "contacts still reported welded" if dev.contactor_welded else ""
        return ""

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
        if level is ThermalLevel.DERATING:
            # leaving a stop, the curve starts from the stop; entering from normal, from now
            start = s.thermal_stop_c if self.thermal is ThermalLevel.STOP else hi
            if self.thermal is not ThermalLevel.DERATING:
                self.thermal_peak_c = start
            self.thermal_peak_c = max(self.thermal_peak_c, hi)
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
