"""The packet level's time series for the plots: decimated, in the fleet level's ``Trace``."""

from __future__ import annotations

import numpy as np
import pytest

from sims.report import SERIES_POINTS, SeriesRecorder


@pytest.mark.parametrize(("steps", "every", "points"), [
    (200, 1, 200),  # a short run keeps every step
    (1000, 1, 1000),
    (1001, 2, 500),  # never more than SERIES_POINTS
    (360_000, 360, 1000),  # an hour at 10 ms
])
def test_a_recorder_keeps_at_most_its_points(steps: int, every: int, points: int) -> None:
    rec = SeriesRecorder(steps, nodes=3)
    assert rec.every == every
    for k in range(1, steps + 1):
        if k % rec.every == 0:
            rec.add(k * 0.01, 50.0, 60.0, 0.5, 80.0, np.array([-2000.0, 500.0, -11000.0]))
    assert len(rec) == points <= SERIES_POINTS


def test_the_series_become_the_fleet_levels_trace() -> None:
    """(``write_series_plots`` drawing it is tested on a real run: ``test_virtual``'s CLI test.)"""
    rec = SeriesRecorder(5, nodes=60)  # more chargers than the plot shows
    powers = np.linspace(-11000.0, 7000.0, 60)
    for k in range(1, 6):
        rec.add(k * 0.01, 40.0 + k, 60.0 - 0.01 * k, 0.9, 70.0 + k, powers)
    trace = rec.trace("mesh", 60.0, {"limits_violated": 0})
    assert trace.t_s.shape == trace.site_kw.shape == trace.frequency_hz.shape == (5,)
    assert trace.node_discharge_kw.shape == (5, 48)  # TRACE_NODES columns
    # discharge is the magnitude of a negative power, in kW; a charging node shows 0
    assert trace.node_discharge_kw[0, 0] == pytest.approx(11.0) and trace.node_discharge_kw[0, -1] == 0.0
