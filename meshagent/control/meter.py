"""The site meter on a task of its own: read every period, judged at once, caught on time.

Theory of operation
-------------------
A frozen or silent meter must be caught within ``sensor_timeout`` (100 ms) of the freeze.
When the cycle read the meter and then the charger's devices one after the other, the
judgement waited for the cycle: over Modbus TCP a cycle's reads took p50 3.3 / p99 14.8 ms
and 64 of 1,000 periods were missed, so the cycle that should have raised at 80 ms of
silence sometimes ran 20-50 ms late (p99 134 ms from the freeze). Here the meter has its
own task, its own grid (``start + k x meter_period``, missed deadlines skipped) and, over
Modbus, its own connection (``hardware.connect.open_site_meter``), so no device read
queues ahead of it, and:

* each reply is judged as it arrives (``ControlLogic.observe_meter``: fresh or not, on the
  clock at the reply) and published as a ``MeterRead`` for the cycle of that period, which
  waits for it at most ``CYCLE_WAIT_PERIODS`` of a period and then goes on without;
* between reads the task sleeps until the earlier of its next deadline and the sensor
  deadline (``ControlLogic.sensor_deadline_s``: the newest valid sample's time plus the
  raise point); a read still in flight at the sensor deadline is cancelled (the link drops
  the connection, as on a timeout). At the sensor deadline, ``judge_silence`` raises
  ``ERR_SENSOR_LOST`` and ``on_events`` tells the loop, which writes 0 W at once, without
  waiting for its cycle.

A process that stalls is not a meter that stopped: when the task wakes more than one period
after the sensor deadline (the whole process was not scheduled), it reads the meter once
(for at most one period) before judging, so a stall alone never latches ERR_SENSOR_LOST.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from hardware.interfaces import DeviceFault, SiteMeter
from meshagent.control.codes import FaultEvent
from meshagent.control.logic import ControlLogic, MeterSample

CYCLE_WAIT_PERIODS = 0.5  # the cycle waits this much of a period for its period's meter read


def next_on_grid(deadline: float, period: float, now: float) -> tuple[float, int]:
    """The next deadline on a task's grid after ``deadline``, and how many periods were
    skipped because ``now`` is already past it (a late task keeps its grid, counts the miss)."""
    deadline += period
    late = now - deadline
    if late <= 0:
        return deadline, 0
    skipped = math.ceil(late / period)
    return deadline + skipped * period, skipped


@attrs.frozen
class MeterRead:
    """One read of the meter, judged."""

    deadline_s: float  # the grid time it belongs to
    sample: MeterSample | None  # fresh and valid; None: a fault, no answer in time, frozen or garbage
    read_at_s: float  # trio clock when the reply came (or the read was given up)
    read_perf_s: float  # perf clock at the same moment (detection timing)
    start_perf_s: float  # perf clock when the read was sent (the period's work starts there)


@attrs.frozen
class MeterStatistics:
    reads: int
    faults: int  # DeviceFault from the meter
    cut_off: int  # reads cancelled at the sensor deadline
    missed_periods: int
    deadline_raises: int  # ERR_SENSOR_LOST raised at the deadline with no reply back


class MeterTask:
    """Reads ``meter`` every ``period_s`` and judges each sample with ``logic``.

    One direction: the task feeds the logic's freshness judgement and hands fault events to
    ``on_events``; the cycle takes the newest read with ``take`` (after ``wait_for``).
    """

    def __init__(self, meter: SiteMeter, logic: ControlLogic, period_s: float, *,
                 on_events: Callable[[list[FaultEvent]], None],
                 on_fault: Callable[[DeviceFault], None] = lambda fault: None,
                 perf_clock: Callable[[], float]) -> None:
        self.meter = meter
        self.logic = logic
        self.period_s = period_s
        self._on_events = on_events
        self._on_fault = on_fault
        self._perf = perf_clock
        self.last_reading: MeterSample | None = None  # the newest answer, fresh or not
        self._newest: MeterRead | None = None  # published, not yet taken by the cycle
        self._published = trio.Event()
        self._latest_deadline_s = -math.inf
        self._reads = self._faults = self._cut = self._missed = self._deadline_raises = 0

    def statistics(self) -> MeterStatistics:
        return MeterStatistics(self._reads, self._faults, self._cut, self._missed, self._deadline_raises)

    # --- the cycle's side ------------------------------------------------------------------

    async def wait_for(self, deadline_s: float) -> None:
        """Until the read of the period at ``deadline_s`` (or a later one) is published.

        Wrap in a cancel scope: a meter that does not answer never publishes.
        """
        while self._latest_deadline_s < deadline_s - 1e-9:
            await self._published.wait()

    def has_read_for(self, deadline_s: float) -> bool:
        """Whether the read of the period at ``deadline_s`` (or a later one) is published."""
        return self._latest_deadline_s >= deadline_s - 1e-9

    def take(self) -> MeterRead | None:
        """The newest read published since the last ``take`` (None: none)."""
        read, self._newest = self._newest, None
        return read

    # --- the task --------------------------------------------------------------------------

    async def run(self, start_s: float, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        period = self.period_s
        deadline = start_s
        task_status.started()
        while True:
            due = self.logic.sensor_deadline_s()
            if due < deadline:
                await trio.sleep_until(due)
                now = trio.current_time()
                if now - due <= period:  # on time, and no reply came: silent
                    events = self.logic.judge_silence(now)
                    if events:
                        self._deadline_raises += 1
                        self._on_events(events)
                        continue
                # woke a period late or more: the process stalled; read before judging
            else:
                await trio.sleep_until(deadline)
            now = trio.current_time()
            cutoff = due if now < due else now + period
            sample: MeterSample | None = None
            start_perf, sent_at = self._perf(), trio.current_time()
            with trio.move_on_at(cutoff) as scope:
                try:
                    r = await self.meter.read()
                    sample = MeterSample(r.active_power_w, r.frequency_hz, r.taken_at_s)
                    self.last_reading = sample
                except DeviceFault as fault:
                    self._faults += 1
                    self._on_fault(fault)
            read_at, perf = trio.current_time(), self._perf()
            self._reads += 1
            if scope.cancelled_caught:
                self._cut += 1
            fresh, events = self.logic.observe_meter(sample, read_at, sent_at)
            self._publish(MeterRead(deadline, sample if fresh else None, read_at, perf, start_perf))
            if events:
                self._on_events(events)
            deadline, skipped = next_on_grid(deadline, period, trio.current_time())
            self._missed += skipped

    def _publish(self, read: MeterRead) -> None:
        # an unfresh read does not replace a fresh one the cycle has not taken yet
        if read.sample is not None or self._newest is None or self._newest.sample is None:
            self._newest = read
        self._latest_deadline_s = read.deadline_s
        done, self._published = self._published, trio.Event()
        done.set()
