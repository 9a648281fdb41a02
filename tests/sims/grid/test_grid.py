"""The grid models against their closed forms and the standard's reference points."""

from __future__ import annotations

import numpy as np
import pytest

from sims.grid.arrivals import WORKPLACE_WEEKDAY, Surge, arrivals_in_step, draw_vehicles
from sims.grid.frequency import Area, AreaParams, nadir_closed_form, step_response
from sims.grid.transformer import HOT_SPOT_LIMIT_C, Transformers


@pytest.mark.parametrize("dt_s", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("params", [AreaParams(), AreaParams(inertia_h_s=2.0, governor_tg_s=0.3, damping_d_pu=0.0)])
def test_stepped_area_matches_closed_form(params: AreaParams, dt_s: float) -> None:
    area = Area(params, dt_s)
    steps = int(20 / dt_s)
    stepped = np.array([area.step(5.0) for _ in range(steps)])
    exact = step_response(params, 5.0, np.arange(1, steps + 1) * dt_s)
    assert np.max(np.abs(stepped - exact)) < 1e-9


def test_closed_form_reference_points() -> None:
    p = AreaParams()
    t = np.array([0.0, 1e-4, 600.0])
    f = step_response(p, 10.0, t)
    assert f[0] == pytest.approx(60.0)
    rocof = (f[1] - f[0]) / 1e-4
    assert rocof == pytest.approx(-60.0 * 10.0 / 50.0 / (2 * 4.0), rel=1e-3)  # -dP/2H
    settled = 60.0 * (1 - (10.0 / 50.0) / (1.0 + 1 / 0.05))
    assert f[2] == pytest.approx(settled)
    t_nadir, f_nadir = nadir_closed_form(p, 10.0)
    assert 0 < t_nadir < 5 and f_nadir < settled < 60.0


def test_v2g_injection_raises_the_nadir() -> None:
    plain, helped = Area(AreaParams(), 0.01), Area(AreaParams(), 0.01)
    low_plain = min(plain.step(10.0) for _ in range(1000))
    low_helped = min(helped.step(10.0 - (3.0 if helped.frequency_hz < 59.9 else 0.0)) for _ in range(1000))
    assert low_helped > low_plain + 0.1


def test_rated_load_holds_the_reference_hot_spot() -> None:
    tx = Transformers(np.array([500.0]))
    tx.settle(np.array([500.0]))
    assert tx.hot_spot_c[0] == pytest.approx(HOT_SPOT_LIMIT_C)
    assert tx.top_oil_c[0] == pytest.approx(85.0)


def test_overload_heats_with_the_winding_then_the_oil_time_constant() -> None:
    tx = Transformers(np.array([500.0, 500.0]))
    tx.settle(np.array([300.0, 300.0]))
    start = tx.hot_spot_c.copy()
    tx.step(np.array([750.0, 300.0]), 240.0)  # one winding time constant
    assert tx.hot_spot_c[1] == pytest.approx(start[1])
    rise = tx.hot_spot_c[0] - start[0]
    assert rise > 5.0
    for _ in range(24 * 60):
        tx.step(np.array([750.0, 300.0]), 60.0)
    top_u, hot_u = tx.ultimate(np.array([750.0]))
    assert tx.hot_spot_c[0] == pytest.approx(30.0 + top_u[0] + hot_u[0], rel=1e-3)
    assert tx.hot_spot_c[0] > HOT_SPOT_LIMIT_C
    # reverse flow (V2G export) heats like forward flow
    assert np.allclose(tx.ultimate(np.array([-400.0]))[1], tx.ultimate(np.array([400.0]))[1])


def test_arrivals_follow_the_profile_and_surges_land_in_their_window() -> None:
    assert sum(WORKPLACE_WEEKDAY) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    per_hour = np.zeros(24)
    days = 200
    for _ in range(days):
        for h in range(24):
            per_hour[h] += arrivals_in_step(rng, h * 3600.0, 3600.0, 100.0)
    assert per_hour.sum() / days == pytest.approx(100.0, rel=0.05)
    assert int(np.argmax(per_hour)) == 8
    surge = Surge(at_s=100.0, count=40, window_s=60.0)
    got = [surge.arrivals_in(t, t + 1.0) for t in range(0, 300)]
    assert sum(got) == 40
    assert sum(got[:100]) == 0 and sum(got[160:]) == 0


def test_vehicles_come_from_the_hardware_table() -> None:
    v = draw_vehicles(np.random.default_rng(1), 500, {"nissan-leaf-40": 1.0})
    assert set(v.battery_wh) == {39000.0} and set(v.discharge_w) == {7000.0}
