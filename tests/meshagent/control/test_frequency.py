"""IEEE 1547-2018 droop, trip windows, return to service, and the predictive PID, from tables."""

from __future__ import annotations

import math
import random

import pytest

from meshagent.control.frequency import (
    DroopResponse,
    FrequencyProfile,
    PredictivePid,
    ReturnToService,
    TripMonitor,
    droop_target_pu,
)
from meshagent.errors import ConfigError
from tests.meshagent.control.conftest import section

P60 = FrequencyProfile.defaults(60.0)
P50 = FrequencyProfile.defaults(50.0)


@pytest.mark.parametrize(
    ("profile", "f", "expected"),
    [
        (P60, 60.0, 0.0),
        (P60, 59.964, 0.0),  # at the deadband edge
        (P60, 60.036, 0.0),
        (P60, 59.664, 0.1),  # 0.3 Hz past the deadband / (60 Hz x 5 %) = 0.1 pu
        (P60, 58.464, 0.5),
        (P60, 56.0, 1.0),  # capped at rated
        (P60, 60.336, -0.1),
        (P60, 63.0, -0.988),
        (P50, 49.8, 0.0),  # EN 50549-1 LFSM-U threshold
        (P50, 49.7, 0.04),  # 0.1 Hz / (50 Hz x 5 %)
        (P50, 50.45, -0.1),
    ],
)
def test_droop_target_table(profile, f, expected):
    assert droop_target_pu(f, profile) == pytest.approx(expected, abs=1e-9)


def test_droop_reaches_90_percent_at_the_open_loop_response_time():
    droop = DroopResponse(P60)
    droop.step(60.0, 0.0)
    t, out = 0.0, 0.0
    while t < 10.0:
        t = round(t + 0.01, 2)
        out = droop.step(59.664, t)
        if t == 5.0:
            assert out == pytest.approx(0.09, rel=1e-3)
    assert out == pytest.approx(0.099, rel=1e-3)  # 99 % after twice the response time


@pytest.mark.parametrize(
    ("f", "hold_s", "stage"),
    [
        (58.4, 299.9, None),
        (58.4, 300.0, "UF1"),
        (58.5, 400.0, None),  # at the limit is inside
        (56.4, 0.15, None),
        (56.4, 0.16, "UF2"),
        (61.3, 299.9, None),
        (61.3, 300.0, "OF1"),
        (62.0, 1.0, None),  # 62.0 is not above 62.0; OF1 needs 300 s
        (62.1, 0.16, "OF2"),
        (60.0, 1000.0, None),
    ],
)
def test_trip_windows(f, hold_s, stage):
    trips = TripMonitor(P60)
    dt = 0.01
    assert trips.step(60.0, 0.0) is None
    t, got = dt, None
    steps = round(hold_s / dt)
    for i in range(steps + 1):
        t = dt + i * dt
        got = trips.step(f, t) or got
    assert (got.stage.name if got else None) == stage


def test_a_window_restarts_when_the_frequency_comes_back():
    trips = TripMonitor(P60)
    for i in range(15):  # 0.15 s below 56.5
        assert trips.step(56.4, i * 0.01) is None
    assert trips.step(57.0, 0.15) is None
    for i in range(15):
        assert trips.step(56.4, 0.16 + i * 0.01) is None


def test_return_to_service_needs_300_s_inside_the_band():
    rts = ReturnToService(P60)
    assert not rts.step(59.4, 0.0)
    assert not rts.step(59.5, 1.0)
    assert not rts.step(60.1, 300.0)
    assert rts.step(60.1, 301.0)
    assert not rts.step(60.11, 302.0)  # leaving the band restarts the timer
    assert not rts.step(60.0, 303.0)
    assert rts.step(60.0, 603.0)


def test_fifty_hertz_defaults_and_overrides():
    assert [(s.name, s.limit_hz, s.clearing_time_s) for s in P50.stages] == [
        ("UF2", 47.5, 0.1), ("UF1", 48.5, 1800.0), ("OF2", 51.5, 0.1), ("OF1", 51.0, 1800.0)]
    assert (P50.rts_low_hz, P50.rts_high_hz, P50.rts_delay_s) == (47.5, 50.1, 60.0)
    s = section(nominal_frequency="50Hz", uf2="47Hz", rts_delay="120s")
    p = s.frequency_profile()
    assert p.stages[0].limit_hz == 47.0 and p.rts_delay_s == 120.0 and p.deadband_hz == 0.2


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"uf1": "59.98Hz"}, "control.uf1: expected uf2 <= uf1 < nominal - deadband"),
        ({"uf2": "58.6Hz"}, "control.uf1: expected uf2 <= uf1"),
        ({"of2": "61Hz"}, "control.of1: expected nominal + deadband"),
        ({"fast_response": "58Hz"}, "control.fast_response: expected uf1 < fast_response"),
        ({"rts_high": "62.5Hz"}, "control.rts_low: expected uf2 <= rts_low < nominal < rts_high <= of2"),
        ({"nominal_frequency": "55Hz"}, "control.nominal_frequency: expected 50Hz or 60Hz"),
        ({"uf2_time": "0s"}, "control.uf2_time: must be positive"),
    ],
)
def test_profile_errors_name_the_key(keys, message):
    with pytest.raises(ConfigError) as info:
        section(**keys)
    assert message in str(info.value)


def _ramp(f0: float, rate: float, t: float) -> float:
    return f0 + rate * t


def _arm_time(pid: PredictivePid, trajectory, dt: float = 0.01, until_s: float = 10.0) -> float | None:
    for i in range(round(until_s / dt) + 1):
        t = i * dt
        if pid.step(trajectory(t), t).armed:
            return t
    return None


def test_prediction_arms_before_the_threshold_on_a_falling_ramp():
    # 60 Hz falling at 0.5 Hz/s crosses 59.5 Hz at t = 1.0 s.
    falling = lambda t: _ramp(60.0, -0.5, t)  # noqa: E731
    threshold = _arm_time(PredictivePid(P60, horizon_s=0.0), falling)
    predicted = _arm_time(PredictivePid(P60), falling)
    assert threshold == pytest.approx(1.01, abs=0.011)  # the first sample below 59.5
    assert predicted is not None and predicted < threshold - 0.4  # a 0.5 s horizon, less the estimator's start


def test_noise_and_slow_drift_do_not_arm_the_pid():
    rng = random.Random(5)
    pid = PredictivePid(P60)
    for i in range(3000):
        t = i * 0.01
        f = 59.8 + 0.01 * rng.gauss(0, 1) - 0.001 * t  # 20 mHz-ish noise, 1 mHz/s drift
        state = pid.step(f, t)
        assert not state.armed, t
    assert pid.output_pu == 0.0


def test_pid_output_rises_with_the_fall_and_ramps_down_on_release():
    pid = PredictivePid(P60)
    t, outs = 0.0, []
    for i in range(300):  # fall to 59.3 Hz, then hold there 1 s
        t = i * 0.01
        f = max(59.3, 60.0 - 0.5 * t)
        outs.append(pid.step(f, t).output_pu)
    assert outs[-1] > 0.9 and all(0.0 <= o <= 1.0 for o in outs)
    for i in range(1, 200):  # back to 60 Hz: released, ramps down at 0.2 pu/s
        state = pid.step(60.0, t + i * 0.01)
        assert not state.armed
    assert state.output_pu == pytest.approx(max(0.0, outs[-1] - 0.2 * 1.99), abs=0.01)
    assert not math.isnan(state.output_pu)
