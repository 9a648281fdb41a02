"""Spike detection on the meter's load: two criteria, hysteresis and a minimum duration.

Theory of operation
-------------------
``SpikeDetector.step(load_w, now_s, covered_w=0)`` is called once per meter sample and
returns the spike events of that sample (usually none). It never reads a clock.

The meter sees the *net* load: what the mesh already discharges in this scope
(``covered_w``) has been taken off. The detector works on the gross load
``load_w + covered_w``, so that covering a spike does not make it look over (which would
withdraw the cover and bring it back: a needless battery cycle each time).

* **Limit**: the gross load is above ``PEAK_LOAD_LIMIT``. Deficit = gross - limit.
* **Rise**: the smoothed gross load is more than ``SPIKE_SENSITIVITY x PEAK_LOAD_LIMIT``
  above the lowest smoothed load of the last ``spike_window``. Smoothing is a running
  *median* over ``smoothing`` (40 ms: 5 samples), not a mean: a mean spreads a one-sample
  glitch over its whole window, a median ignores up to two bad samples. Deficit = smoothed
  gross - that baseline, frozen when the spike starts; the mesh covers the step while
  slower controls catch up, for ``rise_hold`` at most, after which the baseline moves up
  to the new level.

A criterion must hold from the first sample that shows it for ``spike_min_duration``
(a one-sample glitch never triggers). Once active, it ends only when the load is below its
trigger level minus ``spike_hysteresis x PEAK_LOAD_LIMIT`` continuously for
``spike_clear_duration``. One spike covers both criteria: it starts when the first one
triggers and ends when neither is active. While it lasts, an update is emitted each time
the deficit moves by more than ``update_step_w`` (1 % of the limit by default), so the
mesh re-plans on real changes, not on every sample of noise.

The cover is counted when the mesh applies it (its ACKs), but the meter shows it only after
the members' control cycle, their inverters' ramp and a meter sample. Meanwhile the gross
load counts the cover twice (the meter still has the load, ``covered_w`` already has the
discharge), and the deficit would seem to grow by the cover just planned: an update, a plan,
more cover counted twice, plan after plan. So after ``covered_w`` moves by more than
``update_step_w``, no update is handed on for ``update_settle_s`` (200 ms); then the deficit
is compared with the last one handed on, as always. A spike's start and end are never held.

``rise_armed=False`` keeps the rise criterion from starting (the caller's control logic does
so while the site's chargers answer a frequency event and for ``spike_window`` after: the
load coming back as their droop lets go is not a spike). The limit criterion is always armed.
"""

from __future__ import annotations

import collections
import enum
from typing import Any

import attrs


class Phase(enum.StrEnum):
    START = "start"
    UPDATE = "update"
    END = "end"


@attrs.frozen
class Spike:
    """What the control loop hands to the allocation: the deficit to cover, where, which."""

    spike_id: str
    phase: Phase
    deficit_w: float  # gross load above what may be drawn; 0 at END
    scope: str  # "site" or "transformer"
    scope_id: str
    kind: str  # "limit", "rise" or "limit+rise": which criteria are active
    load_w: float  # net load at the meter, this sample
    at_s: float  # the sample that produced this event
    first_sample_s: float  # the first sample that showed the condition (detection latency)


@attrs.frozen
class DetectorSettings:
    limit_w: float = 500_000.0
    sensitivity: float = 0.05
    window_s: float = 1.0
    min_duration_s: float = 0.020
    hysteresis: float = 0.02
    clear_duration_s: float = 0.5
    rise_hold_s: float = 30.0
    smoothing_s: float = 0.040
    update_step_w: float | None = None  # None: 1 % of the limit
    update_settle_s: float = 0.2  # after the cover moves, before an update is handed on

    @classmethod
    def from_section(cls, s: Any) -> DetectorSettings:
        return cls(
            limit_w=s.peak_load_limit_w, sensitivity=s.spike_sensitivity, window_s=s.spike_window_s,
            min_duration_s=s.spike_min_duration_s, hysteresis=s.spike_hysteresis,
            clear_duration_s=s.spike_clear_duration_s, rise_hold_s=s.rise_hold_s, smoothing_s=s.smoothing_s,
            update_settle_s=s.spike_update_settle_s,
        )


@attrs.define
class _Criterion:
    """Hysteresis with a minimum duration on both edges."""

    active: bool = False
    on_since_s: float | None = None
    off_since_s: float | None = None

    def step(self, trigger: bool, release: bool, now_s: float, min_on_s: float, min_off_s: float) -> bool:
        if not self.active:
            if trigger:
                if self.on_since_s is None:
                    self.on_since_s = now_s
                if now_s - self.on_since_s >= min_on_s - 1e-9:
                    self.active, self.off_since_s = True, None
            else:
                self.on_since_s = None
        else:
            if release:
                if self.off_since_s is None:
                    self.off_since_s = now_s
                if now_s - self.off_since_s >= min_off_s - 1e-9:
                    self.active, self.on_since_s, self.off_since_s = False, None, None
            else:
                self.off_since_s = None
        return self.active


@attrs.define
class SpikeDetector:
    settings: DetectorSettings
    scope: str = "site"
    scope_id: str = "site"
    node_id: str = "node"
    spikes_started: int = 0
    _limit: _Criterion = attrs.field(factory=_Criterion)
    _rise: _Criterion = attrs.field(factory=_Criterion)
    _raw: collections.deque[tuple[float, float]] = attrs.field(factory=collections.deque)
    # the smoothed samples of the window that can still be its minimum, values increasing
    # (a monotonic queue: the minimum is the first, O(1) amortised per sample)
    _smooth: collections.deque[tuple[float, float]] = attrs.field(factory=collections.deque)
    _baseline_w: float | None = None  # frozen while a rise is active
    _rise_started_s: float | None = None
    _current: Spike | None = None
    _reported_deficit_w: float = 0.0
    _cover_w: float = 0.0  # the cover when it last moved by more than the update step
    _cover_moved_s: float = float("-inf")

    @property
    def active(self) -> Spike | None:
        return self._current

    def _smoothed(self, gross_w: float, now_s: float) -> float:
        raw = self._raw
        raw.append((now_s, gross_w))
        while now_s - raw[0][0] > self.settings.smoothing_s + 1e-9:
            raw.popleft()
        values = sorted([w for _, w in raw])
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def _window_min(self, now_s: float) -> float | None:
        q = self._smooth
        while q and now_s - q[0][0] > self.settings.window_s + 1e-9:
            q.popleft()
        return q[0][1] if q else None

    def _add_smoothed(self, now_s: float, smooth_w: float) -> None:
        # a sample no lower than this newer one can never again be the window's minimum
        q = self._smooth
        while q and q[-1][1] >= smooth_w:
            q.pop()
        q.append((now_s, smooth_w))

    def step(self, load_w: float, now_s: float, covered_w: float = 0.0, *, rise_armed: bool = True) -> list[Spike]:
        s = self.settings
        covered_w = max(0.0, covered_w)
        gross = load_w + covered_w
        step_w = s.update_step_w if s.update_step_w is not None else 0.01 * s.limit_w
        if abs(covered_w - self._cover_w) > step_w:
            self._cover_w, self._cover_moved_s = covered_w, now_s
        smooth = self._smoothed(gross, now_s)
        floor = self._window_min(now_s)
        rise_w = s.sensitivity * s.limit_w
        band_w = s.hysteresis * s.limit_w

        limit_on = self._limit.step(gross > s.limit_w, gross < s.limit_w - band_w, now_s,
                                    s.min_duration_s, s.clear_duration_s)
        if self._rise.active:
            assert self._baseline_w is not None and self._rise_started_s is not None
            if now_s - self._rise_started_s >= s.rise_hold_s:
                # Held long enough: the new level is the baseline now, so forget the window.
                self._rise = _Criterion()
                self._smooth.clear()
                self._baseline_w = self._rise_started_s = None
            else:
                release = smooth < self._baseline_w + rise_w - band_w
                self._rise.step(False, release, now_s, s.min_duration_s, s.clear_duration_s)
        else:
            rising = rise_armed and floor is not None and smooth > floor + rise_w
            if self._rise.step(rising, False, now_s, s.min_duration_s, s.clear_duration_s):
                self._baseline_w, self._rise_started_s = floor, now_s
        rise_on = self._rise.active
        self._add_smoothed(now_s, smooth)

        if not (limit_on or rise_on):
            if self._current is None:
                return []
            ended = attrs.evolve(self._current, phase=Phase.END, deficit_w=0.0, kind="", load_w=load_w, at_s=now_s)
            self._current = None
            return [ended]

        deficit = max(gross - s.limit_w if limit_on else 0.0,
                      smooth - self._baseline_w if rise_on and self._baseline_w is not None else 0.0)
        deficit = max(0.0, deficit)
        kind = "+".join(k for k, on in (("limit", limit_on), ("rise", rise_on)) if on)
        if self._current is None:
            self.spikes_started += 1
            starts = [c.on_since_s for c in (self._limit, self._rise) if c.active and c.on_since_s is not None]
            first = min(starts) if starts else now_s
            self._current = Spike(
                spike_id=f"{self.node_id}:{self.spikes_started}", phase=Phase.START, deficit_w=deficit,
                scope=self.scope, scope_id=self.scope_id, kind=kind, load_w=load_w, at_s=now_s,
                first_sample_s=first,
            )
            self._reported_deficit_w = deficit
            return [self._current]
        self._current = attrs.evolve(self._current, kind=kind, load_w=load_w, at_s=now_s, deficit_w=deficit)
        if now_s - self._cover_moved_s < s.update_settle_s - 1e-9:
            return []  # the meter does not show the new cover yet (module docstring)
        if abs(deficit - self._reported_deficit_w) > step_w:
            self._reported_deficit_w = deficit
            return [attrs.evolve(self._current, phase=Phase.UPDATE)]
        return []
