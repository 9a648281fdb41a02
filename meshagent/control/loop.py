"""The control loop's trio shell: poll the meter every 10 ms, decide, actuate, log.

Theory of operation
-------------------
``ControlLoop.run`` runs two tasks on one grid of deadlines on the trio clock
(``start + k x meter_period``): a late wake-up never shifts the later ones, and a task that
overruns a whole period skips the deadlines it missed instead of bursting to catch up.

* The meter's task (``meter.py``) reads the site meter every period, judges each sample
  as it arrives and raises ``ERR_SENSOR_LOST`` at the sensor deadline on its own schedule,
  so no device read can delay it; the raise writes 0 W at once (``Actuator.zero``).
* The cycle, each period:

  1. takes the meter read of its period (waiting for it at most half a period), reads the
     inverter every cycle and the vehicle link, thermal sensor and tamper switch every
     ``device_period`` (over Modbus each read is a round trip); a device that faults is
     replaced by its last good reading while that is younger than its period plus
     ``sensor_timeout``; after that the cycle has no device state and the setpoint is 0;
  2. calls ``ControlLogic.step`` (the sans-IO core: every decision is there);
  3. has the ``Actuator`` (``actuate.py``) carry out the decision;
  4. hands spikes to ``on_spike`` (the allocation), writes fault events to
     ``errors.jsonl``, and every ``telemetry_period`` one line to ``telemetry.jsonl``;
  5. records the cycle time (real time, ``perf_counter``) and the wake-up jitter (trio
     clock), and reports ``LATENCY_OVER_BUDGET`` when the cycle took longer than
     ``cycle_budget``.

Under ``trio.testing.MockClock`` the same loop runs in virtual time against the simulated
devices; the jitter is then 0 and the cycle time is the real CPU time of a cycle.

Operator commands (``clearing.py``) reach it in process (``request_clear_faults``), through
the API, or as the file ``clear-faults.request`` in the state directory, which the loop looks
for every telemetry period. Either way the cycle first asks the inverter to clear its own
latched faults (the tamper latch lives there), then the logic's.

Adapter notes (``hardware.interfaces``): the inverter closes its contactors itself when it
has power to deliver and opens them after an idle delay at zero power; the loop overrides
that with ``Inverter.open_contactors`` / ``close_contactors``. ``ERR_TAMPER`` opens them
at once with ``open_contactors(emergency=True)``, under load if need be (the inverter counts
the heavy wear), in the cycle whose reads show the tamper: the inverter's status carries its
tamper latch and is read every cycle, so that is within one period (10 ms) of the enclosure
opening. Safe mode (grid sync lost, welded contacts) holds 0 W, and once the AC power is at
most ``contactor_open_below`` and the ``ContactorGuard``'s dwell allows, opens them with a
normal ``open_contactors()`` at zero current. Contactors held open are released with
``close_contactors()`` only when the logic lets a nonzero setpoint through, which it does
only when the guard allows a closing (dwell, cycles per hour); until then the setpoint
stays 0 so the inverter does not close them itself either. No command is sent to contacts
the inverter reports welded. ``contactor_open_below`` is AC power: the inverter reports no
DC current.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from hardware.interfaces import (
    ContactorResult,
    ContactorState,
    DeviceFault,
    Inverter,
    InverterStatus,
    SiteMeter,
    TamperReading,
    TamperSwitch,
    ThermalReading,
    ThermalSensor,
    VehicleLink,
    VehicleStatus,
)
from meshagent.control import journal
from meshagent.control.actuate import Actuator
from meshagent.control.clearing import ClearRequests, clear_inverter
from meshagent.control.codes import Action, Code, FaultEvent
from meshagent.control.detect import Phase, Spike
from meshagent.control.limits import DeviceState
from meshagent.control.logic import ControlLogic, Decision, Inputs, MeterSample
from meshagent.control.meter import CYCLE_WAIT_PERIODS, MeterTask, next_on_grid
from protocol.stats import percentile

log = logging.getLogger("meshagent.control")

SAMPLES_KEPT = 20_000  # cycle-time and jitter samples kept for the percentiles


@attrs.frozen
class Devices:
    """One charger's devices and its site's meter (``hardware.interfaces``)."""

    meter: SiteMeter
    inverter: Inverter
    vehicle: VehicleLink
    thermal: ThermalSensor
    tamper: TamperSwitch

    @classmethod
    def simulated(cls, site: Any, number: int = 1) -> Devices:
        """Charger ``number`` of a ``hardware.simulated.SimulatedSite`` and the site's meter, in
        process (tests, benchmarks; the agent reaches sim:// devices through hardware.connect)."""
        from hardware.simulated import (
            SimInverter,
            SimSiteMeter,
            SimTamperSwitch,
            SimThermalSensor,
            SimVehicleLink,
        )

        ch, base = site.charger(number), f"sim://{site.name}"
        return cls(SimSiteMeter(f"{base}/meter", site=site), SimInverter(f"{base}/inverter", charger=ch),
                   SimVehicleLink(f"{base}/vehicle", charger=ch), SimThermalSensor(f"{base}/thermal", charger=ch),
                   SimTamperSwitch(f"{base}/tamper", charger=ch))


def device_state(inv: InverterStatus, vehicle: VehicleStatus, thermal: ThermalReading,
                 tamper: TamperReading) -> DeviceState:
    """The clamp's view of the devices (the one place that knows both shapes).

    Tamper is the switch's reading or the inverter's own tamper latch: the inverter is read
    every cycle, the switch every ``device_period``, so an opened enclosure is seen within
    one cycle when the inverter reports it.
    """
    p = vehicle.parameters
    faults = set(inv.faults)
    return DeviceState(
        inverter_max_charge_w=inv.limits.max_charge_w,
        inverter_max_discharge_w=inv.limits.max_discharge_w,
        ev_max_charge_w=p.ev_maximum_charge_power_w if p else 0.0,
        ev_max_discharge_w=p.ev_maximum_discharge_power_w if p else 0.0,
        soc_pct=p.present_soc_pct if p else 0.0,
        min_soc_pct=p.minimum_soc_pct if p else 0.0,
        target_soc_pct=p.target_soc_pct if p else 0.0,
        bms_status=int(vehicle.bms_status),
        temperature_max_c=thermal.temperature_c,
        temperature_min_c=thermal.temperature_c,
        contactor_closed=inv.contactor is not ContactorState.OPEN,
        contactor_welded=inv.contactor is ContactorState.WELDED or "contactor_welded" in faults,
        inverter_fault=bool(faults - {"tamper", "contactor_welded"}),
        actual_power_w=inv.actual_power_w,
        vehicle_connected=vehicle.connected,
        tamper=tamper.open or tamper.latched or "tamper" in faults,
        inverter_rated_w=inv.limits.rated_w,
    )


@attrs.frozen
class LoopStatistics:
    cycles: int
    missed_periods: int
    cycle_p50_ms: float
    cycle_p99_ms: float
    cycle_max_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    over_budget: int
    detect_ms: tuple[float, ...]  # per spike: first sample showing it -> handed on (real time)
    detect_processing_ms: tuple[float, ...]  # per spike: the deciding sample's read -> handed on
    spikes_handed: int
    meter_faults: int
    device_faults: int
    setpoint_writes: int
    telemetry_lines: int
    error_lines: int
    last_device_fault: str
    contactor_commands: int = 0  # open/close commands the inverter carried out
    emergency_openings: int = 0  # of which emergency openings under load (heavy wear)
    meter_missed_periods: int = 0  # periods the meter's own task could not read on time
    sensor_zero_writes: int = 0  # 0 W written at once on ERR_SENSOR_LOST, outside the cycle


def _w(watts: float) -> float:
    """Watts to the metering resolution, 0.1 W ("+ 0.0": never a negative zero)."""
    return round(watts, 1) + 0.0


def _pct(samples: collections.deque[float], q: float) -> float:
    return percentile(samples, q, default=0.0)


@attrs.define
class _Held:
    """The last good reading of a device and when it was taken (loop clock)."""

    value: Any = None
    at_s: float = -math.inf


class ControlLoop:
    def __init__(
        self,
        section: Any,
        devices: Devices,
        *,
        node_id: str = "node",
        scope_id: str = "site",
        state_dir: Path | None = None,
        on_spike: Callable[[Spike], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        perf_clock: Callable[[], float] = time.perf_counter,
        offer_hold: Callable[[], str] | None = None,
    ) -> None:
        """``offer_hold`` is asked every cycle why the vehicle must stay out of the offer
        although plugged in ("" when it need not): the billing session's answer while a
        refused idToken stops energy transfer. The loop only reads it (one direction)."""
        self.section = section
        self._offer_hold = offer_hold
        self._nameplate_said = ""
        self.devices = devices
        self.node_id = node_id
        self.state_dir = state_dir
        self.on_spike = on_spike
        self.logic = ControlLogic(section, node_id=node_id, scope_id=scope_id)
        self._wall = wall_clock
        self._perf = perf_clock
        self.share_w = 0.0
        self.covered_w: float | None = None
        self.base_setpoint_w = 0.0
        self.last_decision: Decision | None = None
        self.last_status: InverterStatus | None = None
        self.last_vehicle: VehicleStatus | None = None
        self.last_device_state: DeviceState | None = None  # None: a device could not be read
        self._telemetry: journal.RotatingJsonLines | None = None
        self._errors: journal.ErrorLog | None = None
        self._held = {name: _Held() for name in ("inverter", "vehicle", "thermal", "tamper")}
        self.meter = MeterTask(devices.meter, self.logic, section.meter_period_s, on_events=self._meter_events,
                               on_fault=self._meter_fault, perf_clock=perf_clock)
        self.actuator = Actuator(devices.inverter, hold_zero=lambda: bool(self.logic.latched),
                                 on_fault=self._device_fault)
        self.clears = ClearRequests(node_id, state_dir)
        self._nursery: trio.Nursery | None = None
        self._saved_latched: tuple[str, ...] | None = None
        self._sample_perf: collections.OrderedDict[float, float] = collections.OrderedDict()
        self._cycle_s: collections.deque[float] = collections.deque(maxlen=SAMPLES_KEPT)
        self._jitter_s: collections.deque[float] = collections.deque(maxlen=SAMPLES_KEPT)
        self._detect_ms: list[float] = []
        self._detect_proc_ms: list[float] = []
        self._cycles = self._missed = self._over_budget = 0
        self._spikes = self._meter_faults = self._device_faults = 0
        self._last_device_fault = ""
        self.events: list[FaultEvent] = []  # every fault event, also in errors.jsonl (tests read it)

    # --- read by the rest of the agent and the tests ---------------------------------------

    @property
    def last_meter(self) -> MeterSample | None:
        """The meter's newest answer, fresh or not (the allocation reads the measured loading)."""
        return self.meter.last_reading

    @property
    def last_contactor_result(self) -> ContactorResult | None:
        return self.actuator.last_contactor_result

    @property
    def last_clear(self) -> dict[str, Any] | None:
        """The answer to the last clear-faults (``ClearRequests.answer``'s shape)."""
        return self.clears.last

    @property
    def clear_answers(self) -> collections.OrderedDict[str, dict[str, Any]]:
        return self.clears.answers

    @property
    def pending_clear_ids(self) -> list[str]:
        return self.clears.pending_ids

    # --- inputs from the rest of the agent -------------------------------------------------

    def set_share(self, share_w: float, covered_w: float | None = None) -> None:
        """The allocation's share for this charger (W of discharge) and, if known, what the
        mesh applies in this scope in all (default: what this charger applies, measured)."""
        for name, value in (("share_w", share_w), ("covered_w", covered_w)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.share_w, self.covered_w = float(share_w), covered_w

    def request_clear_faults(self, request_id: str | None = None) -> None:
        """Operator's clear-faults, in process; carried out at the next cycle. Idempotent.

        With ``request_id``, the answer is kept in ``clear_answers[request_id]`` (the API's).
        """
        self.clears.request(request_id)

    async def clear_faults(self) -> dict[str, Any]:
        """Clear-faults and wait for the answer (the next cycle): ``ClearRequests.answer``'s shape.

        Wrap in ``trio.fail_after``: a loop that is not running never answers.
        """
        return await self.clears.wait_answer()

    def report_latency(self, what: str, elapsed_s: float, budget_s: float) -> None:
        """Any round trip with a budget (allocation, gossip) reports overruns here."""
        event = self.logic.report_latency(what, elapsed_s, budget_s, trio.current_time())
        if event is not None:
            self._log(event)

    def statistics(self) -> LoopStatistics:
        a, m = self.actuator, self.meter.statistics()
        return LoopStatistics(
            cycles=self._cycles, missed_periods=self._missed,
            cycle_p50_ms=_pct(self._cycle_s, 0.50) * 1e3, cycle_p99_ms=_pct(self._cycle_s, 0.99) * 1e3,
            cycle_max_ms=max(self._cycle_s, default=0.0) * 1e3,
            jitter_p99_ms=_pct(self._jitter_s, 0.99) * 1e3, jitter_max_ms=max(self._jitter_s, default=0.0) * 1e3,
            over_budget=self._over_budget, detect_ms=tuple(self._detect_ms),
            detect_processing_ms=tuple(self._detect_proc_ms), spikes_handed=self._spikes,
            meter_faults=self._meter_faults, device_faults=self._device_faults, setpoint_writes=a.writes,
            telemetry_lines=self._telemetry.lines if self._telemetry else 0,
            error_lines=self._errors.lines if self._errors else 0, last_device_fault=self._last_device_fault,
            contactor_commands=a.contactor_commands, emergency_openings=a.emergency_openings,
            meter_missed_periods=m.missed_periods, sensor_zero_writes=a.zero_writes,
        )

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, *, cycles: int | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (or for ``cycles`` cycles). Closes its files on the way out."""
        s = self.section
        if self.state_dir is not None:
            self._telemetry = journal.RotatingJsonLines(
                self.state_dir / journal.TELEMETRY_FILE, max_bytes=s.telemetry_max_size,
                max_age_s=s.telemetry_max_age_s, keep=s.telemetry_keep)
            self._errors = journal.ErrorLog(self.state_dir / journal.ERRORS_FILE, self.node_id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_sighup)
                await self._run(cycles, task_status)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for f in (self._telemetry, self._errors):
                if f is not None:
                    f.close()

    def reopen_logs(self) -> None:
        """Close and reopen telemetry.jsonl and errors.jsonl (SIGHUP: after a logrotate)."""
        if self._telemetry is not None:
            self._telemetry.reopen()
        if self._errors is not None:
            self._errors.close()
            self._errors = journal.ErrorLog(self._errors.path, self.node_id)

    async def _watch_sighup(self) -> None:
        import signal

        try:
            receiver = trio.open_signal_receiver(signal.SIGHUP)
        except (ValueError, RuntimeError):  # not the main thread: no signals here
            return
        with receiver as signals:
            async for _ in signals:
                self.reopen_logs()

    async def _run(self, cycles: int | None, task_status: Any) -> None:
        s = self.section
        period = s.meter_period_s
        telemetry_every = max(1, round(s.telemetry_period_s / period))
        deadline = trio.current_time()
        if self.state_dir is not None:
            for event in self.logic.restore_latched(journal.load_latched(self.state_dir), deadline):
                self._log(event)
        assert self._nursery is not None
        await self._nursery.start(self.meter.run, deadline)
        task_status.started()
        k = 0
        while cycles is None or k < cycles:
            await trio.sleep_until(deadline)
            self._jitter_s.append(max(0.0, trio.current_time() - deadline))
            # The logic runs on the sampling grid (the deadline), not on the jittered wake
            # time: a 20 ms minimum duration is then exactly 3 samples, and the PID's dt
            # exactly one period, however late the scheduler woke us.
            if k % telemetry_every == 0:
                self.clears.poll_file()
            await self._cycle(deadline)
            if k % telemetry_every == 0:
                self._write_telemetry(deadline)
                for event in self.logic.latency_summaries(deadline):
                    self._log(event)
            k += 1
            deadline, skipped = next_on_grid(deadline, period, trio.current_time())
            self._missed += skipped

    async def _cycle(self, now: float) -> None:
        t0 = self._perf()
        # the meter's read of this period, judged by its own task (a meter that does not
        # answer in time leaves this cycle without a sample, as a fault would)
        if not self.meter.has_read_for(now):  # (already here: no cancel scope to open)
            with trio.move_on_at(now + CYCLE_WAIT_PERIODS * self.section.meter_period_s):
                await self.meter.wait_for(now)
        t_took = self._perf()
        read = self.meter.take()
        meter = read.sample if read is not None else None
        read_at = read.read_at_s if read is not None else None
        t_meter = read.read_perf_s if read is not None and meter is not None else self._perf()
        if meter is not None:
            self._sample_perf[now] = t_meter
            while len(self._sample_perf) > 1000:
                self._sample_perf.popitem(last=False)

        clearing: dict[str, Any] | None = None
        if self.clears.take():
            # the inverter's own latches first (the tamper latch lives there), so this
            # cycle's reads already show what its clear did
            clearing = await clear_inverter(self.devices.inverter)
            for name in ("inverter", "tamper"):  # read them again, after its clear
                self._held[name].at_s = -math.inf
            self.logic.clear_faults(now)
        dev = await self._read_devices(now)
        hold = self._offer_hold() if self._offer_hold is not None else ""
        decision = self.logic.step(
            Inputs(meter, dev, self.share_w, self.covered_w, self.base_setpoint_w, read_at, hold, meter_judged=True),
            now,
        )
        self.last_decision = decision
        if self.logic.nameplate_source != self._nameplate_said:
            self._say_nameplate()
        for spike in decision.spikes:
            self._hand_on(spike, t_meter)
        opened = await self.actuator.apply(decision, self.last_status, now)
        for event in decision.events:
            if opened is not None and event.code is Code.ERR_TAMPER and event.action is Action.RAISED:
                event = attrs.evolve(event, figures={**event.figures, **opened})
            if clearing and event.action in (Action.CLEARED, Action.CLEAR_REFUSED):
                event = attrs.evolve(event, figures={**event.figures, **clearing})
            self._log(event)
        if clearing is not None:
            self.clears.answer(decision, clearing, now)
        self._save_latched()
        # the period's work, as when the cycle read the meter itself: the meter's read, then
        # the cycle's own part (waiting for a read that did not come counts as the read)
        if read is not None and read.deadline_s >= now - 1e-9:
            meter_s = max(0.0, read.read_perf_s - read.start_perf_s)
        else:
            meter_s = t_took - t0
        elapsed = meter_s + self._perf() - t_took
        self._cycle_s.append(elapsed)
        self._cycles += 1
        if elapsed > self.section.cycle_budget_s:
            self._over_budget += 1
            report = self.logic.report_latency("control_cycle", elapsed, self.section.cycle_budget_s, now)
            if report is not None:
                self._log(report)

    def _meter_events(self, events: list[FaultEvent]) -> None:
        """The meter's task raised (ERR_SENSOR_LOST): log it, save the latch, 0 W now."""
        for event in events:
            self._log(event)
        self._save_latched()
        if Code.ERR_SENSOR_LOST in self.logic.latched and self._nursery is not None:
            self._nursery.start_soon(self.actuator.zero, self.last_status, trio.current_time())

    def _meter_fault(self, fault: DeviceFault) -> None:
        self._meter_faults += 1
        self._last_device_fault = str(fault)

    async def _read(self, name: str, read: Callable[[], Any], now: float, every_s: float) -> Any:
        """Read the device if its turn has come; its last good value while young enough."""
        held = self._held[name]
        if now - held.at_s >= every_s - 1e-9:
            try:
                held.value, held.at_s = await read(), now
            except DeviceFault as fault:
                self._device_faults += 1
                self._last_device_fault = str(fault)
        if now - held.at_s > every_s + self.section.sensor_timeout_s:
            return None
        return held.value

    async def _read_devices(self, now: float) -> DeviceState | None:
        d, slow_s = self.devices, self.section.device_period_s
        inv = await self._read("inverter", d.inverter.status, now, 0.0)
        veh = await self._read("vehicle", d.vehicle.read, now, slow_s)
        th = await self._read("thermal", d.thermal.read, now, slow_s)
        ta = await self._read("tamper", d.tamper.read, now, slow_s)
        if inv is not None:
            self.last_status = inv
        if veh is not None:
            self.last_vehicle = veh
        if inv is None or veh is None or th is None or ta is None:
            self.last_device_state = None
            return None
        self.last_device_state = device_state(inv, veh, th, ta)
        return self.last_device_state

    def _say_nameplate(self) -> None:
        """Once per source: what the droop's base is and where it came from."""
        lg = self.logic
        self._nameplate_said = lg.nameplate_source
        if lg.nameplate_source == "learned":
            log.warning("%s: the inverter reports no nameplate rating (SunSpec 702 WMaxRtg) and [control] "
                        "inverter_nameplate is not set: the 1547 droop's base is the largest limit seen "
                        "(%.0f W now), too small while a vehicle or a derating caps it; set inverter_nameplate",
                        self.node_id, lg.nameplate_discharge_w)
        elif lg.nameplate_source:
            log.info("%s: 1547 droop base %.0f W (%s)", self.node_id, lg.nameplate_discharge_w,
                     "[control] inverter_nameplate" if lg.nameplate_source == "config" else "the inverter's "
                     "rating, SunSpec 702 WMaxRtg")

    def _device_fault(self, fault: DeviceFault) -> None:
        self._device_faults += 1
        self._last_device_fault = str(fault)

    # --- outputs ---------------------------------------------------------------------------

    def _hand_on(self, spike: Spike, t_meter: float) -> None:
        if self.on_spike is not None:
            self.on_spike(spike)
        handed = self._perf()
        self._spikes += 1
        if spike.phase is Phase.START:
            first = self._sample_perf.get(spike.first_sample_s)
            if first is not None:
                self._detect_ms.append((handed - first) * 1e3)
            self._detect_proc_ms.append((handed - t_meter) * 1e3)

    def _log(self, event: FaultEvent) -> None:
        self.events.append(event)
        if self._errors is not None:
            self._errors.event(event, self._wall())

    def _save_latched(self) -> None:
        if self.state_dir is None:
            return
        latched = tuple(sorted(str(c) for c in self.logic.latched))
        if latched != self._saved_latched:
            journal.save_latched(self.state_dir, latched)
            self._saved_latched = latched

    def _write_telemetry(self, now: float) -> None:
        if self._telemetry is None:
            return
        d, m = self.last_decision, self.logic.last_meter
        st = self.last_status
        held_vehicle = self._held["vehicle"].value
        p = held_vehicle.parameters if held_vehicle is not None else None
        spike = self.logic.detector.active
        # every value to its resolution (0.1 W, 1 mHz, 0.001 %): never -1554.000000000001
        self._telemetry.write({
            "wall": round(self._wall(), 3),
            "t_s": round(now, 3),
            "node": self.node_id,
            "load_w": _w(m.load_w) if m else None,
            "frequency_hz": round(m.frequency_hz, 3) if m else None,
            "setpoint_w": _w(d.setpoint_w) if d else None,
            "actual_w": _w(st.actual_power_w) if st else None,
            "soc_pct": round(p.present_soc_pct, 3) if p else None,
            "share_w": _w(self.share_w),
            "response_w": _w(d.frequency_response_w) if d else None,
            "binding": d.binding if d else None,
            "offer": d.offer_available if d else False,
            "spike": {"id": spike.spike_id, "deficit_w": round(spike.deficit_w, 1)} if spike else None,
            "faults": list(d.faults) if d else [],
        }, now)
