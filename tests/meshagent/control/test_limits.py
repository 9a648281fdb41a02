"""The one clamp: tables for each limit, and Hypothesis over random device states and requests."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshagent.control.limits import (
    ContactorGuard,
    DeviceState,
    Limits,
    clamp_setpoint,
    thermal_factor,
)
from meshagent.control.logic import ControlLogic, Inputs, MeterSample
from tests.meshagent.control.conftest import section

LIMITS = Limits()
OK = DeviceState(
    inverter_max_charge_w=11_000, inverter_max_discharge_w=11_000, ev_max_charge_w=7_000,
    ev_max_discharge_w=9_600, soc_pct=60, min_soc_pct=20, target_soc_pct=80,
)


@pytest.mark.parametrize(
    ("change", "request_w", "setpoint_w", "binding"),
    [
        ({}, -5_000, -5_000, "request"),
        ({}, -50_000, -9_600, "vehicle"),  # EVMaximumDischargePower
        ({}, 50_000, 7_000, "vehicle"),
        ({"ev_max_discharge_w": 20_000}, -50_000, -11_000, "inverter"),
        ({"temperature_max_c": 45.0}, -50_000, -5_500, "thermal"),  # half way from 40 to 50 C
        ({"temperature_max_c": 50.0}, -5_000, 0, "thermal"),
        ({"temperature_min_c": -25.0}, 5_000, 0, "thermal"),
        ({"soc_pct": 20.0}, -5_000, 0, "battery_lower_limit"),
        ({"bms_status": 3}, -5_000, 0, "battery_lower_limit"),
        ({"bms_status": 3}, 5_000, 5_000, "request"),  # charging is still allowed
        ({"soc_pct": 80.0}, 5_000, 0, "battery_upper_limit"),
        ({"bms_status": 4}, 5_000, 0, "bms"),
        ({"tamper": True}, -5_000, 0, "tamper"),
        ({"vehicle_connected": False}, -5_000, 0, "no_vehicle"),
        ({"contactor_closed": False}, -5_000, 0, "contactor"),
        ({"contactor_welded": True}, -5_000, 0, "contactor"),
        ({"inverter_fault": True}, -5_000, 0, "inverter_fault"),
        ({"ev_max_discharge_w": math.nan}, -5_000, 0, "vehicle"),  # a NaN limit counts as 0
        ({"soc_pct": math.nan}, -5_000, 0, "battery_lower_limit"),
        ({}, math.nan, 0, "request_not_finite"),
        ({}, -math.inf, 0, "request_not_finite"),
    ],
)
def test_clamp_table(change, request_w, setpoint_w, binding):
    got = clamp_setpoint(request_w, attrs.evolve(OK, **change), LIMITS)
    assert (got.setpoint_w, got.binding) == (setpoint_w, binding)


def test_blocked_means_zero_both_ways():
    assert clamp_setpoint(-5_000, OK, LIMITS, blocked=True).setpoint_w == 0
    assert clamp_setpoint(5_000, OK, LIMITS, blocked=True).setpoint_w == 0


@pytest.mark.parametrize(("hi", "lo", "factor"), [(25, 25, 1), (40, 25, 1), (42.5, 25, 0.75), (49.9, 0, 0.01),
                                                  (50, 0, 0), (30, -24.9, 1), (30, -25, 0), (math.nan, 0, 0)])
def test_thermal_factor(hi, lo, factor):
    assert thermal_factor(hi, lo, LIMITS) == pytest.approx(factor)


def test_contactor_guard_dwell_and_hourly_cap():
    g = ContactorGuard(min_dwell_s=5.0, max_cycles_per_hour=3)
    assert g.may_close(0.0)
    g.closed(0.0)
    assert not g.may_open(4.9) and g.may_open(5.0) and g.may_open(1.0, emergency=True)
    for t in (10.0, 20.0):
        g.opened(t - 5)
        assert g.may_close(t)
        g.closed(t)
    g.opened(25.0)
    assert not g.may_close(31.0)  # three closings in the last hour
    assert g.closings_last_hour(3599.0) == 3
    assert g.may_close(3600.0)  # the first has aged out


# --- the property: whatever is asked, no command exceeds a limit ------------------------------

finite_w = st.floats(-1e6, 1e6, allow_nan=False)
any_w = st.one_of(finite_w, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]))
temps = st.one_of(st.floats(-60, 130, allow_nan=False), st.just(math.nan))
states = st.builds(
    DeviceState,
    inverter_max_charge_w=any_w, inverter_max_discharge_w=any_w, ev_max_charge_w=any_w,
    ev_max_discharge_w=any_w, soc_pct=st.one_of(st.floats(-5, 105), st.just(math.nan)),
    min_soc_pct=st.floats(0, 100), target_soc_pct=st.floats(0, 100), bms_status=st.integers(0, 4),
    temperature_max_c=temps, temperature_min_c=temps, contactor_closed=st.booleans(),
    contactor_welded=st.booleans(), inverter_fault=st.booleans(), actual_power_w=finite_w,
    vehicle_connected=st.booleans(), tamper=st.booleans(),
)


def _cap(x: float) -> float:
    return x if math.isfinite(x) and x > 0 else 0.0


def assert_within_limits(setpoint_w: float, request_w: float, s: DeviceState, blocked: bool) -> None:
    assert math.isfinite(setpoint_w)
    factor = thermal_factor(s.temperature_max_c, s.temperature_min_c, LIMITS)
    discharge_w, charge_w = max(0.0, -setpoint_w), max(0.0, setpoint_w)
    assert discharge_w <= _cap(s.inverter_max_discharge_w)
    assert discharge_w <= _cap(s.ev_max_discharge_w)
    assert discharge_w <= factor * _cap(s.inverter_max_discharge_w) + 1e-6
    assert charge_w <= _cap(s.inverter_max_charge_w)
    assert charge_w <= _cap(s.ev_max_charge_w)
    assert charge_w <= factor * _cap(s.inverter_max_charge_w) + 1e-6
    if blocked or s.tamper or not s.vehicle_connected or not s.contactor_closed or s.contactor_welded \
            or s.inverter_fault:
        assert setpoint_w == 0
    if s.bms_status in (2, 3, 4) or not s.soc_pct > s.min_soc_pct:
        assert discharge_w == 0
    if s.bms_status in (1, 2, 4) or not s.soc_pct < s.target_soc_pct:
        assert charge_w == 0
    # never the other direction than asked, never more than asked
    if math.isfinite(request_w):
        assert setpoint_w * request_w >= 0
        assert abs(setpoint_w) <= abs(request_w)


@given(request_w=any_w, state=states, blocked=st.booleans())
@settings(max_examples=600, deadline=None)
def test_clamp_never_exceeds_a_limit(request_w, state, blocked):
    got = clamp_setpoint(request_w, state, LIMITS, blocked=blocked)
    assert_within_limits(got.setpoint_w, request_w, state, blocked)


steps = st.lists(
    st.tuples(states, st.floats(0, 1e6), st.floats(56.0, 63.0), st.floats(0, 1e6), st.booleans()),
    min_size=1, max_size=40,
)


@given(sequence=steps)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_logic_never_commands_past_a_limit(sequence):
    """Through the whole core (frequency response, faults, contactor guard), cycle after cycle."""
    logic = ControlLogic(section(), node_id="n1")
    for i, (state, share_w, frequency_hz, load_w, meter_ok) in enumerate(sequence):
        now = i * 0.01
        meter = MeterSample(load_w, frequency_hz, now) if meter_ok else None
        d = logic.step(Inputs(meter, state, share_w=share_w), now)
        # the logic may only ever pretend the contactor is closed (to let the inverter close it)
        assert_within_limits(d.setpoint_w, d.request_w, attrs.evolve(state, contactor_closed=True),
                             bool(logic.latched))
        if not state.contactor_closed and not logic.guard.may_close(now):
            assert d.setpoint_w == 0


def test_a_repeating_overrun_is_logged_once_then_counted_each_minute():
    from meshagent.control.logic import ControlLogic

    logic = ControlLogic(section())
    first = logic.report_latency("plan", 0.02, 0.01, 0.0)
    assert first is not None and first.figures["elapsed_ms"] == 20.0
    for i in range(1, 100):
        assert logic.report_latency("plan", 0.03, 0.01, i * 0.5) is None
    assert logic.latency_summaries(59.0) == []
    (summary,) = logic.latency_summaries(60.0)
    assert summary.figures["repeated"] == 99 and summary.figures["max_elapsed_ms"] == 30.0
    assert logic.latency_summaries(120.0) == []  # quiet for a minute: the window closes
    assert logic.report_latency("plan", 0.02, 0.01, 130.0) is not None  # a new first occurrence
