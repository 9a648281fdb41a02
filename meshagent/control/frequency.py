"""Frequency response: IEEE 1547-2018 droop, a predictive PID, trip windows, return to service.

Theory of operation
-------------------
Everything here is synchronous and clock-free: each object takes ``(frequency_hz, now_s)``
and answers in per-unit of the inverter's rating (positive = discharge), so the same code
runs every 10 ms on the trio clock and in virtual time in the tests.

* **Droop** (IEEE 1547-2018 clause 6.5.2.7, "frequency droop"). Outside the deadband the
  target changes by ``((f_nom - db) - f) / (f_nom * k)`` per unit of rated power (5 % droop:
  a 3 Hz fall at 60 Hz asks for full power), reached through a first-order lag whose
  open-loop response time (90 % of a step) is configurable, 5 s by default. Over-frequency
  gives a negative delta (less discharge, or charging).
* **Predictive PID** (fast frequency response). It runs below ``fast_response_hz`` (59.5 Hz
  at 60 Hz), and *also* as soon as the trajectory says the frequency will cross it: a
  least-squares rate of change over ``rocof_window`` extrapolated ``predict_horizon`` ahead.
  Its output is ``kp*e + ki*integral(e) + kd*max(0, -rocof)`` with ``e = (f_nom - db) - f``:
  the derivative acts on the measured rate of fall, not on the error, so a step in the
  reference never kicks it. The integral stops while the output is saturated (anti-windup).
  Released, the output ramps down rather than dropping, so the release is not a second
  disturbance. With ``predict_horizon = 0`` it is "the threshold alone", which is how the
  lead time in docs/control.md is measured.
* **Trip windows** (IEEE 1547-2018 clause 6.5.1, default must-trip settings at 60 Hz): a stage trips when its
  condition holds continuously for its clearing time; the loop then logs
  ``ERR_GRID_SYNC_LOST`` and enters safe mode.
* **Return to service** (IEEE 1547-2018 clause 4.10, default enter-service criteria):
  frequency continuously within 59.5-60.1 Hz for 300 s.

Defaults per nominal frequency (``FrequencyProfile.defaults``):

* **60 Hz: IEEE 1547-2018.** Deadband 0.036 Hz, droop 5 %, response time 5 s;
  UF1 58.5 Hz/300 s, UF2 56.5 Hz/0.16 s, OF1 61.2 Hz/300 s, OF2 62.0 Hz/0.16 s;
  return to service 59.5-60.1 Hz for 300 s.
* **50 Hz: EN 50549-1:2019 with Regulation (EU) 2016/631 (RfG).** IEEE 1547 is written for
  60 Hz only. Deadband 0.2 Hz (the LFSM-U/LFSM-O thresholds 49.8/50.2 Hz), droop 5 %;
  interface-protection trips 47.5 Hz/0.1 s and 51.5 Hz/0.1 s; the slow stages at the edges of
  RfG's 30-minute ride-through bands for Continental Europe (48.5 Hz and 51.0 Hz, 1800 s);
  reconnection 47.5-50.1 Hz for 60 s. The fast-response threshold 49.5 Hz is ours (the same
  0.5 Hz below nominal as 59.5 Hz at 60 Hz). National settings vary: set the keys.
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any

import attrs

from meshagent.errors import ConfigError


@attrs.frozen
class TripStage:
    name: str  # "UF1", "UF2", "OF1", "OF2"
    limit_hz: float
    clearing_time_s: float
    under: bool  # True: trips below limit_hz; False: above

    def outside(self, frequency_hz: float) -> bool:
        return frequency_hz < self.limit_hz if self.under else frequency_hz > self.limit_hz


_DEFAULTS: dict[float, dict[str, float]] = {
    60.0: {
        "droop_deadband_hz": 0.036,
        "fast_response_hz": 59.5,
        "uf1_hz": 58.5, "uf1_time_s": 300.0,
        "uf2_hz": 56.5, "uf2_time_s": 0.16,
        "of1_hz": 61.2, "of1_time_s": 300.0,
        "of2_hz": 62.0, "of2_time_s": 0.16,
        "rts_low_hz": 59.5, "rts_high_hz": 60.1, "rts_delay_s": 300.0,
    },
    50.0: {
        "droop_deadband_hz": 0.2,
        "fast_response_hz": 49.5,
        "uf1_hz": 48.5, "uf1_time_s": 1800.0,
        "uf2_hz": 47.5, "uf2_time_s": 0.1,
        "of1_hz": 51.0, "of1_time_s": 1800.0,
        "of2_hz": 51.5, "of2_time_s": 0.1,
        "rts_low_hz": 47.5, "rts_high_hz": 50.1, "rts_delay_s": 60.0,
    },
}

_KEY = {  # attribute -> config key, for error messages
    "droop_deadband_hz": "droop_deadband", "fast_response_hz": "fast_response",
    "uf1_hz": "uf1", "uf1_time_s": "uf1_time", "uf2_hz": "uf2", "uf2_time_s": "uf2_time",
    "of1_hz": "of1", "of1_time_s": "of1_time", "of2_hz": "of2", "of2_time_s": "of2_time",
    "rts_low_hz": "rts_low", "rts_high_hz": "rts_high", "rts_delay_s": "rts_delay",
}


@attrs.frozen
class FrequencyProfile:
    nominal_hz: float
    deadband_hz: float
    droop: float
    response_time_s: float
    fast_response_hz: float
    predict_horizon_s: float
    rocof_window_s: float
    min_rocof_hz_per_s: float
    kp: float
    ki: float
    kd: float
    stages: tuple[TripStage, ...]
    rts_low_hz: float
    rts_high_hz: float
    rts_delay_s: float

    @classmethod
    def defaults(cls, nominal_hz: float = 60.0, **overrides: Any) -> FrequencyProfile:
        """The published defaults for ``nominal_hz``; keyword overrides use the section's names."""
        values: dict[str, Any] = {
            "droop": 0.05, "response_time_s": 5.0, "predict_horizon_s": 0.5, "rocof_window_s": 0.2,
            "min_rocof_hz_per_s": 0.05, "pid_kp": 2.0, "pid_ki": 1.0, "pid_kd": 1.0,
            **_DEFAULTS[nominal_hz],
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._build(nominal_hz, values)

    @classmethod
    def from_section(cls, section: Any) -> FrequencyProfile:
        names = [*_KEY, "droop", "response_time_s", "predict_horizon_s", "rocof_window_s",
                 "min_rocof_hz_per_s", "pid_kp", "pid_ki", "pid_kd"]
        return cls.defaults(section.nominal_frequency_hz, **{n: getattr(section, n) for n in names})

    @classmethod
    def _build(cls, nominal_hz: float, v: dict[str, Any]) -> FrequencyProfile:
        def bad(attr: str, why: str) -> ConfigError:
            return ConfigError(f"control.{_KEY.get(attr, attr)}: {why}")

        for attr in _KEY:
            if not (math.isfinite(v[attr]) and v[attr] >= 0):
                raise bad(attr, f"expected a finite non-negative value, got {v[attr]!r}")
        lo_band, hi_band = nominal_hz - v["droop_deadband_hz"], nominal_hz + v["droop_deadband_hz"]
        if not v["droop_deadband_hz"] < 1.0:
            raise bad("droop_deadband_hz", "must be below 1 Hz")
        if not v["uf2_hz"] <= v["uf1_hz"] < lo_band:
            raise bad("uf1_hz", f"expected uf2 <= uf1 < nominal - deadband ({lo_band:g} Hz)")
        if not hi_band < v["of1_hz"] <= v["of2_hz"]:
            raise bad("of1_hz", f"expected nominal + deadband ({hi_band:g} Hz) < of1 <= of2")
        if not v["uf1_hz"] < v["fast_response_hz"] < lo_band:
            raise bad("fast_response_hz", f"expected uf1 < fast_response < {lo_band:g} Hz")
        if not v["uf2_hz"] <= v["rts_low_hz"] < nominal_hz < v["rts_high_hz"] <= v["of2_hz"]:
            raise bad("rts_low_hz", "expected uf2 <= rts_low < nominal < rts_high <= of2")
        for attr in ("uf1_time_s", "uf2_time_s", "of1_time_s", "of2_time_s"):
            if v[attr] <= 0:
                raise bad(attr, "must be positive")
        stages = (
            TripStage("UF2", v["uf2_hz"], v["uf2_time_s"], True),
            TripStage("UF1", v["uf1_hz"], v["uf1_time_s"], True),
            TripStage("OF2", v["of2_hz"], v["of2_time_s"], False),
            TripStage("OF1", v["of1_hz"], v["of1_time_s"], False),
        )
        return cls(
            nominal_hz=nominal_hz, deadband_hz=v["droop_deadband_hz"], droop=v["droop"],
            response_time_s=v["response_time_s"], fast_response_hz=v["fast_response_hz"],
            predict_horizon_s=v["predict_horizon_s"], rocof_window_s=v["rocof_window_s"],
            min_rocof_hz_per_s=v["min_rocof_hz_per_s"], kp=v["pid_kp"], ki=v["pid_ki"], kd=v["pid_kd"],
            stages=stages, rts_low_hz=v["rts_low_hz"], rts_high_hz=v["rts_high_hz"],
            rts_delay_s=v["rts_delay_s"],
        )


def droop_target_pu(frequency_hz: float, p: FrequencyProfile) -> float:
    """IEEE 1547-2018 frequency-droop: change of active power, per unit of rated, in [-1, 1]."""
    under = (p.nominal_hz - p.deadband_hz) - frequency_hz
    if under > 0:
        return min(1.0, under / (p.nominal_hz * p.droop))
    over = frequency_hz - (p.nominal_hz + p.deadband_hz)
    if over > 0:
        return max(-1.0, -over / (p.nominal_hz * p.droop))
    return 0.0


def _ramped(output: float, target: float, ramp_pu_per_s: float, dt: float) -> float:
    """``output`` moved toward ``target`` by at most ``ramp_pu_per_s`` x ``dt``."""
    max_step = ramp_pu_per_s * dt if dt > 0 else 0.0
    return output + max(-max_step, min(max_step, target - output))


@attrs.define
class DroopResponse:
    """The droop target through a first-order lag: 90 % of a step after ``response_time_s``.

    ``lead``: the predictor says the frequency will cross the fast-response threshold, or
    is below it. The target is then taken at ``lead_hz`` (the lower of the frequency and
    its prediction) and reached without the lag: the same droop curve, earlier. Either way
    the output moves by at most ``ramp_pu_per_s`` x dt per step (``math.inf``: no limit).
    """

    profile: FrequencyProfile
    ramp_pu_per_s: float = math.inf
    output_pu: float = 0.0
    _last_s: float | None = None

    def step(self, frequency_hz: float, now_s: float, *, lead_hz: float | None = None) -> float:
        if self._last_s is None:
            self.output_pu = 0.0
        dt = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        if lead_hz is not None:
            target = droop_target_pu(min(frequency_hz, lead_hz), self.profile)
            # never less than the lag would give: a lead only brings the response forward
            tau = self.profile.response_time_s / math.log(10.0)
            lagged = self.output_pu + (target - self.output_pu) * (1.0 - math.exp(-dt / tau))
            target = max(target, lagged) if target >= 0 else target
        else:
            target = droop_target_pu(frequency_hz, self.profile)
            tau = self.profile.response_time_s / math.log(10.0)
            target = self.output_pu + (target - self.output_pu) * (1.0 - math.exp(-dt / tau))
        self.output_pu = _ramped(self.output_pu, target, self.ramp_pu_per_s, dt)
        return self.output_pu


def parse_curve(value: object) -> tuple[tuple[float, float], ...]:
    """A fast-frequency-response curve: ``[[Hz, pu], ...]`` with the frequency falling and
    the response (per unit of nameplate, 0..1) rising; piecewise linear between the points,
    0 above the first, the last point's response below the last. ``[]``: no such service."""
    from meshagent.config.units import parse_frequency_hz

    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of [frequency, per-unit] points, got {value!r}")
    points: list[tuple[float, float]] = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise ValueError(f"expected a [frequency, per-unit] point, got {item!r}")
        hz = parse_frequency_hz(item[0]) if isinstance(item[0], str) else float(item[0])
        pu = float(item[1])
        if not (math.isfinite(hz) and math.isfinite(pu) and 0.0 <= pu <= 1.0):
            raise ValueError(f"point {item!r}: per-unit response must be within 0..1")
        if points and not (hz < points[-1][0] and pu >= points[-1][1]):
            raise ValueError(f"point {item!r}: frequencies must fall and responses must not fall, point by point")
        points.append((hz, pu))
    return tuple(points)


def curve_pu(frequency_hz: float, points: tuple[tuple[float, float], ...]) -> float:
    if not points or frequency_hz >= points[0][0]:
        return 0.0
    for (f1, p1), (f2, p2) in itertools.pairwise(points):
        if frequency_hz >= f2:
            return p1 + (p2 - p1) * (f1 - frequency_hz) / (f1 - f2)
    return points[-1][1]


@attrs.define
class FastFrequencyResponse:
    """A configured fast-frequency-response service beyond droop: its own curve (at the
    lead frequency, so the prediction starts it early too) and its own ramp limit."""

    points: tuple[tuple[float, float], ...]
    ramp_pu_per_s: float
    output_pu: float = 0.0
    _last_s: float | None = None

    def step(self, frequency_hz: float, now_s: float, *, lead_hz: float | None = None) -> float:
        dt = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        f = frequency_hz if lead_hz is None else min(frequency_hz, lead_hz)
        self.output_pu = _ramped(self.output_pu, curve_pu(f, self.points), self.ramp_pu_per_s, dt)
        return self.output_pu


@attrs.define
class RocofEstimator:
    """Rate of change of frequency: least-squares slope over the last ``window_s``."""

    window_s: float
    _samples: collections.deque[tuple[float, float]] = attrs.field(factory=collections.deque)

    def step(self, frequency_hz: float, now_s: float) -> float:
        q = self._samples
        q.append((now_s, frequency_hz))
        while q and now_s - q[0][0] > self.window_s + 1e-9:
            q.popleft()
        n = len(q)
        if n < 3:
            return 0.0
        t0 = q[0][0]
        mt = sum(t - t0 for t, _ in q) / n
        mf = sum(f for _, f in q) / n
        stt = sum((t - t0 - mt) ** 2 for t, _ in q)
        if stt <= 0:
            return 0.0
        return sum((t - t0 - mt) * (f - mf) for t, f in q) / stt

    def reset(self) -> None:
        self._samples.clear()


RELEASE_RAMP_PU_PER_S = 0.2  # how fast the fast response hands back to the droop when released
RELEASE_HOLD_S = 1.0  # the arming condition must be gone this long before release


@attrs.frozen
class PidState:
    output_pu: float
    armed: bool
    predicted: bool  # armed (or kept armed) by the trajectory, not by the level
    rocof_hz_per_s: float
    predicted_hz: float


@attrs.define
class PredictivePid:
    """Fast under-frequency response; see the module docstring."""

    profile: FrequencyProfile
    horizon_s: float | None = None  # None: the profile's; 0: the threshold alone
    armed: bool = False
    armed_at_s: float | None = None  # when it last armed (the lead-time figure reads this)
    output_pu: float = 0.0
    _integral: float = 0.0
    _last_s: float | None = None
    _clear_since_s: float | None = None
    _rocof: RocofEstimator = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rocof = RocofEstimator(self.profile.rocof_window_s)

    def step(self, frequency_hz: float, now_s: float) -> PidState:
        p = self.profile
        horizon = p.predict_horizon_s if self.horizon_s is None else self.horizon_s
        dt = 0.0 if self._last_s is None else max(0.0, now_s - self._last_s)
        self._last_s = now_s
        rocof = self._rocof.step(frequency_hz, now_s)
        predicted_hz = frequency_hz + min(0.0, rocof) * horizon
        below = frequency_hz < p.fast_response_hz
        heading = horizon > 0 and rocof < -p.min_rocof_hz_per_s and predicted_hz < p.fast_response_hz
        want = below or heading
        reference = p.nominal_hz - p.deadband_hz
        if want:
            self._clear_since_s = None
            if not self.armed:
                self.armed, self.armed_at_s = True, now_s
        elif self.armed:
            if self._clear_since_s is None:
                self._clear_since_s = now_s
            recovered = frequency_hz >= reference
            if recovered or (now_s - self._clear_since_s >= RELEASE_HOLD_S and rocof >= 0):
                self.armed = False
                self._integral = 0.0
        if self.armed:
            error = max(0.0, reference - frequency_hz)
            raw = p.kp * error + p.ki * (self._integral + error * dt) + p.kd * max(0.0, -rocof)
            if raw < 1.0:  # anti-windup: integrate only while not saturated
                self._integral += error * dt
            self.output_pu = min(1.0, max(0.0, raw))
        else:
            self.output_pu = max(0.0, self.output_pu - RELEASE_RAMP_PU_PER_S * dt)
        return PidState(self.output_pu, self.armed, self.armed and heading and not below, rocof, predicted_hz)


@attrs.frozen
class Trip:
    stage: TripStage
    frequency_hz: float
    outside_for_s: float


@attrs.define
class TripMonitor:
    """Must-trip windows: a stage trips once its condition has held for its clearing time."""

    profile: FrequencyProfile
    _since: dict[str, float] = attrs.field(factory=dict)

    def step(self, frequency_hz: float, now_s: float) -> Trip | None:
        tripped: Trip | None = None
        for stage in self.profile.stages:
            if stage.outside(frequency_hz):
                start = self._since.setdefault(stage.name, now_s)
                # 1 us of slack: clearing times are decimal (0.16 s), samples are binary floats
                if tripped is None and now_s - start >= stage.clearing_time_s - 1e-6:
                    tripped = Trip(stage, frequency_hz, now_s - start)
            else:
                self._since.pop(stage.name, None)
        return tripped

    def reset(self) -> None:
        self._since.clear()


@attrs.define
class ReturnToService:
    """True once the frequency has stayed inside the enter-service band for the delay."""

    profile: FrequencyProfile
    inside_since_s: float | None = None

    def step(self, frequency_hz: float, now_s: float) -> bool:
        p = self.profile
        if p.rts_low_hz <= frequency_hz <= p.rts_high_hz:
            if self.inside_since_s is None:
                self.inside_since_s = now_s
            return now_s - self.inside_since_s >= p.rts_delay_s - 1e-6
        self.inside_since_s = None
        return False

    def reset(self) -> None:
        self.inside_since_s = None
