"""Is the site meter answering? Freshness of each sample and the judgement of its silence.

Theory of operation
-------------------
The control loop promises that a meter gone silent or frozen is caught within
``sensor_timeout`` (100 ms) of its last sample, whatever the transport's jitter and however
late a cycle runs. ``MeterJudge`` holds the one piece of state that promise needs: when
(on the loop's clock) the newest valid sample was *taken* (``last_valid_s``), judged from
the device's own timestamps against the least clock offset seen (``fresh``), and raises
``ERR_SENSOR_LOST`` once that is ``sensor_raise_after_s`` old (``judge_silence``).

Who calls it: ``ControlLogic.step`` when driven from a table (``Inputs.meter_judged``
false); in the loop, the meter's own task (``meter.py``) through ``ControlLogic``'s
``observe_meter`` after each read and ``judge_silence`` at ``sensor_deadline_s``.

The seam: the judge owns the freshness state; the latches and the return-to-service timer
stay with ``ControlLogic``, which hands the judge one sink, ``on_sensor_lost(at_s, silent_s,
events)``, called when the silence reaches the raise point (it drops the return-to-service
timer and latches the code). The sink never calls back into the judge. ``step`` reads
``last_valid_s`` directly and calls ``fresh`` at most once a cycle: the judge adds one method
call to the 10 ms cycle, no allocation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from meshagent.control.codes import FaultEvent

CLOCK_DRIFT_ALLOWANCE = 1e-3  # s/s: the meter clock's offset reference relaxes this fast (1000 ppm)
CLOCK_RESET_S = 1.0  # a sample this much older than the newest one: the device's clock restarted

# at_s (when the event is dated), silent_s, the events list to append the raise to
SensorLostSink = Callable[[float, float, list[FaultEvent]], None]


@attrs.frozen
class MeterSample:
    load_w: float  # + import at the meter
    frequency_hz: float
    taken_at_s: float


@attrs.define
class MeterJudge:
    section: Any  # meshagent.control.config.ControlSection
    on_sensor_lost: SensorLostSink
    last_valid_s: float | None = None  # loop time at which the newest meter sample was taken
    _newest_taken_s: float | None = None  # the newest sample's taken_at_s (device clock)
    _offset_ref_s: float | None = None  # least (loop time - taken_at_s) seen: the clock offset
    _offset_at_s: float = 0.0

    @property
    def sensor_raise_after_s(self) -> float:
        """Silence (since the newest valid sample was taken) at which ERR_SENSOR_LOST is raised.

        ``sensor_timeout`` is the promise from the freeze; two ``meter_period`` are kept back:
        one for how much later than the freeze a frozen sample can look (its reply's time in
        flight, which ``arrival - Age`` cannot see), one for the judge's own lateness (the
        wake-up of the task at the deadline, or the wait for the next read).
        """
        s = self.section
        return float(s.sensor_timeout_s - 2 * s.meter_period_s)

    def sensor_deadline_s(self) -> float:
        """Loop time at which the meter's silence reaches ``sensor_raise_after_s``
        (``inf``: no read was judged yet)."""
        if self.last_valid_s is None:
            return math.inf
        return self.last_valid_s + self.sensor_raise_after_s

    def observe_meter(self, meter: MeterSample | None, read_at_s: float,
                      sent_at_s: float | None = None) -> tuple[bool, list[FaultEvent]]:
        """The meter's own task, after each read (``None``: no answer or a fault): is the
        sample fresh, and has the silence reached the raise point on the clock at the read?

        ``sent_at_s``: when the request went out. A device's ``Age`` says how old the sample
        was when it answered, not when the answer reached us: the sample was taken between
        its reported time less the round trip (``read_at_s - sent_at_s``) and its reported
        time. It counts as new only if even the earlier end is newer than the newest sample,
        so a frozen sample's later reads, whose times move with their replies' flight (up
        to 10 ms on a loaded machine), never restart the timer.
        The sample then goes to ``step`` with ``Inputs.meter_judged`` (fresh) or not at all.
        """
        if self.last_valid_s is None:
            self.last_valid_s = read_at_s
        round_trip_s = max(0.0, read_at_s - sent_at_s) if sent_at_s is not None else 0.0
        ok = meter is not None and self.fresh(meter, read_at_s, round_trip_s)
        return ok, self.judge_silence(read_at_s)

    def judge_silence(self, now_s: float, event_at_s: float | None = None) -> list[FaultEvent]:
        """Raise ERR_SENSOR_LOST (through ``on_sensor_lost``) if the newest valid sample is
        ``sensor_raise_after_s`` old at ``now_s`` (the meter's task calls it at
        ``sensor_deadline_s`` even while no read has come back)."""
        events: list[FaultEvent] = []
        if self.last_valid_s is None:
            self.last_valid_s = now_s
        silent_s = now_s - self.last_valid_s
        if silent_s >= self.sensor_raise_after_s - 1e-9:
            self.on_sensor_lost(now_s if event_at_s is None else event_at_s, silent_s, events)
        return events

    def fresh(self, meter: MeterSample, now_s: float, round_trip_s: float = 0.0) -> bool:
        """Is this meter sample valid and newer than the last, and how old is the newest?

        ``taken_at_s`` is on the device's clock, and over Modbus it is the reply's arrival
        minus the device's ``Age`` register, so a frozen meter's sample moves back and forth
        by the transport's jitter and can look newer than the last one. So a sample's age
        is judged against the least offset ``now - taken_at`` seen (the clock offset plus the
        fastest transport), ``age = offset - least offset``, and the silence timer runs from
        when the newest sample was *taken* (``now - age``), never from when a reply happened
        to arrive. A frozen sample can then seem newer only by the jitter of its reply's
        time in flight (which the driver's ``arrival - Age`` cannot see: a few ms), and it
        never restarts the timer: a frozen meter is caught within ``sensor_timeout`` of its last
        sample, plus at most that jitter. With ``round_trip_s`` (the meter's task knows when
        it sent the request) a sample is new only if, moved back by its round trip (the
        earliest it can have been taken), it is still newer than the newest one: a frozen
        sample is then never new after its first read, and the timer runs from that read's
        time, late by one reply's flight at most (not the largest of all the reads that
        followed). The reference relaxes by 1000 ppm (clock drift) and resets when the
        device's clock restarts.
        """
        if not (math.isfinite(meter.load_w) and math.isfinite(meter.frequency_hz) and math.isfinite(meter.taken_at_s)):
            return False
        taken = meter.taken_at_s
        if self._newest_taken_s is not None and taken < self._newest_taken_s - CLOCK_RESET_S:
            self._newest_taken_s = self._offset_ref_s = None  # the device restarted its clock
        offset = now_s - taken
        ref = self._offset_ref_s
        if ref is not None:
            ref += CLOCK_DRIFT_ALLOWANCE * max(0.0, now_s - self._offset_at_s)
        if ref is None or offset < ref:
            ref = offset
        self._offset_ref_s, self._offset_at_s = ref, now_s
        age = offset - ref
        # new only if it was taken after the newest one even at the earliest it can have
        # been (its round trip earlier): a frozen sample's reply jitter never makes it new
        advanced = self._newest_taken_s is None or taken - round_trip_s > self._newest_taken_s
        if not advanced:
            return False
        self._newest_taken_s = taken
        taken_loop_s = now_s - age
        if self.last_valid_s is None or taken_loop_s > self.last_valid_s:
            self.last_valid_s = taken_loop_s
        return bool(age < self.section.sensor_timeout_s - 1e-9)
