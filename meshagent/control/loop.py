"""The control loop's trio shell: poll the meter every 10 ms, decide, actuate, log.

Theory of operation
-------------------
``ControlLoop.run`` wakes on a fixed grid of deadlines on the trio clock
(``start + k x meter_period``), so a late wake-up never shifts the later ones; a cycle that
overruns a whole period skips the deadlines it missed instead of bursting to catch up. Each
cycle:

1. reads the site meter and the inverter every cycle (the sample belongs to the cycle's
   deadline on the grid), the vehicle link, thermal sensor and tamper switch every
   ``device_period`` (over Modbus each read is a round trip); a device that faults is
   replaced by its last good reading while that is younger than its period plus
   ``sensor_timeout``; after that the cycle has no device state and the setpoint is 0;
2. calls ``ControlLogic.step`` (the sans-IO core: every decision is there);
3. carries out the decision: an emergency opening of the contactors first, then safe mode
   on the inverter when asked (it refuses setpoints there) and a normal opening at zero
   current, otherwise ``set_power`` when the setpoint changed or once a second to re-assert
   it (releasing contactors held open first);
4. hands spikes to ``on_spike`` (the allocation; until it exists, tests read them), writes
   fault events to ``errors.jsonl``, and every ``telemetry_period`` one line to
   ``telemetry.jsonl``;
5. records the cycle time (real time, ``perf_counter``) and the wake-up jitter (trio clock),
   and reports ``LATENCY_OVER_BUDGET`` when the cycle took longer than ``cycle_budget``.

Under ``trio.testing.MockClock`` the same loop runs in virtual time against the simulated
devices; the jitter is then 0 and the cycle time is the real CPU time of a cycle.

Operator commands reach it two ways: ``request_clear_faults()`` in process, or the file
``clear-faults.request`` in the state directory (``journal.request_clear``), which the loop
looks for every telemetry period. Either way it first asks the inverter to clear its own
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
    InverterState,
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
from meshagent.control.codes import Action, Code, FaultEvent
from meshagent.control.detect import Phase, Spike
from meshagent.control.limits import DeviceState
from meshagent.control.logic import ContactorCommand, ControlLogic, Decision, Inputs, MeterSample
from protocol.stats import percentile

log = logging.getLogger("meshagent.control")

SETPOINT_REFRESH_S = 1.0  # re-send an unchanged setpoint this often (a restarted inverter forgets)
SAMPLES_KEPT = 20_000  # cycle-time and jitter samples kept for the percentiles
CLEAR_ANSWERS_KEPT = 32  # answers to API clear-faults requests kept for their GET


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
        self.last_meter: MeterSample | None = None  # the allocation reads the measured loading
        self.last_status: InverterStatus | None = None
        self.last_vehicle: VehicleStatus | None = None
        self.last_device_state: DeviceState | None = None  # None: a device could not be read
        self._telemetry: journal.RotatingJsonLines | None = None
        self._errors: journal.ErrorLog | None = None
        self._held = {name: _Held() for name in ("inverter", "vehicle", "thermal", "tamper")}
        self._clear_requested = False
        self._clear_request_id: str | None = None  # of a file request, echoed in the answer file
        self.pending_clear_ids: list[str] = []  # API requests waiting for the next cycle
        self.clear_answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._clear_done = trio.Event()
        self.last_clear: dict[str, Any] | None = None  # the answer to the last clear-faults
        self._saved_latched: tuple[str, ...] | None = None
        self._last_written_w: float | None = None
        self._last_write_s = -math.inf
        self._sample_perf: collections.OrderedDict[float, float] = collections.OrderedDict()
        self._cycle_s: collections.deque[float] = collections.deque(maxlen=SAMPLES_KEPT)
        self._jitter_s: collections.deque[float] = collections.deque(maxlen=SAMPLES_KEPT)
        self._detect_ms: list[float] = []
        self._detect_proc_ms: list[float] = []
        self._cycles = self._missed = self._over_budget = 0
        self._spikes = self._meter_faults = self._device_faults = self._writes = 0
        self._last_device_fault = ""
        self._contactor_commands = self._emergency_openings = 0
        self.last_contactor_result: ContactorResult | None = None
        self.events: list[FaultEvent] = []  # every fault event, also in errors.jsonl (tests read it)

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
        self._clear_requested = True
        if request_id is not None:
            self.pending_clear_ids.append(request_id)

    async def clear_faults(self) -> dict[str, Any]:
        """Clear-faults and wait for the answer (the next cycle): ``_answer_clear``'s shape.

        Wrap in ``trio.fail_after``: a loop that is not running never answers.
        """
        self._clear_requested = True
        done = self._clear_done
        await done.wait()
        assert self.last_clear is not None
        return self.last_clear

    def report_latency(self, what: str, elapsed_s: float, budget_s: float) -> None:
        """Any round trip with a budget (allocation, gossip) reports overruns here."""
        event = self.logic.report_latency(what, elapsed_s, budget_s, trio.current_time())
        if event is not None:
            self._log(event)

    def statistics(self) -> LoopStatistics:
        return LoopStatistics(
            cycles=self._cycles, missed_periods=self._missed,
            cycle_p50_ms=_pct(self._cycle_s, 0.50) * 1e3, cycle_p99_ms=_pct(self._cycle_s, 0.99) * 1e3,
            cycle_max_ms=max(self._cycle_s, default=0.0) * 1e3,
            jitter_p99_ms=_pct(self._jitter_s, 0.99) * 1e3, jitter_max_ms=max(self._jitter_s, default=0.0) * 1e3,
            over_budget=self._over_budget, detect_ms=tuple(self._detect_ms),
            detect_processing_ms=tuple(self._detect_proc_ms), spikes_handed=self._spikes,
            meter_faults=self._meter_faults, device_faults=self._device_faults, setpoint_writes=self._writes,
            telemetry_lines=self._telemetry.lines if self._telemetry else 0,
            error_lines=self._errors.lines if self._errors else 0, last_device_fault=self._last_device_fault,
            contactor_commands=self._contactor_commands, emergency_openings=self._emergency_openings,
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
                nursery.start_soon(self._watch_sighup)
                await self._run(cycles, task_status)
                nursery.cancel_scope.cancel()
        finally:
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
        task_status.started()
        k = 0
        while cycles is None or k < cycles:
            await trio.sleep_until(deadline)
            self._jitter_s.append(max(0.0, trio.current_time() - deadline))
            # The logic runs on the sampling grid (the deadline), not on the jittered wake
            # time: a 20 ms minimum duration is then exactly 3 samples, and the PID's dt
            # exactly one period, however late the scheduler woke us.
            if k % telemetry_every == 0:
                self._poll_clear_request()
            await self._cycle(deadline)
            if k % telemetry_every == 0:
                self._write_telemetry(deadline)
                for event in self.logic.latency_summaries(deadline):
                    self._log(event)
            k += 1
            deadline += period
            late = trio.current_time() - deadline
            if late > 0:
                skipped = math.ceil(late / period)
                self._missed += skipped
                deadline += skipped * period

    async def _cycle(self, now: float) -> None:
        t0 = self._perf()
        meter: MeterSample | None = None
        try:
            r = await self.devices.meter.read()
            meter = MeterSample(r.active_power_w, r.frequency_hz, r.taken_at_s)
            self.last_meter = meter
        except DeviceFault as fault:
            self._meter_faults += 1
            self._last_device_fault = str(fault)
        t_meter = self._perf()
        read_at = trio.current_time()
        self._sample_perf[now] = t_meter
        while len(self._sample_perf) > 1000:
            self._sample_perf.popitem(last=False)

        clearing: dict[str, Any] | None = None
        if self._clear_requested:
            # the inverter's own latches first (the tamper latch lives there), so this
            # cycle's reads already show what its clear did
            self._clear_requested = False
            clearing = await self._clear_inverter()
            self.logic.clear_faults(now)
        dev = await self._read_devices(now)
        hold = self._offer_hold() if self._offer_hold is not None else ""
        decision = self.logic.step(
            Inputs(meter, dev, self.share_w, self.covered_w, self.base_setpoint_w, read_at, hold), now
        )
        self.last_decision = decision
        if self.logic.nameplate_source != self._nameplate_said:
            self._say_nameplate()
        for spike in decision.spikes:
            self._hand_on(spike, t_meter)
        opened = await self._actuate(decision, now)
        for event in decision.events:
            if opened is not None and event.code is Code.ERR_TAMPER and event.action is Action.RAISED:
                event = attrs.evolve(event, figures={**event.figures, **opened})
            if clearing and event.action in (Action.CLEARED, Action.CLEAR_REFUSED):
                event = attrs.evolve(event, figures={**event.figures, **clearing})
            self._log(event)
        if clearing is not None:
            self._answer_clear(decision, clearing, now)
        self._save_latched()
        elapsed = self._perf() - t0
        self._cycle_s.append(elapsed)
        self._cycles += 1
        if elapsed > self.section.cycle_budget_s:
            self._over_budget += 1
            report = self.logic.report_latency("control_cycle", elapsed, self.section.cycle_budget_s, now)
            if report is not None:
                self._log(report)

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

    async def _clear_inverter(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        try:
            result = await self.devices.inverter.clear_faults()
            figures["inverter_cleared"] = list(result.cleared)
        except DeviceFault as fault:
            figures["inverter_refused"] = str(fault)
        for name in ("inverter", "tamper"):  # read them again, after its clear
            self._held[name].at_s = -math.inf
        return figures

    def _answer_clear(self, decision: Decision, inverter: dict[str, Any], now: float) -> None:
        """The answer to a clear-faults: each active code cleared, or refused with its cause.

        What the inverter did rides on the cleared / clear_refused lines; with nothing of
        ours active a clear logs nothing (clear-faults is idempotent).
        """
        outcomes = [o.as_json() for o in decision.clear_outcomes]
        self.last_clear = {
            "node": self.node_id, "t_s": round(now, 3), "codes": outcomes, **inverter,
            "still_active": list(decision.faults), "ok": all(o["cleared"] for o in outcomes),
        }
        if self.state_dir is not None and self._clear_request_id is not None:
            journal.write_clear_answer(self.state_dir, {"id": self._clear_request_id, **self.last_clear})
        self._clear_request_id = None
        for rid in self.pending_clear_ids:
            self.clear_answers[rid] = self.last_clear
        self.pending_clear_ids.clear()
        while len(self.clear_answers) > CLEAR_ANSWERS_KEPT:
            self.clear_answers.popitem(last=False)
        done, self._clear_done = self._clear_done, trio.Event()
        done.set()

    async def _actuate(self, decision: Decision, now: float) -> dict[str, Any] | None:
        """Carry out the decision; returns the figures of an emergency opening it made."""
        inv = self.devices.inverter
        status = self.last_status
        opened: dict[str, Any] | None = None
        welded = status is not None and status.contactor is ContactorState.WELDED
        if decision.contactor is ContactorCommand.EMERGENCY_OPEN and not welded:
            # before anything else, and on its own: a failure here must not keep safe mode off
            try:
                result = self._record(await inv.open_contactors(emergency=True))
                opened = {"contactor": result.contactor.value, "under_load": result.under_load,
                          "broken_power_w": result.broken_power_w}
            except DeviceFault as fault:
                self._device_fault(fault)
        try:
            if decision.safe_mode:
                if status is None or status.state not in (InverterState.SAFE_MODE, InverterState.FAULT):
                    await inv.set_safe_mode(True)
                    self._last_written_w = None
                if decision.contactor is ContactorCommand.OPEN and not welded:
                    self._record(await inv.open_contactors())  # the logic saw zero current
                return opened
            if status is not None and status.state is InverterState.SAFE_MODE:
                await inv.set_safe_mode(False)
                self._last_written_w = None
            if status is not None and status.state is InverterState.FAULT:
                return opened  # it refuses setpoints until its own faults are cleared
            w = decision.setpoint_w
            if w != 0 and status is not None and status.contactors_held_open:
                # the logic lets power through only when the contactor guard allows a closing
                self._record(await inv.close_contactors())
                self._last_written_w = None
            if (self._last_written_w is None or abs(w - self._last_written_w) >= 0.1
                    or now - self._last_write_s >= SETPOINT_REFRESH_S):
                await inv.set_power(w)
                self._last_written_w, self._last_write_s = w, now
                self._writes += 1
        except DeviceFault as fault:
            self._device_fault(fault)
            self._last_written_w = None
        return opened

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

    def _record(self, result: ContactorResult) -> ContactorResult:
        self.last_contactor_result = result
        if result.changed:
            self._contactor_commands += 1
        if result.under_load:
            self._emergency_openings += 1
        return result

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

    def _poll_clear_request(self) -> None:
        if self.state_dir is None:
            return
        request = journal.take_clear_request(self.state_dir)
        if request is not None:
            self._clear_requested = True
            rid = request.get("id")
            self._clear_request_id = rid if isinstance(rid, str) else ""

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
